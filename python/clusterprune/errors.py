"""One exception hierarchy for every error clusterprune raises.

Every class derives from :class:`ClusterpruneError`; where a builtin fits, the class also derives
from it (``ValueError``, ``FileNotFoundError``, ``FileExistsError``), so callers can catch either.
Messages are one line and name the file, the tensor and the offending value.
"""

from __future__ import annotations


class ClusterpruneError(Exception):
    """Base class of all clusterprune errors."""


class InvalidArgumentError(ClusterpruneError, ValueError):
    """An option is outside its domain (sparsity, K, recipe name, ...)."""


class NonFiniteError(ClusterpruneError, ValueError):
    """A weight is NaN or infinite."""


class CheckpointNotFoundError(ClusterpruneError, FileNotFoundError):
    """A checkpoint directory or one of its files is missing."""


class CorruptCheckpointError(ClusterpruneError, ValueError):
    """A file exists but cannot be read: bad header, truncated data, bad JSON."""


class UnsupportedModelError(ClusterpruneError, ValueError):
    """The checkpoint's model family, layout or dtype is not supported."""


class ShapeMismatchError(ClusterpruneError, ValueError):
    """A tensor's shape disagrees with config.json."""


class OutputExistsError(ClusterpruneError, FileExistsError):
    """The destination exists (and overwriting was not asked for) or overlaps the source."""


class DeviceUnavailableError(ClusterpruneError, RuntimeError):
    """The requested compute device is not available."""


def path_argument(value: object, what: str) -> None:
    """Refuses an argument that should be a path and is not (a str or an os.PathLike)."""
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise InvalidArgumentError(f"{what} must be a path (str or os.PathLike), not {type(value).__name__}")
