"""From a grouping of units to new tensors.

A grouping is ``labels``: cluster id 0..K-1 of every unit (clusters numbered by their first
member), or -1 for a removed unit (magnitude pruning). A cluster becomes one folded unit whose
producer parts (weights and biases) are the members' mean and whose consumer part is their sum
(``centroid`` fusion) or mean (``mean`` fusion). The same-shape (fused) export gives every member
the folded producer and 1/|cluster| of the folded consumer, and zeros to removed units: it
computes exactly what the folded model computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .unitmap import Part


def relabel_by_first_member(assignments: np.ndarray) -> np.ndarray:
    """Renumbers clusters 0..K-1 in the order of their lowest-index member."""
    uniq, first = np.unique(assignments, return_index=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    mapping = np.full(int(uniq.max()) + 1, -1, dtype=np.int64)
    mapping[uniq] = rank
    return mapping[assignments]


def cluster_sizes(labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels[labels >= 0], minlength=k)


def fold(
    parts: Sequence[tuple[Part, np.ndarray]], labels: np.ndarray, k: int, consumer_sum: bool
) -> list[tuple[Part, np.ndarray]]:
    """(part, (N, w)) -> (part, (K, w)): one unit per cluster."""
    sizes = cluster_sizes(labels, k).astype(np.float64)
    kept = labels >= 0
    out = []
    for part, units in parts:
        sums = np.zeros((k, units.shape[1]), dtype=np.float64)
        np.add.at(sums, labels[kept], units[kept])
        if part.role != "consumer" or not consumer_sum:
            sums /= sizes[:, None]
        out.append((part, sums))
    return out


def expand(folded: Sequence[tuple[Part, np.ndarray]], labels: np.ndarray, k: int) -> list[tuple[Part, np.ndarray]]:
    """Folded (K, w) parts -> same-shape (N, w) parts computing the same function."""
    sizes = cluster_sizes(labels, k).astype(np.float64)
    kept = labels >= 0
    out = []
    for part, merged in folded:
        full = np.zeros((labels.shape[0], merged.shape[1]), dtype=np.float64)
        rows = merged[labels[kept]]
        if part.role == "consumer":
            rows = rows / sizes[labels[kept]][:, None]
        full[kept] = rows
        out.append((part, full))
    return out
