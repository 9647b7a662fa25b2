"""Folding a grouping into K units and expanding it back to N: against row-by-row references."""

from __future__ import annotations

import numpy as np

from clusterprune.fusion import Fusion, expand, fold
from clusterprune.models.units import Part

PRODUCER, CONSUMER = Part("fc1.weight", "producer"), Part("fc2.weight", "consumer")


def _groupings(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Awkward labels too: one cluster (K = 1), every unit its own (K = N), all but one removed."""
    some = rng.integers(-1, 4, size=n)
    some[0] = 0
    dense = np.unique(some[some >= 0], return_inverse=True)[1]
    labels = np.full(n, -1)
    labels[some >= 0] = dense
    lone = np.full(n, -1)
    lone[n // 2] = 0
    return [labels, np.zeros(n, dtype=np.int64), np.arange(n), lone]


def test_expand_gives_each_member_its_cluster_and_removed_units_zeros():
    rng = np.random.default_rng()  # fresh inputs each run
    for n, width in ((1, 3), (9, 4), (40, 7)):
        for labels in _groupings(rng, n):
            k = int(labels.max()) + 1
            parts = [(PRODUCER, rng.standard_normal((n, width))), (CONSUMER, rng.standard_normal((n, width)))]
            parts[1][1][n - 1] = parts[1][1][0]  # a duplicated unit
            folded = fold(parts, labels, k, Fusion(consumer_sum=True))
            sizes = np.bincount(labels[labels >= 0], minlength=k)
            for (part, merged), (_, full) in zip(folded, expand(folded, labels, k), strict=True):
                assert full.shape == (n, width) and full.dtype == np.float64
                for i, c in enumerate(labels):
                    want = np.zeros(width) if c < 0 else merged[c] / (sizes[c] if part.role == "consumer" else 1)
                    assert np.array_equal(full[i], want)
                    assert c >= 0 or not np.any(np.signbit(full[i]))  # a removed unit: +0.0, as zeros() gave
