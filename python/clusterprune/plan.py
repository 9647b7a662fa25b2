"""The compression plan: which modules are compressed and how many units (K) each keeps.

A plan is computed from the weights alone (shapes, variances), validated against config.json,
and can be inspected before anything is written.
"""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import Recipe
from .engine.rust import check_k, check_seed, float64_sums, half_sums, uniform_plan, variance_plan
from .errors import (
    InvalidArgumentError,
)
from .io.checkpoint import Checkpoint
from .io.palette import refuse_palettized
from .io.resolve import resolve_model
from .io.safetensors import to_f32
from .io.stats import ActivationStats
from .memory import reused_heap
from .models.checks import validate_checkpoint
from .models.registry import unit_map
from .models.units import ModuleSpec, Part, to_units
from .recipes.registries import FEATURES, SELECTIONS


@dataclass(frozen=True)
class ModulePlan:
    name: str
    kind: str
    module_type: str
    layer: int
    n_units: int
    k: int
    variance: float
    params_per_unit: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.k / self.n_units

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "module_type": self.module_type,
            "layer": self.layer,
            "n_units": self.n_units,
            "k": self.k,
            "sparsity": self.sparsity,
            "variance": self.variance,
            "params_per_unit": self.params_per_unit,
        }


@dataclass
class Plan:
    source: str
    family: str
    recipe: Recipe
    sparsity: float
    seed: int
    modules: list[ModulePlan]
    excluded: list[str]
    total_params: int  # every parameter of the checkpoint
    compressible_params: int  # parameters of all units of all modules of the unit map
    specs: dict[str, ModuleSpec] = field(repr=False, default_factory=dict)
    stats: ActivationStats | None = field(repr=False, default=None)  # activations selfgen

    @property
    def params_removed(self) -> int:
        return sum((m.n_units - m.k) * m.params_per_unit for m in self.modules)

    @property
    def achieved_sparsity(self) -> float:
        """Fraction of compressible weights removed (in the folded model)."""
        return self.params_removed / self.compressible_params if self.compressible_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "family": self.family,
            "recipe": self.recipe.to_dict(),
            "sparsity": self.sparsity,
            "seed": self.seed,
            "achieved_sparsity": self.achieved_sparsity,
            "params_removed": self.params_removed,
            "total_params": self.total_params,
            "compressible_params": self.compressible_params,
            **({"activation_stats": self.stats.provenance()} if self.stats is not None else {}),
            "modules": [m.to_dict() for m in self.modules],
            "excluded": self.excluded,
        }


def check_sparsity(sparsity: object) -> float:
    """A sparsity in [0, 1) as a Python float (numpy scalars accepted)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise InvalidArgumentError(f"sparsity must be a number, got {sparsity!r} ({type(sparsity).__name__})")
    if not 0.0 <= float(sparsity) < 1.0:
        raise InvalidArgumentError(f"sparsity {sparsity} is outside [0, 1)")
    return float(sparsity)


def _compile(pattern: str | None, flag: str) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidArgumentError(f"{flag} {pattern!r} is not a valid regular expression: {exc}") from None


def module_variance(ckpt: Checkpoint, spec: ModuleSpec, recipe: Recipe) -> float:
    """Variance of the module's parameters (the parts the recipe's feature map uses): their
    sum and sum of squares added in float64 one unit matrix after the other, each in its
    memory order. A selected part whose unit matrix holds the tensor's own order is summed
    straight from its stored values."""
    total = total_sq = 0.0
    count = 0
    if recipe.feature in SELECTIONS:
        chosen = [p for p in spec.parts if p.role in SELECTIONS[recipe.feature]]
        sums = [stored_sums(ckpt, spec, p) for p in chosen]
    else:
        parts = [(p, to_units(ckpt.f32(p.tensor), spec, p)) for p in spec.parts]
        sums = [(*float64_sums(b), b.size) for b in FEATURES[recipe.feature](parts)]
    for p in spec.parts:
        ckpt.drop_pages(p.tensor)
    for block_sum, block_sq, size in sums:
        total += block_sum
        total_sq += block_sq
        count += size
    mean = total / count
    return max(total_sq / count - mean * mean, 0.0)


def stored_sums(ckpt: Checkpoint, spec: ModuleSpec, part: Part) -> tuple[float, float, int]:
    """(sum, sum of squares, count) of a part's unit matrix as :func:`float64_sums` adds it."""
    dtype = ckpt.info(part.tensor).dtype
    in_unit_order = part.role != "consumer" or spec.unit_rows == 1  # else to_units reorders a copy
    raw = ckpt.raw(part.tensor)
    if in_unit_order and dtype in ("F16", "BF16"):
        return (*half_sums(raw.reshape(-1).view(np.uint16), dtype == "BF16"), raw.size)
    units = to_units(raw if dtype == "F32" else to_f32(raw, dtype), spec, part)
    return (*float64_sums(units), units.size)


def check_stats(recipe: Recipe, stats: ActivationStats | None, ckpt: Checkpoint) -> ActivationStats | None:
    """The statistics a recipe needs, made from this checkpoint's weights (refused otherwise)."""
    if recipe.activations != "selfgen":
        if stats is not None:
            raise InvalidArgumentError(
                "--stats is read by recipes with activations selfgen only (e.g. datafree-selfgen)"
            )
        return None
    if stats is None:
        raise InvalidArgumentError(
            "activations selfgen needs --stats FILE (make it with `clusterprune selfgen MODEL FILE`)"
        )
    stats.check_source(ckpt.path)
    return stats


def make_plan(
    source: str | os.PathLike[str] | Checkpoint,
    sparsity: float,
    recipe: Recipe,
    *,
    include: str | None = None,
    exclude: str | None = None,
    k_overrides: dict[str, int] | None = None,
    seed: int = 0,
    stats: ActivationStats | None = None,
) -> Plan:
    """Validates the checkpoint and computes K for every selected module (``stats``: the
    measured activation statistics that recipes with ``activations="selfgen"`` need)."""
    sparsity = check_sparsity(sparsity)
    seed = check_seed(seed)
    recipe = recipe.validate()
    inc, exc = _compile(include, "--include"), _compile(exclude, "--exclude")
    own = not isinstance(source, Checkpoint)
    ckpt = Checkpoint(resolve_model(source)) if own else source
    try:
        refuse_palettized(ckpt.config, ckpt.path, "compressed (its weights are shared table entries)")
        stats = check_stats(recipe, stats, ckpt)
        umap = unit_map(ckpt.config, set(ckpt.where))
        validate_checkpoint(ckpt, umap)
        matched = [
            s for s in umap.modules if (inc is None or inc.search(s.name)) and (exc is None or not exc.search(s.name))
        ]
        # heads removed at a fixed count per encoder self-attention module, outside the budget
        fixed = [s for s in matched if recipe.remove_heads and s.module_type == "encoder.self_attn"]
        pool = [s for s in matched if recipe.kinds in ("all", s.kind) and s not in fixed]
        selected = [s for s in matched if s in fixed or s in pool]
        if not selected:
            raise InvalidArgumentError(
                f"no module matches --include {include!r} / --exclude {exclude!r} (e.g. {umap.modules[0].name})"
            )
        for s in fixed:
            if recipe.remove_heads >= s.n_units:
                raise InvalidArgumentError(f"remove_heads {recipe.remove_heads} leaves no head in {s.name}")
        compressible = sum(s.n_units * s.params_per_unit for s in umap.modules)
        pool_sparsity = float(sparsity)
        if recipe.budget == "params" and pool:
            fixed_removed = sum(recipe.remove_heads * s.params_per_unit for s in fixed)
            pool_params = sum(s.n_units * s.params_per_unit for s in pool)
            pool_sparsity = max(0.0, (float(sparsity) * compressible - fixed_removed) / pool_params)
            if pool_sparsity >= 1.0:
                raise InvalidArgumentError(
                    f"sparsity {sparsity} of all compressible parameters cannot be reached by removing units of "
                    f"the {len(pool)} selected modules ({pool_params} of {compressible} parameters)"
                )
        with reused_heap():  # each module's float64 copies reuse the pages the one before freed
            variances = {s.name: module_variance(ckpt, s, recipe) for s in selected}
        pool_units = [s.n_units for s in pool]
        if not pool:
            pool_ks: list[int] = []
        elif recipe.allocation == "uniform":
            pool_ks = uniform_plan(pool_units, pool_sparsity)
        else:
            key = (lambda s: s.kind) if recipe.variance_groups == "kind" else (lambda s: s.module_type)
            labels = sorted({key(s) for s in pool})
            groups = [labels.index(key(s)) for s in pool]
            pool_ks = variance_plan(
                pool_units, [variances[s.name] for s in pool], groups, pool_sparsity, recipe.high_factor
            )
        k_of = {s.name: k for s, k in zip(pool, pool_ks, strict=True)}
        k_of.update({s.name: s.n_units - recipe.remove_heads for s in fixed})
        units = [s.n_units for s in selected]
        ks = [k_of[s.name] for s in selected]
        by_name = {s.name: i for i, s in enumerate(selected)}
        for name, k in (k_overrides or {}).items():
            if name not in by_name:
                raise InvalidArgumentError(f"K override for unknown or unselected module {name!r}")
            n = units[by_name[name]]
            k = check_k(k)
            if not 1 <= k <= n:
                raise InvalidArgumentError(f"K = {k} for module {name} is outside [1, N = {n}]")
            ks[by_name[name]] = k
        modules = [
            ModulePlan(s.name, s.kind, s.module_type, s.layer, s.n_units, k, v, s.params_per_unit)
            for s, k, v in zip(selected, ks, [variances[s.name] for s in selected], strict=True)
        ]
        total = sum(ckpt.info(n).numel for n in ckpt.names())
        chosen = {s.name for s in selected}
        return Plan(
            source=str(ckpt.path),
            family=umap.family,
            recipe=recipe,
            sparsity=float(sparsity),
            seed=seed,
            modules=modules,
            excluded=[s.name for s in umap.modules if s.name not in chosen],
            total_params=total,
            compressible_params=compressible,
            specs={s.name: s for s in selected},
            stats=stats,
        )
    finally:
        if own:
            ckpt.close()
