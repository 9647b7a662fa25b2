"""Greedy optimal-brain-surgeon removal of FFN neurons under an activation covariance.

The module's output is y = f C + c (f: the N activations, C: fc2's columns as rows, N x H). With
the activations' covariance S, removing a set R of neurons and re-solving the kept neurons'
consumer rows (and the bias, for the mean) by least squares leaves the output error
E(R) = tr(C^T (S / S_KK) C) (the Schur complement of the kept block). Removing one neuron j
from the current kept set, whose re-solved rows are W and P = S_KK^-1, adds exactly
|W_j|^2 / P_jj; the kept rows become W - P[:, j] W_j / P_jj and P loses row and column j
(the optimal-brain-surgeon update, Hassibi & Stork 1993, with whole rows). Removing the cheapest
neuron again and again gives the removal order and the error curve E(r) for r = 1, 2, ...

The covariance comes from the Gaussian LayerNorm input model (:mod:`.refit`) or from measured
statistics (:mod:`clusterprune.activations`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIDGE = 1e-6  # relative to the mean activation variance: numerical safety only


@dataclass(frozen=True)
class Removal:
    order: np.ndarray  # (steps,) neuron indices in removal order
    errors: np.ndarray  # (steps,) output error E(r) after removing order[:r + 1]


ROWS = 256  # rows per slice of the rank-one updates and the symmetrisation: no N x N temporary


def ridged(cov: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """cov + scale * RIDGE * (mean variance) * I, a new array (the same numbers as adding a
    scaled identity, without allocating one)."""
    out = cov + 0.0
    diagonal = np.arange(cov.shape[0])
    out[diagonal, diagonal] += scale * RIDGE * _mean_variance(cov)
    return out


def _mean_variance(cov: np.ndarray) -> float:
    return max(float(np.trace(cov)) / max(cov.shape[0], 1), 1e-30)


def inverse(cov: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, float]:
    """(ridged(cov, scale)^-1 symmetrised, the ridge scale used): a covariance summed in float32
    can have negative eigenvalues beyond the ridge (an inverse with a non-positive diagonal); the
    ridge then grows tenfold until the matrix factorises.

    The ridge is added to ``cov`` in place and its diagonal put back bit for bit afterwards (a
    -0.0 elsewhere becomes 0.0, as in ``ridged``): no N x N copy beside the inverse's own, and the
    same numbers as inverting ``ridged(cov, scale)``."""
    diagonal = np.arange(cov.shape[0])
    mean_variance = _mean_variance(cov)  # before the diagonal changes
    np.add(cov, 0.0, out=cov)
    saved = cov[diagonal, diagonal].copy()
    try:
        cov[diagonal, diagonal] = saved + scale * RIDGE * mean_variance
        p = np.linalg.inv(cov)
        while np.any(np.diag(p) <= 0) and scale < 1e12:
            scale *= 10.0
            cov[diagonal, diagonal] = saved + scale * RIDGE * mean_variance
            try:
                np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                continue
            del p
            p = np.linalg.inv(cov)
    finally:
        cov[diagonal, diagonal] = saved
    _symmetrise(p)
    return p, scale


def _symmetrise(p: np.ndarray) -> None:
    """p = (p + p^T) / 2 in place, a block at a time (the same numbers as the whole-matrix
    expression: each pair is added once and halved)."""
    n = p.shape[0]
    for r0 in range(0, n, ROWS):
        r1 = min(r0 + ROWS, n)
        for c0 in range(r0, n, ROWS):
            c1 = min(c0 + ROWS, n)
            block = p[r0:r1, c0:c1] + p[c0:c1, r0:r1].T
            block /= 2
            p[r0:r1, c0:c1] = block
            p[c0:c1, r0:r1] = block.T


def greedy_removal(cov: np.ndarray, consumer: np.ndarray, steps: int) -> Removal:
    """The ``steps`` cheapest neurons to remove one after another (see the module docstring);
    ties go to the lower index. ``cov``: (N, N); ``consumer``: (N, H) rows of fc2."""
    n = cov.shape[0]
    steps = max(0, min(steps, n - 1))
    p, scale = inverse(cov)
    w = np.array(consumer, dtype=np.float64)
    alive = np.ones(n, dtype=bool)
    order = np.zeros(steps, dtype=np.int64)
    errors = np.zeros(steps)
    total = 0.0
    for step in range(steps):
        diag = np.diag(p)
        if np.any(diag[alive] <= 0):  # the downdates drifted (a near-singular S): factorise the kept block anew
            p, w = _refreshed(cov, consumer, alive, scale)
            diag = np.diag(p)
        with np.errstate(over="ignore"):  # a neuron the others cannot stand in for at all: infinite cost
            cost = np.where(alive, np.sum(w * w, axis=1) / np.where(alive, np.maximum(diag, 1e-300), 1.0), np.inf)
        candidates = np.flatnonzero(alive)  # a removed neuron is never chosen again, even if all costs are inf
        j = int(candidates[np.argmin(cost[candidates])])
        total += float(cost[j])
        col = p[:, j] / p[j, j]
        w -= np.outer(col, w[j])
        pj = p[j].copy()
        for r0 in range(0, n, ROWS):  # p -= outer(col, pj), a slice of rows at a time
            p[r0 : r0 + ROWS] -= np.outer(col[r0 : r0 + ROWS], pj)
        w[j] = 0.0
        p[j, :] = 0.0
        p[:, j] = 0.0
        alive[j] = False
        order[step], errors[step] = j, total
    return Removal(order, errors)


def _refreshed(cov: np.ndarray, consumer: np.ndarray, alive: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """P = (S_KK + ridge I)^-1 of the kept neurons K, zero elsewhere, and their re-solved consumer
    rows P S_K,all C: what the rank-one downdates track, computed directly."""
    kept = np.flatnonzero(alive)
    p = np.zeros_like(cov)
    if kept.size:
        p[np.ix_(kept, kept)] = inverse(cov[np.ix_(kept, kept)], scale)[0]
    w = np.zeros((cov.shape[0], consumer.shape[1]))
    w[kept] = p[np.ix_(kept, kept)] @ (cov[kept] @ consumer)
    return p, w


def removal_labels(order: np.ndarray, n: int) -> np.ndarray:
    """Labels of a removal: -1 for the neurons in ``order``, the kept ones numbered 0.. in index order."""
    labels = np.zeros(n, dtype=np.int64)
    labels[order] = -1
    kept = np.flatnonzero(labels >= 0)
    labels[kept] = np.arange(len(kept))
    return labels


def output_variance(cov: np.ndarray, consumer: np.ndarray) -> float:
    """tr(C^T S C): the variance the module adds to its output."""
    return float(np.sum(consumer * (cov @ consumer)))
