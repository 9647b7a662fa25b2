"""Typed front of the Rust engine (``clusterprune._core``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from .errors import InvalidArgumentError


@dataclass(frozen=True)
class KMeansResult:
    assignments: np.ndarray  # (N,) int64 cluster of every unit
    centroids: np.ndarray  # (K, d) float32
    inertia: float  # sum of squared distances to the assigned centroid (exact, f64)
    inertia_history: list[float]  # after initialisation and after each Lloyd iteration
    n_iter: int
    converged: bool
    init: str  # the initialisation actually used


def kmeans(
    units: np.ndarray,
    k: int,
    seed: int = 0,
    *,
    init: str = "auto",
    max_iter: int = 100,
    tol: float = 0.0,
    num_threads: int | None = None,
) -> KMeansResult:
    """k-means on the rows of ``units`` (N x d; f16/bf16-from-f32/f32/f64 are computed in f32).

    Deterministic: the same input and seed give byte-identical output whatever ``num_threads``.
    """
    arr = np.asarray(units)
    if arr.ndim != 2:
        raise InvalidArgumentError(f"units must be a 2-D (N, d) matrix, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidArgumentError(f"units must be floating point, got {arr.dtype}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidArgumentError(f"K must be an integer, got {k!r}")
    if seed < 0:
        raise InvalidArgumentError(f"seed must be >= 0, got {seed}")
    data = np.ascontiguousarray(arr, dtype=np.float32)
    a, c, inertia, hist, n_iter, conv, used = _core.kmeans(
        data, int(k), seed=int(seed), max_iter=int(max_iter), tol=float(tol), init=init, num_threads=num_threads
    )
    return KMeansResult(a, c, inertia, list(hist), n_iter, conv, used)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Ascending indices of the ``k`` largest scores (ties keep the lower index)."""
    return _core.top_k(np.ascontiguousarray(scores, dtype=np.float64), int(k))
