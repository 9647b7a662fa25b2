"""The k-means of the Rust engine, with the array work on an array namespace (NumPy or CuPy).

Same algorithm, same tie rules, same seeds: Ward initialisation when K >= N/2 and N <= WARD_MAX_N
(else seeded k-means++), then Lloyd steps in which a unit moves only when its exact distance to
the proposed centroid is strictly smaller, and empty clusters take the farthest unit of a cluster
with >= 2 members. The distance matrices, GEMMs, reductions and centroid updates run on the
namespace (the GPU with CuPy); the sequential host steps are the Rust engine's own functions:
Ward's merge loop (:func:`~clusterprune.engine.rust.ward_merge`, fed the device-computed cost
matrix) and the k-means++ draws (:class:`~clusterprune.engine.rust.PlusPlusSampler`, fed the
device-computed distances). With NumPy it runs (and is tested) on any machine.

Floating-point order differs from the Rust engine (f64 GEMM here, f32 GEMM there), so where two
candidate merges or centroids tie to rounding the assignments may differ; the inertia then agrees
to ~1e-4 relative or better (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._core import segment_sum as _segment_sum
from ..errors import DeviceUnavailableError, InvalidArgumentError, NonFiniteError
from .rust import INITS, KMeansResult, PlusPlusSampler, check_k, check_seed, resolved_init, ward_merge

WARD_EXACT_N = 128  # the engine's ROW_BLOCK: up to this many units Ward's costs are exact f64

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
    _probe(cupy)
    return cupy


_PROBED: set[int] = set()


def _probe(cupy: Any) -> None:
    """Compiles a kernel (NVRTC) and runs a GEMM (cuBLAS) once per process, so that a missing
    library is a one-line error before any work, not a raw CuPy error mid-compress."""
    device = int(cupy.cuda.runtime.getDevice())
    if device in _PROBED:
        return
    try:
        a = cupy.arange(8, dtype=cupy.float32).reshape(2, 4)
        doubled = cupy.ElementwiseKernel("float32 x", "float32 y", "y = x * 2", "clusterprune_probe")(a)
        float((doubled @ a.T).sum())
    except Exception as exc:  # NVRTC / cuBLAS missing or broken
        raise DeviceUnavailableError(
            f"--device cuda: CuPy cannot compile a kernel or run a GEMM here ({type(exc).__name__}: {exc})"
        ) from None
    _PROBED.add(device)


def to_host(xp: Any, a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") and xp is not np else np.asarray(a)


def _sq_dist_rows(xp: Any, x: Any, c: Any) -> Any:
    """Exact f64 squared distances between matching rows of x and c."""
    diff = x.astype(xp.float64) - c.astype(xp.float64)
    return (diff * diff).sum(axis=1)


def segment_sum(xp: Any, labels: Any, x: Any, k: int) -> Any:
    """(k, d) float64 sums of the rows of ``x`` per label, in a fixed order: NumPy adds in row
    order; on a GPU a one-hot matrix product replaces atomic scatter-adds (whose order, and so
    whose last bit, changes from run to run)."""
    if xp is np:  # the Rust engine's loop: the same numbers as np.add.at, without its per-element cost
        return _segment_sum(np.ascontiguousarray(labels, dtype=np.int64), np.ascontiguousarray(x, dtype=np.float64), k)
    return onehot_sum(xp, labels, x, k)


def onehot_sum(xp: Any, labels: Any, x: Any, k: int) -> Any:
    """segment_sum as (one-hot of the labels) @ x: deterministic on any device."""
    onehot = (labels[None, :] == xp.arange(k)[:, None]).astype(xp.float64)
    return onehot @ x.astype(xp.float64)


def _centroids(xp: Any, x: Any, labels: Any, k: int, old: Any | None) -> Any:
    sums = segment_sum(xp, labels, x.astype(xp.float64), k)
    counts = xp.bincount(labels, minlength=k).astype(xp.float64)
    means = (sums / xp.maximum(counts, 1)[:, None]).astype(xp.float32)
    if old is not None:
        means = xp.where((counts > 0)[:, None], means, old)
    return means


def _nearest(xp: Any, x: Any, c: Any) -> Any:
    """Candidate nearest centroid, as the engine computes it: an f32 GEMM for the dot products,
    f64 norms and score (the move itself is decided on exact f64 distances)."""
    cnorm = (c.astype(xp.float64) ** 2).sum(axis=1)
    dots = (x.astype(xp.float32) @ c.astype(xp.float32).T).astype(xp.float64)
    return xp.argmin(cnorm[None, :] - 2.0 * dots, axis=1)  # first minimum: lowest index on ties


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
    """k-means++ seeds: distances on the namespace, draws by the engine's sampler."""
    sampler = PlusPlusSampler(x.shape[0], seed)
    picks = [sampler.first]
    mind = to_host(xp, _sq_dist_rows(xp, x, x[picks[0]][None, :]))
    while len(picks) < k:
        nxt = sampler.next(np.ascontiguousarray(mind, dtype=np.float64))
        picks.append(nxt)
        mind = np.minimum(mind, to_host(xp, _sq_dist_rows(xp, x, x[nxt][None, :])))
    return x[xp.asarray(picks)]


def _ward(xp: Any, x: Any, k: int) -> np.ndarray:
    """Ward labels: the singleton merge costs on the namespace (as the engine computes them:
    f64 norms and an f32 GEMM for the dot products; exact f64 for few units), the merge loop in
    Rust."""
    x64 = x.astype(xp.float64)
    norms = (x64 * x64).sum(axis=1)
    exact = x.shape[0] <= WARD_EXACT_N
    dots = x64 @ x64.T if exact else (x.astype(xp.float32) @ x.astype(xp.float32).T).astype(xp.float64)
    d2 = xp.maximum(norms[:, None] + norms[None, :] - 2.0 * dots, 0.0)
    return ward_merge(to_host(xp, 0.5 * d2), k).astype(np.int64)


def kmeans_xp(
    units: Any, k: int, seed: int = 0, *, xp: Any = np, init: str = "auto", max_iter: int = 100
) -> KMeansResult:
    """k-means on the rows of ``units`` with array namespace ``xp`` (see the module docstring)."""
    host = isinstance(units, np.ndarray)  # converted to f32 before the upload: half the bytes
    x = xp.ascontiguousarray(xp.asarray(np.asarray(units, dtype=np.float32) if host else units), dtype=xp.float32)
    if x.ndim != 2:
        raise InvalidArgumentError(f"units must be a 2-D (N, d) matrix, got shape {x.shape}")
    n = x.shape[0]
    k, seed = check_k(k), check_seed(seed)
    if not 1 <= k <= n:
        raise InvalidArgumentError(f"K = {k} is outside [1, N = {n}]")
    bad = to_host(xp, ~xp.isfinite(x).all(axis=1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        col = int(np.flatnonzero(~np.isfinite(to_host(xp, x[row])))[0])
        raise NonFiniteError(f"non-finite value (NaN or Inf) in unit {row} at position {col}")
    if init not in INITS:
        raise InvalidArgumentError(f"unknown k-means init '{init}' (expected {', '.join(INITS)})")
    used = resolved_init(init, n, k)
    if k == n:
        return _result(np.arange(n), to_host(xp, x), [0.0], 0, True, used)
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
    return _result(assign, to_host(xp, cents), history, n_iter, converged, used)


def _result(
    assign: np.ndarray, cents: np.ndarray, history: list[float], n_iter: int, converged: bool, init: str
) -> KMeansResult:
    return KMeansResult(
        np.ascontiguousarray(assign, dtype=np.int64),
        np.ascontiguousarray(cents, dtype=np.float32),
        history[-1],
        history,
        n_iter,
        converged,
        init,
    )
