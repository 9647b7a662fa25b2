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

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .unitmap import Part

UnitParts = Sequence[tuple[Part, np.ndarray]]  # (part, (N, width) float64 matrix)


def _stack(parts: UnitParts, roles: tuple[str, ...]) -> list[np.ndarray]:
    return [m for p, m in parts if p.role in roles]


FEATURES: dict[str, Callable[[UnitParts], list[np.ndarray]]] = {
    # paper: producer and consumer weights concatenated
    "weights": lambda parts: _stack(parts, ("producer", "consumer")),
    "weights+bias": lambda parts: _stack(parts, ("producer", "bias", "consumer")),
    "producer": lambda parts: _stack(parts, ("producer", "bias")),
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

# fusion -> does the folded consumer sum the members (True) or average them (False)
FUSIONS: dict[str, bool] = {
    "centroid": True,  # paper: every member replaced by the centroid; folded consumer = sum
    "mean": False,  # the cluster contributes like one average unit; folded consumer = mean
}


def _l2(parts: UnitParts) -> np.ndarray:
    return np.sqrt(sum(np.sum(m * m, axis=1) for m in _stack(parts, ("producer", "consumer"))))


def _l1(parts: UnitParts) -> np.ndarray:
    return sum(np.sum(np.abs(m), axis=1) for m in _stack(parts, ("producer", "consumer")))


def _producer_l2(parts: UnitParts) -> np.ndarray:
    return np.sqrt(sum(np.sum(m * m, axis=1) for m in _stack(parts, ("producer",))))


SCORES: dict[str, Callable[[UnitParts], np.ndarray]] = {
    "l2": _l2,  # paper comparator: L2 norm of the unit's weights
    "l1": _l1,
    "producer_l2": _producer_l2,
}

METHODS = ("kmeans", "magnitude")
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
