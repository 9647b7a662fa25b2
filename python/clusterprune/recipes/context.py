"""What a score knows of a module beyond its unit parts, read from the checkpoint."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..io.checkpoint import Checkpoint
from ..models.registry import family_of
from ..models.units import ModuleSpec
from .gaussian import ModuleContext


def module_context(ckpt: Checkpoint, spec: ModuleSpec) -> ModuleContext:
    """The LayerNorm feeding the module (when the checkpoint has it), its kind and activation."""
    norm = spec.input_norm
    base = ModuleContext(activation=spec.activation, kind=spec.kind, unit_rows=spec.unit_rows)
    if spec.kind == "attention":
        base = replace(base, tokens=family_of(ckpt.config).attended_tokens(ckpt.config, spec))
    if norm is None or f"{norm}.weight" not in ckpt.where or f"{norm}.bias" not in ckpt.where:
        return base
    weight = ckpt.f32(f"{norm}.weight").astype(np.float64)
    bias = ckpt.f32(f"{norm}.bias").astype(np.float64)
    return replace(base, norm_weight=weight, norm_bias=bias)
