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
    """What a score may know beyond the unit parts: the LayerNorm feeding the module."""

    norm_weight: np.ndarray | None = None
    norm_bias: np.ndarray | None = None
    activation: str = "gelu"


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": lambda a: 0.5 * a * (1.0 + _erf(a / math.sqrt(2.0))),
    "gelu_new": lambda a: 0.5 * a * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3))),
    "gelu_pytorch_tanh": lambda a: 0.5 * a * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3))),
    "relu": lambda a: np.maximum(a, 0.0),
    "silu": lambda a: a / (1.0 + np.exp(-a)),
    "swish": lambda a: a / (1.0 + np.exp(-a)),
}


def activation_variance(mu: np.ndarray, sigma: np.ndarray, activation: str, nodes: int = 64) -> np.ndarray:
    """Var[f(a)] for a ~ N(mu, sigma^2), by Gauss-Hermite quadrature."""
    if activation not in ACTIVATIONS:
        raise InvalidArgumentError(f"activation {activation!r} has no variance model (known: {', '.join(ACTIVATIONS)})")
    x, w = np.polynomial.hermite.hermgauss(nodes)
    a = mu[:, None] + math.sqrt(2.0) * sigma[:, None] * x[None, :]
    f = ACTIVATIONS[activation](a)
    mean = (f * w).sum(axis=1) / math.sqrt(math.pi)
    second = (f * f * w).sum(axis=1) / math.sqrt(math.pi)
    return np.maximum(second - mean * mean, 0.0)


def _l2(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    return np.sqrt(sum(np.sum(m * m, axis=1) for m in _stack(parts, ("producer", "consumer"))))


def _l1(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    return sum(np.sum(np.abs(m), axis=1) for m in _stack(parts, ("producer", "consumer")))


def _producer_l2(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    return np.sqrt(sum(np.sum(m * m, axis=1) for m in _stack(parts, ("producer",))))


def _gauss_ln(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    """Data-free importance of an FFN neuron: model its input as the feeding LayerNorm's affine
    map of a standard Gaussian, x = gamma * z + beta; then the pre-activation a_i = w_i.x + b_i is
    N(w_i.beta + b_i, |w_i * gamma|^2), and the score is Var[act(a_i)] * |fc2 column i|^2."""
    if ctx.norm_weight is None or ctx.norm_bias is None:
        raise InvalidArgumentError("score gauss_ln needs the LayerNorm that feeds the module (FFN modules only)")
    (w,) = _stack(parts, ("producer",))
    biases = _stack(parts, ("bias",))
    b = biases[0][:, 0] if biases else np.zeros(w.shape[0])
    mu = w @ ctx.norm_bias + b
    sigma = np.sqrt(((w * ctx.norm_weight[None, :]) ** 2).sum(axis=1))
    (consumer,) = _stack(parts, ("consumer",))
    return activation_variance(mu, sigma, ctx.activation) * np.sum(consumer * consumer, axis=1)


SCORES: dict[str, Callable[[UnitParts, ModuleContext], np.ndarray]] = {
    "l2": _l2,  # paper comparator: L2 norm of the unit's weights
    "l1": _l1,
    "producer_l2": _producer_l2,
    "gauss_ln": _gauss_ln,  # data-free: output variance under a Gaussian LayerNorm input model
}

METHODS = ("kmeans", "magnitude")
KINDS = ("all", "ffn", "attention")
ALLOCATIONS = ("uniform", "variance")
VARIANCE_GROUPS = ("kind", "module_type")
INITS = ("auto", "kmeans++", "ward")


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
        ]
        for field, value, allowed in checks:
            if value not in allowed:
                raise InvalidArgumentError(f"unknown {field} {value!r} (expected one of: {', '.join(allowed)})")
        if not (self.high_factor >= 1.0):
            raise InvalidArgumentError(f"high_factor {self.high_factor} must be >= 1")
        if self.max_iter < 0:
            raise InvalidArgumentError(f"max_iter {self.max_iter} must be >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    # Xu et al.: k-means on concatenated producer+consumer weights, centroid fusion, mixed sparsity.
    "paper": Recipe(),
    # The paper's comparator: structured L2 magnitude pruning with a uniform plan.
    "magnitude": Recipe(name="magnitude", method="magnitude", allocation="uniform"),
    # Beyond the paper (issue 6; hyperparameters from first principles, see README):
    # remove the FFN neurons of least output variance under a Gaussian LayerNorm input model
    "datafree": Recipe(name="datafree", method="magnitude", allocation="uniform", score="gauss_ln", kinds="ffn"),
    # cluster FFN neurons by the direction of their fc1 rows; merge direction and scale separately
    "cosine": Recipe(name="cosine", allocation="uniform", feature="direction", fusion="cosine", kinds="ffn"),
}


def make_recipe(name: str = "paper", **overrides: Any) -> Recipe:
    """A named recipe with some choices overridden (None means 'keep the recipe's')."""
    if name not in RECIPES:
        raise InvalidArgumentError(f"unknown recipe {name!r} (expected one of: {', '.join(RECIPES)})")
    known = {f.name for f in fields(Recipe)}
    bad = set(overrides) - known
    if bad:
        raise InvalidArgumentError(f"unknown recipe option(s): {', '.join(sorted(bad))}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(RECIPES[name], **changes).validate()
