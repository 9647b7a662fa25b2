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
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine.xp import segment_sum
from .models.units import Part


@dataclass(frozen=True)
class Fusion:
    """How a cluster becomes one folded unit."""

    consumer_sum: bool  # folded consumer = sum of the members' (True) or their mean (False)
    producer_direction: bool = False  # producer = mean direction x mean norm (else plain mean)


def relabel_by_first_member(assignments: np.ndarray) -> np.ndarray:
    """Renumbers clusters 0..K-1 in the order of their lowest-index member."""
    uniq, first = np.unique(assignments, return_index=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    mapping = np.full(int(uniq.max()) + 1, -1, dtype=np.int64)
    mapping[uniq] = rank
    return mapping[assignments]


def cluster_sizes(labels: Any, k: int, xp: Any = np) -> Any:
    return xp.bincount(labels[labels >= 0], minlength=k)


def fold(parts: Sequence[tuple[Part, Any]], labels: Any, k: int, rule: Fusion, xp: Any = np) -> list[tuple[Part, Any]]:
    """(part, (N, w)) -> (part, (K, w)): one unit per cluster (arrays of namespace ``xp``)."""
    sizes = cluster_sizes(labels, k, xp).astype(xp.float64)
    kept = labels >= 0
    out = []
    for part, units in parts:
        if part.role == "producer" and rule.producer_direction:
            norms = xp.sqrt((units * units).sum(axis=1))
            dirs = units / xp.where(norms > 0, norms, 1.0)[:, None]
            mean_dir = segment_sum(xp, labels[kept], dirs[kept], k)
            length = xp.sqrt((mean_dir * mean_dir).sum(axis=1))
            mean_norm = segment_sum(xp, labels[kept], norms[kept][:, None], k)[:, 0] / sizes
            scale = xp.where(length > 0, mean_norm / xp.where(length > 0, length, 1.0), 0.0)
            out.append((part, mean_dir * scale[:, None]))
            continue
        sums = segment_sum(xp, labels[kept], units[kept], k)
        if part.role != "consumer" or not rule.consumer_sum:
            sums /= sizes[:, None]
        out.append((part, sums))
    return out


def expand(folded: Sequence[tuple[Part, Any]], labels: Any, k: int, xp: Any = np) -> list[tuple[Part, Any]]:
    """Folded (K, w) parts -> same-shape (N, w) parts computing the same function."""
    sizes = xp.maximum(cluster_sizes(labels, k, xp).astype(xp.float64), 1.0)  # 1 only where no unit picks the row
    out = []
    for part, merged in folded:
        rows = merged / sizes[:, None] if part.role == "consumer" else merged
        # one gather from the K rows and a zero row last: label -1 (a removed unit) picks the zeros
        table = xp.concatenate([rows, xp.zeros((1, merged.shape[1]), dtype=xp.float64)]).astype(xp.float64, copy=False)
        out.append((part, xp.take(table, labels, axis=0)))
    return out
