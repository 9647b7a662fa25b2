"""Typed front of the Rust engine (``clusterprune._core``): argument checks, conversions, and the
engine's constants (init names, Ward's size limit) for the rest of the package."""

from __future__ import annotations

import numbers

import numpy as np

from .._core import INIT_NAMES, PALETTE_BITS, PALETTE_METHODS, KMeansResult, PaletteResult, PlusPlusSampler
from .._core import MAX_THREADS as _MAX_THREADS
from .._core import WARD_MAX_N as _WARD_MAX_N
from .._core import cluster_column_means as _cluster_column_means
from .._core import cluster_means as _cluster_means
from .._core import kmeans as _kmeans
from .._core import pairwise_sums as _pairwise_sums
from .._core import pairwise_sums_16 as _pairwise_sums_16
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


def resolved_init(init: str, n: int, k: int) -> str:
    """The init a k-means run of K = ``k`` on ``n`` units really uses (``auto``: Ward's merges
    when K >= N/2 and N <= WARD_MAX_N, else k-means++), as its result reports it."""
    if init != "auto":
        return init
    return "ward" if n <= WARD_MAX_N and 2 * k >= n else "kmeans++"


def check_threads(num_threads: object) -> int | None:
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise InvalidArgumentError(f"threads must be an integer, got {num_threads!r}")
    if not 1 <= int(num_threads) <= MAX_THREADS:
        raise InvalidArgumentError(f"threads {num_threads} is outside [1, {MAX_THREADS}]")
    return int(num_threads)


def float64_sums(x: np.ndarray) -> tuple[float, float]:
    """The sum of ``x``'s values and of their squares in float64: bit for bit what
    ``b = x.astype(np.float64); (b.sum(), (b * b).sum())`` gives (NumPy adds the copy in its memory
    order, pairwise), without the float64 copy when ``x`` is a C- or Fortran-ordered float32 array."""
    if x.dtype == np.float32 and x.flags.aligned and x.flags.c_contiguous:
        return _pairwise_sums(x.reshape(-1))
    if x.dtype == np.float32 and x.flags.aligned and x.flags.f_contiguous:
        return _pairwise_sums(x.T.reshape(-1))  # x.T is C-ordered: its rows are x's memory order
    b = x.astype(np.float64, copy=False)
    return float(b.sum()), float((b * b).sum())


def half_sums(bits: np.ndarray, bf16: bool) -> tuple[float, float]:
    """:func:`float64_sums` of float16 (``bf16`` False) or bfloat16 values given as a vector of
    uint16 bit patterns, without converting them to an array first."""
    aligned = np.require(bits, dtype=np.uint16, requirements=["C", "A"])  # a copy when stored unaligned
    return _pairwise_sums_16(aligned.reshape(-1), bool(bf16))


def cluster_means(labels: np.ndarray, units: np.ndarray, k: int, *, divisions: int = 1) -> np.ndarray:
    """(N, w) float32: each unit's row replaced by its cluster's float64 sum (rows added in row
    order) divided by the cluster's size ``divisions`` times, rounded to float32; units labelled
    -1 get zeros. What folding a clustering and expanding it back to N units computes."""
    data = np.ascontiguousarray(units, dtype=np.float32)
    if data.ndim != 2 or len(labels) != data.shape[0]:
        raise InvalidArgumentError(f"{len(labels)} labels for a unit matrix of shape {data.shape}")
    return _cluster_means(np.ascontiguousarray(labels, dtype=np.int64), data, int(k), int(divisions))


def cluster_column_means(
    labels: np.ndarray, matrix: np.ndarray, unit_columns: int, k: int, *, divisions: int = 1
) -> np.ndarray:
    """:func:`cluster_means` for units stored as columns: ``matrix`` (rows, N * unit_columns),
    unit u owning columns u * unit_columns ... (u + 1) * unit_columns - 1; the same shape back."""
    data = np.ascontiguousarray(matrix, dtype=np.float32)
    if data.ndim != 2 or data.shape[1] != len(labels) * unit_columns:
        raise InvalidArgumentError(f"{len(labels)} units of {unit_columns} columns for a matrix of shape {data.shape}")
    labels64 = np.ascontiguousarray(labels, dtype=np.int64)
    return _cluster_column_means(labels64, data, int(unit_columns), int(k), int(divisions))


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


__all__ = [
    "INITS",
    "MAX_THREADS",
    "WARD_MAX_N",
    "KMeansResult",
    "PlusPlusSampler",
    "cluster_column_means",
    "cluster_means",
    "float64_sums",
    "half_sums",
    "kmeans",
    "resolved_init",
    "top_k",
]
