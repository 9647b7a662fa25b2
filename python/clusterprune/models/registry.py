"""The model families clusterprune supports, looked up by config.json's ``model_type``."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from .ctc import CTC
from .family import Family
from .units import UnitMap
from .whisper import WHISPER

FAMILIES: dict[str, Family] = {t: f for f in (WHISPER, CTC) for t in f.model_types}


def family_of(config: dict[str, Any], where: str = "config.json") -> Family:
    """The family of a checkpoint's config.json (one-line error when unsupported)."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"{where}: unsupported model_type {model_type!r} (supported: {', '.join(sorted(FAMILIES))})"
        )
    return FAMILIES[model_type]


def unit_map(config: dict[str, Any], names: set[str]) -> UnitMap:
    """The unit map of a checkpoint, from its config.json and tensor names."""
    return family_of(config).unit_map(config, names)
