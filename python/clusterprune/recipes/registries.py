"""The registries of strategies: each choice the paper leaves open is one small function here.

Adding a strategy = adding one entry here (and a test); a recipe (:mod:`clusterprune.config`)
names its choices by these keys, and every choice of a run is recorded in the output's metadata.

* FEATURES: which parts of a unit k-means sees.
* WEIGHTINGS: how the parts are scaled before clustering.
* FUSIONS: how a cluster becomes one unit (producer mean; consumer sum or mean).
* SCORES: the removal importance of a unit (the data-free Gaussian scores live in :mod:`.gaussian`).
* Allocators live in :mod:`clusterprune.plan` (uniform, variance).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..fusion import Fusion
from ..models.units import UnitParts, blocks
from .gaussian import ModuleContext, gauss_attn, gauss_ln


def _unit_normalised(mats: list[np.ndarray]) -> list[np.ndarray]:
    """Rows scaled to unit L2 norm over all blocks (zero rows stay zero)."""
    norms = np.sqrt(sum(np.sum(b * b, axis=1) for b in mats))
    scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)[:, None]
    return [b * scale for b in mats]


# the features that are some of the unit matrices as they are (their values in any dtype): the
# roles of the parts they select, in part order
SELECTIONS: dict[str, tuple[str, ...]] = {
    "weights": ("producer", "consumer"),  # paper: producer and consumer weights concatenated
    "weights+bias": ("producer", "bias", "consumer"),
    "producer": ("producer", "bias"),
}


def _selection(roles: tuple[str, ...]) -> Callable[[UnitParts], list[np.ndarray]]:
    return lambda parts: blocks(parts, roles)


FEATURES: dict[str, Callable[[UnitParts], list[np.ndarray]]] = {
    **{name: _selection(roles) for name, roles in SELECTIONS.items()},
    # the direction of the producer weights (cosine geometry), scale left to the fusion rule
    "direction": lambda parts: _unit_normalised(blocks(parts, ("producer",))),
}


def _no_weighting(mats: list[np.ndarray]) -> list[np.ndarray]:
    return mats


def _balanced(mats: list[np.ndarray]) -> list[np.ndarray]:
    """Each block scaled to mean unit norm 1, so no tensor dominates the distance."""
    out = []
    for b in mats:
        rms = float(np.sqrt(np.sum(b * b) / max(b.shape[0], 1)))
        out.append(b / rms if rms > 0 else b)
    return out


WEIGHTINGS: dict[str, Callable[[list[np.ndarray]], list[np.ndarray]]] = {
    "none": _no_weighting,
    "balanced": _balanced,
}


FUSIONS: dict[str, Fusion] = {
    "centroid": Fusion(True),  # paper: every member replaced by the centroid; folded consumer = sum
    "mean": Fusion(False),  # the cluster contributes like one average unit
    "cosine": Fusion(True, producer_direction=True),  # scale-aware merge of producer directions
}


def _l2(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    return np.sqrt(sum(np.sum(m * m, axis=1) for m in blocks(parts, ("producer", "consumer"))))


def _l1(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    return sum(np.sum(np.abs(m), axis=1) for m in blocks(parts, ("producer", "consumer")))


def _producer_l2(parts: UnitParts, ctx: ModuleContext) -> np.ndarray:
    return np.sqrt(sum(np.sum(m * m, axis=1) for m in blocks(parts, ("producer",))))


SCORES: dict[str, Callable[[UnitParts, ModuleContext], np.ndarray]] = {
    "l2": _l2,  # paper comparator: L2 norm of the unit's weights
    "l1": _l1,
    "producer_l2": _producer_l2,
    "gauss_ln": gauss_ln,  # data-free: output variance under a Gaussian LayerNorm input model
    "gauss_attn": gauss_attn,  # gauss_ln, heads weighted by their modelled attention sharpness
}
