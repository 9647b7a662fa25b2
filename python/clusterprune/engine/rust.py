"""Typed front of the Rust engine (``clusterprune._core``): argument checks, conversions, and the
engine's constants (init names, Ward's size limit) for the rest of the package."""

from __future__ import annotations

import numbers

import numpy as np

from .._core import INIT_NAMES, PALETTE_BITS, PALETTE_METHODS, KMeansResult, PaletteResult, PlusPlusSampler
from .._core import MAX_THREADS as _MAX_THREADS
from .._core import WARD_MAX_N as _WARD_MAX_N
from .._core import kmeans as _kmeans
from .._core import palettize as _palettize
from .._core import top_k as _top_k
from .._core import uniform_plan as _uniform_plan
from .._core import variance_plan as _variance_plan
from .._core import ward_merge as _ward_merge
from ..errors import InvalidArgumentError

INITS: tuple[str, ...] = tuple(INIT_NAMES)
BITS: tuple[int, ...] = tuple(PALETTE_BITS)
PALETTE_SOLVERS: tuple[str, ...] = tuple(PALETTE_METHODS)
WARD_MAX_N: int = _WARD_MAX_N
MAX_THREADS: int = _MAX_THREADS


def check_k(k: object) -> int:
    """K as a Python int (numpy integers accepted), or a one-line error naming the type."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InvalidArgumentError(f"K must be an integer, got {k!r} ({type(k).__name__})")
    return int(k)


def check_seed(seed: object) -> int:
    """A seed in [0, 2^64) as a Python int."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InvalidArgumentError(f"seed must be an integer, got {seed!r} ({type(seed).__name__})")
    if not 0 <= int(seed) < 2**64:
        raise InvalidArgumentError(f"seed {seed} is outside [0, 2^64)")
    return int(seed)


def check_threads(num_threads: object) -> int | None:
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise InvalidArgumentError(f"threads must be an integer, got {num_threads!r}")
    if not 1 <= int(num_threads) <= MAX_THREADS:
        raise InvalidArgumentError(f"threads {num_threads} is outside [1, {MAX_THREADS}]")
    return int(num_threads)


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
    data = np.ascontiguousarray(arr, dtype=np.float32)
    return _kmeans(
        data,
        check_k(k),
        seed=check_seed(seed),
        max_iter=int(max_iter),
        tol=float(tol),
        init=init,
        num_threads=check_threads(num_threads),
    )


def palettize_rows(
    values: np.ndarray,
    bits: int,
    *,
    group_rows: int = 1,
    method: str = "exact",
    max_iter: int = 100,
    lut_dtype: str = "float16",
    row_scale: bool = False,
    outlier_fraction: float = 0.0,
    col_weights: np.ndarray | None = None,
    num_threads: int | None = None,
) -> PaletteResult:
    """Palettizes the rows of a (rows, cols) matrix (computed in float32): 2^bits table entries
    per group of ``group_rows`` rows. Deterministic whatever ``num_threads``."""
    arr = np.asarray(values)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise InvalidArgumentError(f"palettize needs a 2-D floating matrix, got {arr.dtype} {arr.shape}")
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise InvalidArgumentError(f"bits must be an integer, got {bits!r}")
    weights = None if col_weights is None else np.ascontiguousarray(col_weights, dtype=np.float64)
    return _palettize(
        np.ascontiguousarray(arr, dtype=np.float32),
        int(bits),
        group_rows=int(group_rows),
        method=method,
        max_iter=int(max_iter),
        lut_dtype=lut_dtype,
        row_scale=bool(row_scale),
        outlier_fraction=float(outlier_fraction),
        col_weights=weights,
        num_threads=check_threads(num_threads),
    )


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Ascending indices of the ``k`` largest scores (ties keep the lower index)."""
    return _top_k(np.ascontiguousarray(scores, dtype=np.float64), check_k(k))


def uniform_plan(units: list[int], sparsity: float) -> list[int]:
    """K = round(N (1 - s)) per module."""
    return _uniform_plan(units, float(sparsity))


def variance_plan(
    units: list[int], variances: list[float], groups: list[int], sparsity: float, factor: float
) -> list[int]:
    """The paper's variance-mixed plan (terciles by variance within each group)."""
    return _variance_plan(units, variances, groups, float(sparsity), float(factor))


def ward_merge(costs: np.ndarray, k: int) -> np.ndarray:
    """Ward labels from an (N, N) matrix of singleton merge costs 0.5 |x_i - x_j|^2."""
    return _ward_merge(np.ascontiguousarray(costs, dtype=np.float64), check_k(k))


__all__ = ["INITS", "MAX_THREADS", "WARD_MAX_N", "KMeansResult", "PlusPlusSampler", "kmeans", "top_k"]
