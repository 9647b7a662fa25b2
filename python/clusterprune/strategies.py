"""Named strategies: each choice the paper leaves open is one small function in a registry.

Adding a strategy = adding one entry here (and a test). Every choice made by a run is recorded in
the output's metadata and in the report through :class:`Recipe`.

* FEATURES: which parts of a unit k-means sees.
* WEIGHTINGS: how the parts are scaled before clustering.
* FUSIONS: how a cluster becomes one unit (producer mean; consumer sum or mean).
* SCORES: the magnitude-pruning importance of a unit.
* Allocators live in :mod:`clusterprune.plan` (uniform, variance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .unitmap import Part

UnitParts = Sequence[tuple[Part, np.ndarray]]  # (part, (N, width) float64 matrix)


def _stack(parts: UnitParts, roles: tuple[str, ...]) -> list[np.ndarray]:
    return [m for p, m in parts if p.role in roles]


def _unit_normalised(blocks: list[np.ndarray]) -> list[np.ndarray]:
    """Rows scaled to unit L2 norm over all blocks (zero rows stay zero)."""
    norms = np.sqrt(sum(np.sum(b * b, axis=1) for b in blocks))
    scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)[:, None]
    return [b * scale for b in blocks]


FEATURES: dict[str, Callable[[UnitParts], list[np.ndarray]]] = {
    # paper: producer and consumer weights concatenated
    "weights": lambda parts: _stack(parts, ("producer", "consumer")),
    "weights+bias": lambda parts: _stack(parts, ("producer", "bias", "consumer")),
    "producer": lambda parts: _stack(parts, ("producer", "bias")),
    # the direction of the producer weights (cosine geometry), scale left to the fusion rule
    "direction": lambda parts: _unit_normalised(_stack(parts, ("producer",))),
}


def _no_weighting(blocks: list[np.ndarray]) -> list[np.ndarray]:
    return blocks


def _balanced(blocks: list[np.ndarray]) -> list[np.ndarray]:
    """Each block scaled to mean unit norm 1, so no tensor dominates the distance."""
    out = []
    for b in blocks:
        rms = float(np.sqrt(np.sum(b * b) / max(b.shape[0], 1)))
        out.append(b / rms if rms > 0 else b)
    return out


WEIGHTINGS: dict[str, Callable[[list[np.ndarray]], list[np.ndarray]]] = {
    "none": _no_weighting,
    "balanced": _balanced,
}


@dataclass(frozen=True)
class Fusion:
    """How a cluster becomes one folded unit."""

    consumer_sum: bool  # folded consumer = sum of the members' (True) or their mean (False)
    producer_direction: bool = False  # producer = mean direction x mean norm (else plain mean)


FUSIONS: dict[str, Fusion] = {
    "centroid": Fusion(True),  # paper: every member replaced by the centroid; folded consumer = sum
    "mean": Fusion(False),  # the cluster contributes like one average unit
    "cosine": Fusion(True, producer_direction=True),  # scale-aware merge of producer directions
}


@dataclass(frozen=True)
class ModuleContext:
    """What a score may know beyond the unit parts: the LayerNorm feeding the module (the values,
    for attention), the module kind, the FFN activation and the size of one unit's rows."""

    norm_weight: np.ndarray | None = None
    norm_bias: np.ndarray | None = None
    activation: str = "gelu"
    kind: str = "ffn"
    unit_rows: int = 1
    tokens: int | None = None  # typical number of attended tokens (attention modules)

    def require_norm(self, what: str) -> tuple[np.ndarray, np.ndarray]:
        if self.norm_weight is None or self.norm_bias is None:
            raise InvalidArgumentError(
                f"{what} needs the LayerNorm that feeds the module (not found in the checkpoint)"
            )
        return self.norm_weight, self.norm_bias


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)


def fast_erf(x: np.ndarray) -> np.ndarray:
    """Vectorised erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7) for large sample arrays."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": lambda a: 0.5 * a * (1.0 + (_erf if a.size < 65536 else fast_erf)(a / math.sqrt(2.0))),
    "gelu_new": lambda a: 0.5 * a * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3))),
    "gelu_pytorch_tanh": lambda a: 0.5 * a * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3))),
    "relu": lambda a: np.maximum(a, 0.0),
    "silu": lambda a: a / (1.0 + np.exp(-a)),
    "swish": lambda a: a / (1.0 + np.exp(-a)),
}


def activation_moments(
    mu: np.ndarray, sigma: np.ndarray, activation: str, nodes: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(E[f(a)], Var[f(a)]) for a ~ N(mu, sigma^2), by Gauss-Hermite quadrature."""
    if activation not in ACTIVATIONS:
        raise InvalidArgumentError(f"activation {activation!r} has no variance model (known: {', '.join(ACTIVATIONS)})")
    x, w = np.polynomial.hermite.hermgauss(nodes)
    a = mu[:, None] + math.sqrt(2.0) * sigma[:, None] * x[None, :]
    f = ACTIVATIONS[activation](a)
    mean = (f * w).sum(axis=1) / math.sqrt(math.pi)
    second = (f * f * w).sum(axis=1) / math.sqrt(math.pi)
    return mean, np.maximum(second - mean * mean, 0.0)


def activation_variance(mu: np.ndarray, sigma: np.ndarray, activation: str, nodes: int = 64) -> np.ndarray:
    """Var[f(a)] for a ~ N(mu, sigma^2), by Gauss-Hermite quadrature."""
    return activation_moments(mu, sigma, activation, nodes)[1]


def _l2(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    return np.sqrt(sum(np.sum(m * m, axis=1) for m in _stack(parts, ("producer", "consumer"))))


def _l1(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    return sum(np.sum(np.abs(m), axis=1) for m in _stack(parts, ("producer", "consumer")))


def _producer_l2(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    return np.sqrt(sum(np.sum(m * m, axis=1) for m in _stack(parts, ("producer",))))


def _ffn_preactivation(parts: UnitParts, ctx: ModuleContext) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every neuron's pre-activation a_i = w_i.x + b_i when the
    input is the feeding LayerNorm's affine map of a standard Gaussian, x = gamma * z + beta."""
    gamma, beta = ctx.require_norm("the Gaussian LayerNorm model")
    (w,) = _stack(parts, ("producer",))
    biases = _stack(parts, ("bias",))
    b = biases[0][:, 0] if biases else np.zeros(w.shape[0])
    return w @ beta + b, np.sqrt(((w * gamma[None, :]) ** 2).sum(axis=1))


def _value_path(parts: UnitParts, ctx: ModuleContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per head h: V_h (n, d, hidden) value rows, its value bias (n, d) and O_h (n, d, hidden)
    = the head's columns of the output projection, transposed."""
    n, d = parts[0][1].shape[0], ctx.unit_rows
    v = next((m for p, m in parts if p.role == "producer" and p.tensor.endswith("v_proj.weight")), None)
    o = next((m for p, m in parts if p.role == "consumer"), None)
    if v is None or o is None:
        raise InvalidArgumentError("the head model needs v_proj and out_proj weights")
    vb = next((m for p, m in parts if p.role == "bias" and p.tensor.endswith("v_proj.bias")), None)
    hidden = v.shape[1] // d
    bias = vb.reshape(n, d) if vb is not None else np.zeros((n, d))
    return v.reshape(n, d, hidden), bias, o.reshape(n, d, hidden)


def _gauss_ln(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """Data-free importance under the Gaussian LayerNorm input model x = gamma * z + beta.

    FFN neuron i: a_i = w_i.x + b_i is N(w_i.beta + b_i, |w_i * gamma|^2); the score is
    Var[act(a_i)] * |fc2 column i|^2, the variance the neuron adds to the block's output.
    Attention head h (one token attended; the softmax weights sum to 1, so the head's mean output
    is a constant that removal can fold into the output bias): the variance of the head's output,
    |O_h^T V_h diag(gamma)|_F^2 = sum((O_h O_h^T) * (V_h diag(gamma^2) V_h^T))."""
    gamma, _ = ctx.require_norm("score gauss_ln")
    if ctx.kind == "attention":
        v, _, o = _value_path(parts, ctx)
        vg = v * gamma[None, None, :]
        return np.einsum("hij,hij->h", o @ o.transpose(0, 2, 1), vg @ vg.transpose(0, 2, 1))
    mu, sigma = _ffn_preactivation(parts, ctx)
    (consumer,) = _stack(parts, ("consumer",))
    return activation_variance(mu, sigma, ctx.activation) * np.sum(consumer * consumer, axis=1)


def _head_rows(parts: UnitParts, suffix: str) -> np.ndarray | None:
    """The unit matrix of one attention part (e.g. "q_proj.weight"), or None when absent."""
    return next((m for p, m in parts if p.tensor.endswith(suffix)), None)


def attention_logit_variance(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """Per head: the variance of the attention logits q.k_j / sqrt(d) over keys j, averaged over
    queries, when queries and keys come from independent Gaussian LayerNorm inputs (same LayerNorm
    for both; for cross-attention this models the keys' LayerNorm for both)."""
    gamma, beta = ctx.require_norm("the attention sharpness model")
    wq, wk, bq = (_head_rows(parts, x) for x in ("q_proj.weight", "k_proj.weight", "q_proj.bias"))
    if wq is None or wk is None:
        raise InvalidArgumentError("the attention sharpness model needs q_proj and k_proj weights")
    d = ctx.unit_rows
    heads = wq.shape[0]
    wq3, wk3 = wq.reshape(heads, d, -1), wk.reshape(heads, d, -1)  # unit rows: (d, hidden) per head
    q_mean = wq3 @ beta + (bq.reshape(heads, d) if bq is not None else 0.0)
    a = wk3 * gamma[None, None, :]  # per head: Gamma W_k^T, transposed (d, hidden)
    # E_q |A^T q|^2 with q ~ N(q_mean, W_q Gamma^2 W_q^T)
    gram = a @ a.transpose(0, 2, 1)  # (heads, d, d)
    wqg = wq3 * gamma[None, None, :]
    cov_q = wqg @ wqg.transpose(0, 2, 1)
    return (np.einsum("hi,hij,hj->h", q_mean, gram, q_mean) + np.einsum("hij,hij->h", gram, cov_q)) / d


def _gauss_attn(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """gauss_ln for heads, times how much of that variance survives the attention average: with
    T attended tokens and logits of variance s^2, sum_j alpha_j^2 ~ exp(s^2) / T (log-normal
    softmax), at most 1. Diffuse heads average their input towards its mean, which removal with
    compensation keeps; sharp heads pass the variance through. FFN neurons: as gauss_ln."""
    score = _gauss_ln(parts, ctx)
    if ctx.kind != "attention" or not ctx.tokens:
        return score
    s2 = attention_logit_variance(parts, ctx)
    return score * np.minimum(1.0, np.exp(np.minimum(s2, 50.0)) / ctx.tokens)


def expected_contribution(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """(N, hidden): every unit's mean contribution to the module's output under the Gaussian
    LayerNorm model: E[act(a_i)] * fc2 column i for neurons, O_h^T (V_h beta + b_h) for heads
    (exact for the value bias whatever the input, since the attention weights sum to 1)."""
    gamma, beta = ctx.require_norm("mean compensation")
    if ctx.kind == "attention":
        v, vb, o = _value_path(parts, ctx)
        return np.einsum("hd,hdo->ho", v @ beta + vb, o)
    mu, sigma = _ffn_preactivation(parts, ctx)
    mean, _ = activation_moments(mu, sigma, ctx.activation)
    (consumer,) = _stack(parts, ("consumer",))
    return mean[:, None] * consumer


SCORES: dict[str, Callable[[UnitParts, ModuleContext], np.ndarray]] = {
    "l2": _l2,  # paper comparator: L2 norm of the unit's weights
    "l1": _l1,
    "producer_l2": _producer_l2,
    "gauss_ln": _gauss_ln,  # data-free: output variance under a Gaussian LayerNorm input model
    "gauss_attn": _gauss_attn,  # gauss_ln, heads weighted by their modelled attention sharpness
}

METHODS = ("kmeans", "magnitude")
KINDS = ("all", "ffn", "attention")
ALLOCATIONS = ("uniform", "variance")
VARIANCE_GROUPS = ("kind", "module_type")
INITS = ("auto", "kmeans++", "ward")
BUDGETS = ("units", "params")


@dataclass(frozen=True)
class Recipe:
    """Every choice of one compression run."""

    name: str = "paper"
    method: str = "kmeans"
    allocation: str = "variance"
    feature: str = "weights"
    weighting: str = "none"
    fusion: str = "centroid"
    score: str = "l2"
    variance_groups: str = "kind"
    high_factor: float = 1.2
    init: str = "auto"
    max_iter: int = 100
    kinds: str = "all"  # which module kinds the recipe compresses
    budget: str = "units"  # sparsity = fraction of units of every module, or of all compressible params
    remove_heads: int = 0  # remove exactly this many heads from every encoder self-attention module
    compensate: bool = False  # fold removed units' mean output (Gaussian model) into the consumer bias
    refit: bool = False  # re-solve kept FFN neurons' consumer under the Gaussian model (magnitude only)

    def validate(self) -> Recipe:
        checks: list[tuple[str, Any, Sequence[Any]]] = [
            ("method", self.method, METHODS),
            ("allocation", self.allocation, ALLOCATIONS),
            ("feature", self.feature, tuple(FEATURES)),
            ("weighting", self.weighting, tuple(WEIGHTINGS)),
            ("fusion", self.fusion, tuple(FUSIONS)),
            ("score", self.score, tuple(SCORES)),
            ("variance_groups", self.variance_groups, VARIANCE_GROUPS),
            ("init", self.init, INITS),
            ("kinds", self.kinds, KINDS),
            ("budget", self.budget, BUDGETS),
        ]
        for field, value, allowed in checks:
            if value not in allowed:
                raise InvalidArgumentError(f"unknown {field} {value!r} (expected one of: {', '.join(allowed)})")
        if not (self.high_factor >= 1.0):
            raise InvalidArgumentError(f"high_factor {self.high_factor} must be >= 1")
        if self.max_iter < 0:
            raise InvalidArgumentError(f"max_iter {self.max_iter} must be >= 0")
        if self.remove_heads < 0:
            raise InvalidArgumentError(f"remove_heads {self.remove_heads} must be >= 0")
        if (self.compensate or self.refit) and self.method != "magnitude":
            raise InvalidArgumentError("compensate and refit apply to removal (method magnitude) only")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    # Xu et al.: k-means on concatenated producer+consumer weights, centroid fusion, mixed sparsity.
    "paper": Recipe(),
    # The paper's comparator: structured L2 magnitude pruning with a uniform plan.
    "magnitude": Recipe(name="magnitude", method="magnitude", allocation="uniform"),
    # Beyond the paper (issue 6; measured on whisper tiny.en, see README "Recipes"). Hyperparameters
    # come from first principles, the choice between recipes from the measured grid.
    # The default: remove the FFN neurons of least output variance under a Gaussian LayerNorm input
    # model, with the paper's variance-mixed allocation of the budget across FFN modules.
    "datafree": Recipe(name="datafree", method="magnitude", score="gauss_ln", kinds="ffn"),
    # datafree + the removed neurons' modelled mean output folded into fc2's bias
    "datafree-comp": Recipe(name="datafree-comp", method="magnitude", score="gauss_ln", kinds="ffn", compensate=True),
    # datafree + the kept neurons' fc2 columns re-solved under the Gaussian input model
    "datafree-refit": Recipe(name="datafree-refit", method="magnitude", score="gauss_ln", kinds="ffn", refit=True),
    # cluster FFN neurons by the direction of their fc1 rows; merge direction and scale separately
    "cosine": Recipe(name="cosine", allocation="uniform", feature="direction", fusion="cosine", kinds="ffn"),
    # datafree-comp on FFNs + the one encoder head of least modelled output variance (gauss_attn)
    # removed per encoder self-attention module, its mean output kept in out_proj's bias; the
    # sparsity counts all compressible parameters (heads first, FFN neurons for the rest)
    "datafree-heads": Recipe(
        name="datafree-heads",
        method="magnitude",
        allocation="uniform",
        score="gauss_attn",
        kinds="ffn",
        budget="params",
        remove_heads=1,
        compensate=True,
    ),
}


DEFAULT_RECIPE = "datafree"


def make_recipe(name: str = DEFAULT_RECIPE, **overrides: Any) -> Recipe:
    """A named recipe with some choices overridden (None means 'keep the recipe's')."""
    if name not in RECIPES:
        raise InvalidArgumentError(f"unknown recipe {name!r} (expected one of: {', '.join(RECIPES)})")
    known = {f.name for f in fields(Recipe)}
    bad = set(overrides) - known
    if bad:
        raise InvalidArgumentError(f"unknown recipe option(s): {', '.join(sorted(bad))}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(RECIPES[name], **changes).validate()
