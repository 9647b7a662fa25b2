"""The data-free joint allocator (``allocation="damage"``): every module's K chosen together so
that the budget is spent where the modelled damage is least.

Removing unit i of module m takes away the output variance the score models (``gauss_ln``: the
variance the neuron or head adds to the block's output under the Gaussian LayerNorm input model).
What that costs depends on what the module feeds: the residual stream at that point. Its modelled
variance V_m is the stream's input variance plus the modelled output variance (the sum of the
unit scores) of every earlier sublayer of the stack (pre-LN Whisper). The damage of unit i is
score_i / V_m, its share of the stream; removing it costs ``params_per_unit`` parameters (or one
unit with ``budget="units"``). Units are removed in increasing order of damage per cost until the
budget is met (every module keeps at least one unit); a module's modelled error is the summed
damage of its removed units.

The stream's input variance (data-free): Whisper's decoder starts from a token embedding plus a
position embedding (mean squared row norms); its encoder from the positions plus the two GELU
convolutions applied to a log-mel input of unit variance (the Gaussian model through conv1,
GELU, conv2, GELU). Post-LN models (HuBERT / wav2vec2 base) renormalise the stream after every
sublayer: there V_m is the squared norm of the affine LayerNorm that feeds the module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.checkpoint import Checkpoint
from ..models.units import ModuleSpec
from .context import module_context, module_parts
from .gaussian import activation_moments
from .registries import SCORES


@dataclass(frozen=True)
class Damage:
    ks: dict[str, int]
    errors: dict[str, float]  # modelled share of the residual stream removed, per module
    stream: dict[str, float]  # modelled residual variance V_m at each module


def unit_scores(ckpt: Checkpoint, spec: ModuleSpec, score: str) -> np.ndarray:
    return np.asarray(SCORES[score](module_parts(ckpt, spec), module_context(ckpt, spec)), dtype=np.float64)


def _mean_sq_rows(ckpt: Checkpoint, name: str) -> float:
    if name not in ckpt.where:
        return 0.0
    w = ckpt.f32(name).astype(np.float64)
    return float(np.mean(np.sum(w * w, axis=1)))


def _gelu_second_moments(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    mean, var = activation_moments(mu, sigma, "gelu")
    return var + mean * mean


def _conv_input_variance(ckpt: Checkpoint, prefix: str) -> float:
    """Total variance of GELU(conv2(GELU(conv1(x)))) for a log-mel x of unit variance."""
    w1, w2 = f"{prefix}encoder.conv1.weight", f"{prefix}encoder.conv2.weight"
    if w1 not in ckpt.where or w2 not in ckpt.where:
        return 0.0
    c1 = ckpt.f32(w1).astype(np.float64)
    b1 = (
        ckpt.f32(f"{prefix}encoder.conv1.bias").astype(np.float64)
        if f"{prefix}encoder.conv1.bias" in ckpt.where
        else 0.0
    )
    g1 = _gelu_second_moments(np.broadcast_to(b1, c1.shape[:1]), np.sqrt(np.sum(c1 * c1, axis=(1, 2))))
    c2 = ckpt.f32(w2).astype(np.float64)
    b2 = (
        ckpt.f32(f"{prefix}encoder.conv2.bias").astype(np.float64)
        if f"{prefix}encoder.conv2.bias" in ckpt.where
        else 0.0
    )
    sigma2 = np.sqrt(np.einsum("oik,i->o", c2 * c2, g1))
    return float(np.sum(_gelu_second_moments(np.broadcast_to(b2, c2.shape[:1]), sigma2)))


def stream_variances(ckpt: Checkpoint, modules: list[ModuleSpec], scores: dict[str, np.ndarray]) -> dict[str, float]:
    """V_m for every module of the unit map (``scores``: every module's unit scores)."""
    out: dict[str, float] = {}
    if ckpt.config.get("model_type") != "whisper":  # post-LN: the stream is renormalised per sublayer
        for spec in modules:
            ctx = module_context(ckpt, spec)
            if ctx.norm_weight is None or ctx.norm_bias is None:
                out[spec.name] = float(spec.hidden)
            else:
                out[spec.name] = float(np.sum(ctx.norm_weight**2 + ctx.norm_bias**2))
        return out
    prefix = "model." if any(n.startswith("model.") for n in ckpt.where) else ""
    base = {
        "decoder": _mean_sq_rows(ckpt, f"{prefix}decoder.embed_tokens.weight")
        + _mean_sq_rows(ckpt, f"{prefix}decoder.embed_positions.weight"),
        "encoder": _conv_input_variance(ckpt, prefix) + _mean_sq_rows(ckpt, f"{prefix}encoder.embed_positions.weight"),
    }
    running = dict(base)
    for spec in modules:  # unit-map order: the sublayers in the order they add to the stream
        stack = spec.module_type.split(".")[0]
        out[spec.name] = max(running.get(stack, 0.0), 1e-30)
        running[stack] = running.get(stack, 0.0) + float(np.sum(scores[spec.name]))
    return out


def _damage(pool: list[ModuleSpec], removed: list[int], errors: list[float], stream: dict[str, float]) -> Damage:
    return Damage(
        ks={s.name: s.n_units - r for s, r in zip(pool, removed, strict=True)},
        errors={s.name: e for s, e in zip(pool, errors, strict=True)},
        stream={s.name: stream[s.name] for s in pool},
    )


def _spend(
    rows: list[tuple[float, int, int, float, int]], modules: int, remove_units: int | None, remove_params: float | None
) -> tuple[list[int], list[float]]:
    """Units removed per module and their summed damage: ``rows`` (damage per cost, module,
    rank, damage, parameters per unit) taken in increasing order until the budget is met; within
    a module the ranks must come in order (a module's rows are nondecreasing in damage per cost)."""
    rows = sorted(rows)
    removed = [0] * modules
    errors = [0.0] * modules
    spent = 0.0
    goal = float(remove_units) if remove_units is not None else float(remove_params or 0.0)
    for _, mi, _, dmg, ppu in rows:
        if spent >= goal - 1e-9:
            break
        removed[mi] += 1
        errors[mi] += dmg
        spent += 1.0 if remove_units is not None else ppu
    return removed, errors


def error_plan(
    pool: list[ModuleSpec],
    curves: dict[str, np.ndarray],
    stream: dict[str, float],
    *,
    remove_params: float | None = None,
    remove_units: int | None = None,
) -> Damage:
    """K per pool module from the removal-error curves of method obs (``curves[name][r]``: the
    module's output error after removing r + 1 neurons): the damage of a module's next removal is
    its error increment over the variance of the residual stream it writes into, per unit or per
    parameter. Increments are made nondecreasing (running maximum) so every module's removals are
    taken in its own order; at most len(curve) neurons leave a module."""
    rows = []
    for mi, spec in enumerate(pool):
        inc = np.diff(np.concatenate([[0.0], curves[spec.name]])) / stream[spec.name]
        inc = np.maximum.accumulate(np.maximum(inc, 0.0))
        cost = 1.0 if remove_units is not None else float(spec.params_per_unit)
        rows += [(float(d) / cost, mi, r, float(d), spec.params_per_unit) for r, d in enumerate(inc)]
    removed, errors = _spend(rows, len(pool), remove_units, remove_params)
    return _damage(pool, removed, errors, stream)


def damage_plan(
    ckpt: Checkpoint,
    modules: list[ModuleSpec],
    pool: list[ModuleSpec],
    score: str,
    *,
    remove_params: float | None = None,
    remove_units: int | None = None,
) -> Damage:
    """K per pool module (see the module docstring): remove at least ``remove_params``
    parameters, or exactly ``remove_units`` units, in increasing order of damage per cost."""
    scores = {s.name: unit_scores(ckpt, s, score) for s in modules}
    stream = stream_variances(ckpt, modules, scores)
    rows = []
    for mi, spec in enumerate(pool):
        damage = scores[spec.name] / stream[spec.name]
        cost = 1.0 if remove_units is not None else float(spec.params_per_unit)
        order = np.argsort(damage, kind="stable")
        for rank, ui in enumerate(order[:-1]):  # the best unit of every module stays
            rows.append((float(damage[ui]) / cost, mi, rank, float(damage[ui]), spec.params_per_unit))
    removed, errors = _spend(rows, len(pool), remove_units, remove_params)
    return _damage(pool, removed, errors, stream)
