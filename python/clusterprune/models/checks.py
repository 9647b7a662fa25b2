"""The one check of a checkpoint's tensors against its architecture, run before anything is
written (compress, export-ct2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ..errors import CorruptCheckpointError, ShapeMismatchError, UnsupportedModelError
from ..io.checkpoint import Checkpoint
from ..io.safetensors import FLOAT_DTYPES
from .registry import family_of
from .units import UnitMap

COMPUTE_DTYPES = ("F32", "F16", "BF16")


def validate_checkpoint(ckpt: Checkpoint, umap: UnitMap, kept: Mapping[str, int] | None = None) -> None:
    """Every tensor the architecture needs exists with the shape config.json implies (for a
    folded checkpoint, ``kept`` = {module: K} gives the units its modules kept) and a floating
    dtype (unit tensors: one the engine computes with), and no floating tensor holds NaN or Inf."""
    kept = kept or {}
    for spec in umap.modules:
        shaped = replace(spec, n_units=kept.get(spec.name, spec.n_units))
        implied = "config.json and the folded plan imply" if spec.name in kept else "config.json implies"
        for part in spec.parts:
            if part.tensor not in ckpt.where:
                raise CorruptCheckpointError(f"{ckpt.path}: tensor {part.tensor} not found (needed by {spec.name})")
            info = ckpt.info(part.tensor)
            expected = shaped.expected_shape(part)
            if info.shape != expected:
                raise ShapeMismatchError(
                    f"{ckpt.file_of(part.tensor)}: tensor {part.tensor} has shape {list(info.shape)}, "
                    f"{implied} {list(expected)}"
                )
            if info.dtype not in COMPUTE_DTYPES:
                raise UnsupportedModelError(
                    f"{ckpt.file_of(part.tensor)}: tensor {part.tensor} has unsupported dtype {info.dtype} "
                    f"(supported: {', '.join(COMPUTE_DTYPES)})"
                )
    parts = {part.tensor for spec in umap.modules for part in spec.parts}  # checked above, with their K
    required = family_of(ckpt.config).required_tensors(ckpt.config, set(ckpt.where))
    for name, expected in required.items():
        if name not in ckpt.where:
            raise CorruptCheckpointError(f"{ckpt.path}: tensor {name} not found (the {umap.family} model needs it)")
        info = ckpt.info(name)
        if name not in parts and info.shape != expected:
            raise ShapeMismatchError(
                f"{ckpt.file_of(name)}: tensor {name} has shape {list(info.shape)}, config.json implies {list(expected)}"
            )
        if info.dtype not in FLOAT_DTYPES:
            raise UnsupportedModelError(f"{ckpt.file_of(name)}: tensor {name} has non-float dtype {info.dtype}")
    ckpt.check_finite()
