"""Data-free repair of merged FFN neurons (after Wang et al., "Forget the Data and Fine-Tuning!
Just Fold the Network to Compress", ICLR 2025), under the Gaussian LayerNorm input model.

Averaging n members' fc1 rows averages their pre-activations a_i = w_i.x + b_i. With x = gamma * z
+ beta (z standard Gaussian) the members' pre-activation covariance is w_i diag(gamma^2) w_j, so the
merged pre-activation has variance mean_ij(cov_ij) = sigma^2 (1 + (n - 1) rho) / n for members of
equal variance sigma^2 and mean correlation rho: the merge shrinks it, and the activation function
then sees a distribution its members never produced. The repair scales the merged neuron's
centred pre-activation back to the members' mean variance, factor
s = sqrt(mean_i var_i / var(merged)) (= sqrt(n / (1 + (n - 1) rho)) for equal variances), keeping
its mean: w' = s w_bar, b' = b_bar + (1 - s) w_bar.beta. Nothing comes from data.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError
from ..models.units import Part, UnitParts, blocks
from .gaussian import ModuleContext


def repair_scales(parts: UnitParts, labels: np.ndarray, k: int, ctx: ModuleContext) -> np.ndarray:
    """(K,) the factor s of every merged neuron (1 for single members and zero-variance merges)."""
    gamma, _ = ctx.require_norm("merge repair")
    (w,) = blocks(parts, ("producer",))
    wg = w * gamma[None, :]
    kept = labels >= 0
    sizes = np.bincount(labels[kept], minlength=k).astype(np.float64)
    member_var = np.bincount(labels[kept], weights=np.sum(wg[kept] ** 2, axis=1), minlength=k) / np.maximum(sizes, 1)
    mean_rows = np.zeros((k, w.shape[1]))
    np.add.at(mean_rows, labels[kept], wg[kept])
    mean_rows /= np.maximum(sizes, 1)[:, None]
    merged_var = np.sum(mean_rows**2, axis=1)
    ok = (sizes > 1) & (merged_var > 0)
    return np.where(ok, np.sqrt(member_var / np.where(ok, merged_var, 1.0)), 1.0)


def repaired(
    folded: list[tuple[Part, np.ndarray]], scales: np.ndarray, ctx: ModuleContext
) -> list[tuple[Part, np.ndarray]]:
    """The folded parts with every merged neuron's producer rescaled and its bias moved so its
    modelled mean pre-activation is kept."""
    _, beta = ctx.require_norm("merge repair")
    (w,) = blocks(folded, ("producer",))
    if not any(p.role == "bias" for p, _ in folded):
        raise InvalidArgumentError("merge repair keeps each merged neuron's mean in fc1's bias; the module has none")
    shift = (1.0 - scales) * (w @ beta)
    out = []
    for part, units in folded:
        if part.role == "producer":
            units = units * scales[:, None]
        elif part.role == "bias":
            units = units + shift[:, None]
        out.append((part, units))
    return out
