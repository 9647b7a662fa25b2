"""The k-means of the Rust engine, written against an array namespace (NumPy or CuPy).

Same algorithm, same tie rules, same seeds: Ward initialisation when K >= N/2 and N <= 8192
(else seeded k-means++ with the engine's SplitMix64 stream), then Lloyd steps in which a unit moves
only when its exact distance to the proposed centroid is strictly smaller, and empty clusters take
the farthest unit of a cluster with >= 2 members. With NumPy it runs (and is tested) on any
machine; with CuPy the distance GEMMs, reductions and centroid updates run on the GPU while the
short sequential parts (Ward's merge order, k-means++ draws) run on the host.

Floating-point order differs from the Rust engine (f64 GEMM here, f32 GEMM there), so where two
candidate merges or centroids tie to rounding the assignments may differ; the inertia then agrees
to ~1e-4 relative or better (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .engine import KMeansResult
from .errors import DeviceUnavailableError, InvalidArgumentError, NonFiniteError

WARD_MAX_N = 8192
MASK64 = (1 << 64) - 1


DEVICES = ("cpu", "cuda", "numpy")


def namespace(device: str) -> Any:
    """Array namespace of a device: cupy for ``cuda`` (a clear error when CuPy or a GPU is
    missing), numpy for ``numpy`` (the GPU code path run on the CPU, for testing and comparison)."""
    if device not in DEVICES:
        raise InvalidArgumentError(f"unknown device {device!r} (expected one of: {', '.join(DEVICES)})")
    if device != "cuda":
        return np
    try:
        import cupy
    except ImportError:
        raise DeviceUnavailableError("--device cuda needs CuPy: pip install 'clusterprune[gpu]'") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise DeviceUnavailableError(f"--device cuda: no usable CUDA device ({exc})") from None
    if count < 1:
        raise DeviceUnavailableError("--device cuda: no CUDA device found")
    return cupy


def to_host(xp: Any, a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") and xp is not np else np.asarray(a)


class SplitMix64:
    """The engine's PRNG (rust/core/src/rng.rs), bit for bit."""

    def __init__(self, seed: int) -> None:
        self.state = (seed ^ 0x5851F42D4C957F2D) & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def next_f64(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n: int) -> int:
        return min(int(self.next_f64() * n), n - 1)


def _sq_dist_rows(xp: Any, x: Any, c: Any) -> Any:
    """Exact f64 squared distances between matching rows of x and c."""
    diff = x.astype(xp.float64) - c.astype(xp.float64)
    return (diff * diff).sum(axis=1)


def segment_sum(xp: Any, labels: Any, x: Any, k: int) -> Any:
    """(k, d) float64 sums of the rows of ``x`` per label."""
    out = xp.zeros((k, x.shape[1]), dtype=xp.float64)
    if xp is np:
        np.add.at(out, labels, x)
    else:  # pragma: no cover - needs a GPU
        import cupyx

        cupyx.scatter_add(out, labels, x)
    return out


def _centroids(xp: Any, x: Any, labels: Any, k: int, old: Any | None) -> Any:
    sums = segment_sum(xp, labels, x.astype(xp.float64), k)
    counts = xp.bincount(labels, minlength=k).astype(xp.float64)
    means = (sums / xp.maximum(counts, 1)[:, None]).astype(xp.float32)
    if old is not None:
        means = xp.where((counts > 0)[:, None], means, old)
    return means


def _nearest(xp: Any, x: Any, c: Any) -> Any:
    cnorm = (c.astype(xp.float64) ** 2).sum(axis=1)
    score = cnorm[None, :] - 2.0 * (x.astype(xp.float64) @ c.astype(xp.float64).T)
    return xp.argmin(score, axis=1)  # first minimum: lowest index on ties


def _fill_empty(assign: np.ndarray, own: np.ndarray, k: int) -> int:
    size = np.bincount(assign, minlength=k)
    moved = 0
    for j in np.flatnonzero(size == 0):
        candidates = np.flatnonzero(size[assign] >= 2)
        i = int(candidates[np.argmax(own[candidates])])  # first maximum: lowest index on ties
        size[assign[i]] -= 1
        assign[i] = j
        own[i] = 0.0
        size[j] = 1
        moved += 1
    return moved


def _kmeanspp(xp: Any, x: Any, k: int, seed: int) -> Any:
    n = x.shape[0]
    rng = SplitMix64(seed)
    first = rng.below(n)
    picks = [first]
    chosen = np.zeros(n, dtype=bool)
    chosen[first] = True
    mind = to_host(xp, _sq_dist_rows(xp, x, x[first][None, :]))
    while len(picks) < k:
        total = float(mind.sum())
        if total > 0.0:
            target = rng.next_f64() * total
            positive = np.flatnonzero(mind > 0.0)
            cum = np.cumsum(mind[positive])
            at = int(np.searchsorted(cum, target, side="right"))
            nxt = int(positive[min(at, len(positive) - 1)])
        else:
            nxt = int(np.flatnonzero(~chosen)[0])
        chosen[nxt] = True
        picks.append(nxt)
        mind = np.minimum(mind, to_host(xp, _sq_dist_rows(xp, x, x[nxt][None, :])))
    return x[xp.asarray(picks)]


def _ward(xp: Any, x: Any, k: int) -> np.ndarray:
    n = x.shape[0]
    x64 = x.astype(xp.float64)
    norms = (x64 * x64).sum(axis=1)
    d2 = xp.maximum(norms[:, None] + norms[None, :] - 2.0 * (x64 @ x64.T), 0.0)
    w = to_host(xp, 0.5 * d2)
    np.fill_diagonal(w, np.inf)
    active = np.ones(n, dtype=bool)
    size = np.ones(n)
    parent = np.arange(n)

    def nearest(i: int) -> tuple[int, float]:
        row = np.where(active, w[i], np.inf)
        row[i] = np.inf
        j = int(np.argmin(row))
        return j, float(row[j])

    nn = np.argmin(w, axis=1)  # all active; the diagonal is +inf
    nnc = w[np.arange(n), nn]
    for _ in range(n - k):
        i = int(np.argmin(np.where(active, nnc, np.inf)))
        j = int(nn[i])
        a, b = min(i, j), max(i, j)
        na, nb, wab = size[a], size[b], w[a, b]
        others = active.copy()
        others[[a, b]] = False
        nc = size[others]
        v = ((na + nc) * w[a, others] + (nb + nc) * w[b, others] - nc * wab) / (na + nb + nc)
        w[a, others] = v
        w[others, a] = v
        active[b] = False
        size[a] = na + nb
        parent[b] = a
        nn[a], nnc[a] = nearest(a)
        rest = np.flatnonzero(active)
        rest = rest[rest != a]
        lost = (nn[rest] == a) | (nn[rest] == b)
        for c in rest[lost]:
            nn[c], nnc[c] = nearest(int(c))
        keep = rest[~lost]
        closer = (w[keep, a] < nnc[keep]) | ((w[keep, a] == nnc[keep]) & (a < nn[keep]))
        nn[keep[closer]] = a
        nnc[keep[closer]] = w[keep[closer], a]
    root = np.arange(n)
    for i in range(n):
        r = i
        while parent[r] != r:
            r = parent[r]
        root[i] = r
    _, labels = np.unique(root, return_inverse=True)
    # number clusters by first member, as the engine does
    order = np.argsort(np.unique(labels, return_index=True)[1], kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels]


def kmeans_xp(
    units: Any, k: int, seed: int = 0, *, xp: Any = np, init: str = "auto", max_iter: int = 100
) -> KMeansResult:
    """k-means on the rows of ``units`` with array namespace ``xp`` (see the module docstring)."""
    x = xp.ascontiguousarray(xp.asarray(units), dtype=xp.float32)
    if x.ndim != 2:
        raise InvalidArgumentError(f"units must be a 2-D (N, d) matrix, got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise InvalidArgumentError(f"K = {k} is outside [1, N = {n}]")
    bad = to_host(xp, ~xp.isfinite(x).all(axis=1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        col = int(np.flatnonzero(~np.isfinite(to_host(xp, x[row])))[0])
        raise NonFiniteError(f"non-finite value (NaN or Inf) in unit {row} at position {col}")
    if init not in ("auto", "kmeans++", "ward"):
        raise InvalidArgumentError(f"unknown k-means init '{init}' (expected auto, kmeans++ or ward)")
    used = init if init != "auto" else ("ward" if n <= WARD_MAX_N and 2 * k >= n else "kmeans++")
    if k == n:
        return KMeansResult(np.arange(n), to_host(xp, x), 0.0, [0.0], 0, True, used)
    if used == "ward":
        assign = _ward(xp, x, k)
    else:
        seeds = _kmeanspp(xp, x, k, seed)
        assign = to_host(xp, _nearest(xp, x, seeds)).astype(np.int64)
        own = to_host(xp, _sq_dist_rows(xp, x, seeds[xp.asarray(assign)]))
        _fill_empty(assign, own, k)
    cents = _centroids(xp, x, xp.asarray(assign), k, None)
    own = to_host(xp, _sq_dist_rows(xp, x, cents[xp.asarray(assign)]))
    history = [float(own.sum())]
    n_iter, converged = 0, False
    while n_iter < max_iter:
        movable = np.flatnonzero(own > 0.0)
        changed = 0
        if movable.size:
            mv = xp.asarray(movable)
            cand = to_host(xp, _nearest(xp, x[mv], cents))
            differs = cand != assign[movable]
            if differs.any():
                rows, targets = movable[differs], cand[differs]
                dist = to_host(xp, _sq_dist_rows(xp, x[xp.asarray(rows)], cents[xp.asarray(targets)]))
                better = dist < own[rows]
                assign[rows[better]] = targets[better]
                own[rows[better]] = dist[better]
                changed = int(better.sum())
        changed += _fill_empty(assign, own, k)
        if changed == 0:
            converged = True
            break
        cents = _centroids(xp, x, xp.asarray(assign), k, cents)
        own = to_host(xp, _sq_dist_rows(xp, x, cents[xp.asarray(assign)]))
        history.append(float(own.sum()))
        n_iter += 1
    return KMeansResult(assign.astype(np.int64), to_host(xp, cents), history[-1], history, n_iter, converged, used)
