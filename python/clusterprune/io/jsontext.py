"""JSON as every file and report of the package is written: strict JSON, NaN and infinities
refused (Python's json module would write them as ``NaN`` / ``Infinity``, which JSON readers
reject), with one line naming the value."""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import ClusterpruneError


def dumps(data: Any, what: str, **kwargs: Any) -> str:
    """``json.dumps(data, **kwargs)`` with NaN / Infinity refused; ``what`` names the file or
    output in the error."""
    try:
        return json.dumps(data, allow_nan=False, **kwargs)
    except ValueError:
        where = non_finite_path(data)
        raise ClusterpruneError(
            f"{what}: {where or 'a value'} is NaN or infinite: not written (JSON has no such numbers)"
        ) from None


def non_finite_path(data: Any, path: str = "") -> str | None:
    """The key path of the first NaN or infinite float in ``data`` (None when there is none)."""
    if isinstance(data, float):
        return path or "the value" if not math.isfinite(data) else None
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, (list, tuple)):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = non_finite_path(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None
