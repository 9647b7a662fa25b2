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


def ridged(cov: np.ndarray) -> np.ndarray:
    n = cov.shape[0]
    return cov + RIDGE * max(float(np.trace(cov)) / max(n, 1), 1e-30) * np.eye(n)


def greedy_removal(cov: np.ndarray, consumer: np.ndarray, steps: int) -> Removal:
    """The ``steps`` cheapest neurons to remove one after another (see the module docstring);
    ties go to the lower index. ``cov``: (N, N); ``consumer``: (N, H) rows of fc2."""
    n = cov.shape[0]
    steps = max(0, min(steps, n - 1))
    p = np.linalg.inv(ridged(cov))
    p = (p + p.T) / 2
    w = np.array(consumer, dtype=np.float64)
    alive = np.ones(n, dtype=bool)
    order = np.zeros(steps, dtype=np.int64)
    errors = np.zeros(steps)
    total = 0.0
    for step in range(steps):
        diag = np.diag(p)
        with np.errstate(over="ignore"):  # a neuron the others cannot stand in for at all: infinite cost
            cost = np.where(alive, np.sum(w * w, axis=1) / np.where(alive, np.maximum(diag, 1e-300), 1.0), np.inf)
        candidates = np.flatnonzero(alive)  # a removed neuron is never chosen again, even if all costs are inf
        j = int(candidates[np.argmin(cost[candidates])])
        total += float(cost[j])
        col = p[:, j] / p[j, j]
        w -= np.outer(col, w[j])
        p -= np.outer(col, p[j])
        w[j] = 0.0
        p[j, :] = 0.0
        p[:, j] = 0.0
        alive[j] = False
        order[step], errors[step] = j, total
    return Removal(order, errors)


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
