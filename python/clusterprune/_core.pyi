"""Type stubs of the Rust extension (rust/python)."""

import numpy as np
import numpy.typing as npt

WARD_MAX_N: int
MAX_THREADS: int
INIT_NAMES: list[str]

class KMeansResult:
    assignments: npt.NDArray[np.int64]
    centroids: npt.NDArray[np.float32]
    inertia: float
    inertia_history: list[float]
    n_iter: int
    converged: bool
    init: str
    def __init__(
        self,
        assignments: npt.NDArray[np.int64],
        centroids: npt.NDArray[np.float32],
        inertia: float,
        inertia_history: list[float],
        n_iter: int,
        converged: bool,
        init: str,
    ) -> None: ...

class PlusPlusSampler:
    first: int
    def __init__(self, n: int, seed: int) -> None: ...
    def next(self, mind: npt.NDArray[np.float64]) -> int: ...

def kmeans(
    units: npt.NDArray[np.float32],
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 0.0,
    init: str = "auto",
    num_threads: int | None = None,
) -> KMeansResult: ...
def ward_merge(costs: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.int64]: ...
def top_k(scores: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.int64]: ...
def uniform_plan(units: list[int], sparsity: float) -> list[int]: ...
def variance_plan(
    units: list[int], variances: list[float], groups: list[int], sparsity: float, factor: float
) -> list[int]: ...
def f16_to_f32(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]: ...
def bf16_to_f32(bits: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]: ...
def first_non_finite_16(bits: npt.NDArray[np.uint16], bf16: bool) -> int | None: ...
def f32_to_f16(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]: ...
def f32_to_bf16(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]: ...
def pack_indices(indices: npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.uint8]: ...
def unpack_indices(packed: npt.NDArray[np.uint8], bits: int, count: int) -> npt.NDArray[np.uint8]: ...
def segment_sum(labels: npt.NDArray[np.int64], x: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.float64]: ...
def cluster_means(
    labels: npt.NDArray[np.int64], x: npt.NDArray[np.float32], k: int, divisions: int
) -> npt.NDArray[np.float32]: ...
def cluster_column_means(
    labels: npt.NDArray[np.int64], x: npt.NDArray[np.float32], r: int, k: int, divisions: int
) -> npt.NDArray[np.float32]: ...
def pairwise_sums(x: npt.NDArray[np.float32]) -> tuple[float, float]: ...
def pairwise_sums_16(bits: npt.NDArray[np.uint16], bf16: bool) -> tuple[float, float]: ...

PALETTE_BITS: list[int]
PALETTE_METHODS: list[str]

class PaletteResult:
    luts: npt.NDArray[np.float32]
    scales: npt.NDArray[np.float32] | None
    indices: npt.NDArray[np.uint8]
    outliers: npt.NDArray[np.int64]
    wsse: npt.NDArray[np.float64]

def palettize(
    data: npt.NDArray[np.float32],
    bits: int,
    *,
    group_rows: int = 1,
    method: str = "lloyd",
    max_iter: int = 100,
    lut_dtype: str = "float16",
    row_scale: bool = False,
    outlier_fraction: float = 0.0,
    col_weights: npt.NDArray[np.float64] | None = None,
    row_weights: npt.NDArray[np.float64] | None = None,
    num_threads: int | None = None,
) -> PaletteResult: ...
def kmeans_1d(
    values: npt.NDArray[np.float64],
    k: int,
    *,
    weights: npt.NDArray[np.float64] | None = None,
    method: str = "exact",
    max_iter: int = 100,
) -> tuple[npt.NDArray[np.float64], float]: ...
