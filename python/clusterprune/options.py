"""Config dataclasses whose fields carry their help text and allowed values (the CLI flags are
built from them), and the one check that gives every field a value of its declared type."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import field, fields
from typing import Any

from .errors import InvalidArgumentError


def opt(
    default: Any, help: str, choices: Sequence[Any] | Mapping[str, Any] | None = None, *, experimental: bool = False
) -> Any:
    """A dataclass field with its help text (and allowed values) in its metadata. ``experimental``:
    measured and kept for comparison, not recommended; its flag is left out of ``--help`` (the
    documentation's experimental catalog lists it)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if experimental:
        meta["experimental"] = True
    return field(default=default, metadata=meta)


def typed_values(config: Any, what: str) -> dict[str, Any]:
    """Every field's value, checked and of its default's Python type (numpy scalars accepted, so
    the config stays JSON-serialisable); allowed values checked against the field's choices."""
    typed: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        kind = type(f.default)
        if kind is bool:
            if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
                raise InvalidArgumentError(f"{what} option {f.name} must be true or false, got {value!r}")
            value = bool(value)
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InvalidArgumentError(f"{what} option {f.name} must be an integer, got {value!r}")
            value = int(value)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InvalidArgumentError(f"{what} option {f.name} must be a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, str):
            raise InvalidArgumentError(f"{what} option {f.name} must be a string, got {value!r}")
        allowed = f.metadata.get("choices")
        if allowed is not None and value not in allowed:
            shown = ", ".join(str(a) for a in allowed)
            raise InvalidArgumentError(f"unknown {f.name} {value!r} (expected one of: {shown})")
        typed[f.name] = value
    return typed
