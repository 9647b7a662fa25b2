"""What a score knows of a module beyond its unit parts, read from the checkpoint (and, for the
activation model of method obs, from a statistics file or the Gaussian model)."""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np

from ..errors import InvalidArgumentError
from ..io.checkpoint import Checkpoint
from ..io.stats import ActivationStats
from ..models.registry import family_of
from ..models.units import ModuleSpec, UnitParts, to_units
from .gaussian import ModuleContext
from .refit import activation_covariance


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


def module_parts(ckpt: Checkpoint, spec: ModuleSpec) -> UnitParts:
    """The module's parts as float64 unit matrices (one row per unit)."""
    return [(p, to_units(ckpt.f32(p.tensor), spec, p).astype(np.float64)) for p in spec.parts]


def module_seed(seed: int, name: str) -> int:
    """A stable per-module seed (the synthetic inputs of a refit differ between modules)."""
    return (seed << 32) ^ zlib.crc32(name.encode())


def with_moments(
    ctx: ModuleContext, spec: ModuleSpec, parts: UnitParts, stats: ActivationStats | None, seed: int
) -> ModuleContext:
    """``ctx`` with the FFN activations' (mean, covariance): measured (``stats``) or, without
    statistics, under the Gaussian LayerNorm model (seeded synthetic inputs, :mod:`.refit`)."""
    if stats is None:
        return replace(ctx, moments=activation_covariance(parts, ctx, module_seed(seed, spec.name)))
    found = stats.modules.get(spec.name)
    if found is None:
        raise InvalidArgumentError(f"{stats.file}: no statistics for module {spec.name}")
    if found.mean.shape[0] != spec.n_units:
        raise InvalidArgumentError(
            f"statistics for {spec.name} have {found.mean.shape[0]} neurons, the checkpoint {spec.n_units}"
        )
    return replace(ctx, moments=(found.mean, found.cov), stream_variance=found.stream_variance)
