//! PyO3 binding of clusterprune-core. It only converts: numpy buffers in and out, core errors to
//! the exception classes of `clusterprune.errors` (looked up once), results to frozen classes;
//! it releases the GIL around heavy work and keeps one rayon pool per requested thread count.

use clusterprune_core::{
    allocate, bitpack, dtype, kmeans as km, palette as pal, segment, select, sums, CoreError,
};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArray1,
    PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

// The exception classes of `clusterprune.errors`, imported once (on first use) and cached.
pyo3::import_exception!(clusterprune.errors, InvalidArgumentError);
pyo3::import_exception!(clusterprune.errors, NonFiniteError);

/// The `clusterprune.errors` exception that matches a core error.
fn to_py_err(err: CoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        CoreError::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
        CoreError::NonFinite { .. } => NonFiniteError::new_err(msg),
    }
}

/// The most worker threads one call may ask for: more than this only costs memory.
const MAX_THREADS: usize = 1024;

/// One rayon pool per thread count, built on first use and kept for the process's lifetime, so
/// a run that calls the engine per module builds its pool once.
fn pool(threads: usize) -> PyResult<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    if threads == 0 || threads > MAX_THREADS {
        return Err(InvalidArgumentError::new_err(format!(
            "num_threads {threads} is outside [1, {MAX_THREADS}]"
        )));
    }
    let mut pools = POOLS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| PyRuntimeError::new_err("the thread-pool cache is poisoned"))?;
    if let Some(p) = pools.get(&threads) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map(Arc::new)
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start {threads} threads: {e}")))?;
    pools.insert(threads, p.clone());
    Ok(p)
}

/// Runs `f` without the GIL, on the pool of `threads` threads when given.
fn run_detached<T: Send>(
    py: Python<'_>,
    threads: Option<usize>,
    f: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    match threads {
        None => Ok(py.detach(f)),
        Some(t) => {
            let p = pool(t)?;
            Ok(py.detach(|| p.install(f)))
        }
    }
}

/// The outcome of one k-means run (frozen). Built by the engine; the array-namespace backend
/// builds the same class.
#[pyclass(frozen, get_all, module = "clusterprune._core")]
struct KMeansResult {
    /// (N,) int64: the cluster of every unit
    assignments: Py<PyArray1<i64>>,
    /// (K, d) float32
    centroids: Py<PyArray2<f32>>,
    /// sum of squared distances to the assigned centroid (exact, f64)
    inertia: f64,
    /// after initialisation and after each Lloyd iteration
    inertia_history: Vec<f64>,
    n_iter: usize,
    converged: bool,
    /// the initialisation actually used
    init: String,
}

#[pymethods]
impl KMeansResult {
    #[new]
    #[pyo3(signature = (assignments, centroids, inertia, inertia_history, n_iter, converged, init))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        assignments: Py<PyArray1<i64>>,
        centroids: Py<PyArray2<f32>>,
        inertia: f64,
        inertia_history: Vec<f64>,
        n_iter: usize,
        converged: bool,
        init: String,
    ) -> Self {
        KMeansResult {
            assignments,
            centroids,
            inertia,
            inertia_history,
            n_iter,
            converged,
            init,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "KMeansResult(inertia={}, n_iter={}, converged={}, init={:?})",
            self.inertia, self.n_iter, self.converged, self.init
        )
    }
}

/// k-means on the rows of a C-contiguous float32 matrix.
#[pyfunction]
#[pyo3(signature = (units, k, *, seed=0, max_iter=100, tol=0.0, init="auto", num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn kmeans<'py>(
    py: Python<'py>,
    units: PyReadonlyArray2<'py, f32>,
    k: usize,
    seed: u64,
    max_iter: usize,
    tol: f64,
    init: &str,
    num_threads: Option<usize>,
) -> PyResult<KMeansResult> {
    let (n, d) = (units.shape()[0], units.shape()[1]);
    let data = units.as_slice()?;
    let cfg = km::KMeansConfig {
        k,
        max_iter,
        tol,
        seed,
        init: km::Init::parse(init).map_err(to_py_err)?,
    };
    let result =
        run_detached(py, num_threads, || km::kmeans(data, n, d, &cfg))?.map_err(to_py_err)?;
    let assignments: Vec<i64> = result.assignments.iter().map(|&a| a as i64).collect();
    Ok(KMeansResult {
        assignments: assignments.into_pyarray(py).unbind(),
        centroids: PyArray1::from_vec(py, result.centroids)
            .reshape([k, d])?
            .unbind(),
        inertia: result.inertia,
        inertia_history: result.inertia_history,
        n_iter: result.n_iter,
        converged: result.converged,
        init: result.init.name().to_string(),
    })
}

/// Ward agglomeration from a precomputed (N, N) float64 matrix of singleton merge costs
/// 0.5 |x_i - x_j|^2 (upper triangle read): cluster labels 0..K by first member.
#[pyfunction]
fn ward_merge<'py>(
    py: Python<'py>,
    costs: PyReadonlyArray2<'py, f64>,
    k: usize,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (n, m) = (costs.shape()[0], costs.shape()[1]);
    if n != m {
        return Err(InvalidArgumentError::new_err(format!(
            "Ward cost matrix must be square, got {n} x {m}"
        )));
    }
    let data = costs.as_slice()?.to_vec();
    let labels = py
        .detach(|| km::ward_merge(data, n, k))
        .map_err(to_py_err)?;
    Ok(labels
        .into_iter()
        .map(|l| l as i64)
        .collect::<Vec<_>>()
        .into_pyarray(py))
}

/// The host side of seeded k-means++ (the engine's random stream and D^2 draws).
#[pyclass(module = "clusterprune._core")]
struct PlusPlusSampler(km::PlusPlusSampler);

#[pymethods]
impl PlusPlusSampler {
    #[new]
    fn new(n: usize, seed: u64) -> PyResult<Self> {
        km::PlusPlusSampler::new(n, seed)
            .map(PlusPlusSampler)
            .map_err(to_py_err)
    }

    /// The first (uniformly drawn) unit.
    #[getter]
    fn first(&self) -> usize {
        self.0.first()
    }

    /// The next unit, drawn in proportion to `mind` (float64, one per unit).
    fn next(&mut self, mind: PyReadonlyArray1<'_, f64>) -> PyResult<usize> {
        self.0.next(mind.as_slice()?).map_err(to_py_err)
    }
}

/// A palettized matrix (frozen): tables, optional row scales, indices, exact outliers.
#[pyclass(frozen, get_all, module = "clusterprune._core")]
struct PaletteResult {
    /// (groups, 2^bits) float32, ascending per table, already rounded to the table dtype
    luts: Py<PyArray2<f32>>,
    /// (rows,) float32 row scales, or None
    scales: Option<Py<PyArray1<f32>>>,
    /// (rows, cols) uint8 table indices
    indices: Py<PyArray2<u8>>,
    /// (n,) int64 ascending flat positions of the values kept exactly
    outliers: Py<PyArray1<i64>>,
    /// (groups,) float64 weighted sum of squared errors per table
    wsse: Py<PyArray1<f64>>,
}

/// Palettizes the rows of a C-contiguous float32 matrix (see clusterprune-core `palette`).
#[pyfunction]
#[pyo3(signature = (data, bits, *, group_rows=1, method="lloyd", max_iter=100, lut_dtype="float16",
    row_scale=false, outlier_fraction=0.0, col_weights=None, row_weights=None, num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn palettize<'py>(
    py: Python<'py>,
    data: PyReadonlyArray2<'py, f32>,
    bits: u32,
    group_rows: usize,
    method: &str,
    max_iter: usize,
    lut_dtype: &str,
    row_scale: bool,
    outlier_fraction: f64,
    col_weights: Option<PyReadonlyArray1<'py, f64>>,
    row_weights: Option<PyReadonlyArray1<'py, f64>>,
    num_threads: Option<usize>,
) -> PyResult<PaletteResult> {
    let (rows, cols) = (data.shape()[0], data.shape()[1]);
    let spec = pal::PaletteSpec {
        bits,
        group_rows,
        method: pal::Method::parse(method).map_err(to_py_err)?,
        max_iter,
        lut_dtype: pal::LutDtype::parse(lut_dtype).map_err(to_py_err)?,
        row_scale,
        outlier_fraction,
    };
    let values = data.as_slice()?;
    let cw = match &col_weights {
        Some(w) => w.as_slice()?,
        None => &[],
    };
    let rw = match &row_weights {
        Some(w) => w.as_slice()?,
        None => &[],
    };
    let p = run_detached(py, num_threads, || {
        pal::palettize(values, rows, cols, cw, rw, &spec)
    })?
    .map_err(to_py_err)?;
    let groups = p.wsse.len();
    let outliers: Vec<i64> = p.outliers.iter().map(|&o| o as i64).collect();
    Ok(PaletteResult {
        luts: PyArray1::from_vec(py, p.luts)
            .reshape([groups, 1usize << bits])?
            .unbind(),
        scales: if row_scale {
            Some(PyArray1::from_vec(py, p.scales).unbind())
        } else {
            None
        },
        indices: PyArray1::from_vec(py, p.indices)
            .reshape([rows, cols])?
            .unbind(),
        outliers: outliers.into_pyarray(py).unbind(),
        wsse: p.wsse.into_pyarray(py).unbind(),
    })
}

/// Weighted 1-D k-means: (k centroids ascending, weighted sum of squares).
#[pyfunction]
#[pyo3(signature = (values, k, *, weights=None, method="exact", max_iter=100))]
fn kmeans_1d<'py>(
    py: Python<'py>,
    values: PyReadonlyArray1<'py, f64>,
    k: usize,
    weights: Option<PyReadonlyArray1<'py, f64>>,
    method: &str,
    max_iter: usize,
) -> PyResult<(Bound<'py, PyArray1<f64>>, f64)> {
    let m = pal::Method::parse(method).map_err(to_py_err)?;
    let w = match &weights {
        Some(w) => w.as_slice()?,
        None => &[],
    };
    let (c, cost) = pal::kmeans_1d(values.as_slice()?, w, k, m, max_iter).map_err(to_py_err)?;
    Ok((c.into_pyarray(py), cost))
}

/// Ascending indices of the k largest scores (ties keep the lower index).
#[pyfunction]
fn top_k<'py>(
    py: Python<'py>,
    scores: PyReadonlyArray1<'py, f64>,
    k: usize,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let keep = select::top_k(scores.as_slice()?, k).map_err(to_py_err)?;
    Ok(keep
        .into_iter()
        .map(|i| i as i64)
        .collect::<Vec<_>>()
        .into_pyarray(py))
}

/// K = round(N (1 - s)) per module.
#[pyfunction]
fn uniform_plan(units: Vec<usize>, sparsity: f64) -> PyResult<Vec<usize>> {
    allocate::uniform(&units, sparsity).map_err(to_py_err)
}

/// The paper's variance-mixed plan (terciles by variance within each group).
#[pyfunction]
fn variance_plan(
    units: Vec<usize>,
    variances: Vec<f64>,
    groups: Vec<usize>,
    sparsity: f64,
    factor: f64,
) -> PyResult<Vec<usize>> {
    allocate::variance(&units, &variances, &groups, sparsity, factor).map_err(to_py_err)
}

fn convert<'py, A: numpy::Element + Copy + Send + Sync, B: numpy::Element + Send>(
    py: Python<'py>,
    input: PyReadonlyArrayDyn<'py, A>,
    f: fn(&[A]) -> Vec<B>,
) -> PyResult<Bound<'py, PyArrayDyn<B>>> {
    let shape = input.shape().to_vec();
    let data = input.as_slice()?;
    let out = py.detach(|| f(data));
    PyArray1::from_vec(py, out).reshape(shape)
}

/// float16 bit patterns (uint16) to float32.
#[pyfunction]
fn f16_to_f32<'py>(
    py: Python<'py>,
    bits: PyReadonlyArrayDyn<'py, u16>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    convert(py, bits, dtype::f16_to_f32)
}

/// Index of the first infinite or NaN value of a vector of float16 (`bf16` false) or bfloat16
/// bit patterns, or None.
#[pyfunction]
fn first_non_finite_16(
    py: Python<'_>,
    bits: PyReadonlyArray1<'_, u16>,
    bf16: bool,
) -> PyResult<Option<usize>> {
    let data = bits.as_slice()?;
    let exponent = if bf16 {
        dtype::BF16_EXPONENT
    } else {
        dtype::F16_EXPONENT
    };
    Ok(py.detach(|| dtype::first_non_finite_16(data, exponent)))
}

/// bfloat16 bit patterns (uint16) to float32.
#[pyfunction]
fn bf16_to_f32<'py>(
    py: Python<'py>,
    bits: PyReadonlyArrayDyn<'py, u16>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    convert(py, bits, dtype::bf16_to_f32)
}

/// float32 to float16 bit patterns (round to nearest even).
#[pyfunction]
fn f32_to_f16<'py>(
    py: Python<'py>,
    values: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Bound<'py, PyArrayDyn<u16>>> {
    convert(py, values, dtype::f32_to_f16)
}

/// float32 to bfloat16 bit patterns (round to nearest even).
#[pyfunction]
fn f32_to_bf16<'py>(
    py: Python<'py>,
    values: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Bound<'py, PyArrayDyn<u16>>> {
    convert(py, values, dtype::f32_to_bf16)
}

/// uint8 table indices (each < 2^bits) packed into the little-endian bit stream.
#[pyfunction]
fn pack_indices<'py>(
    py: Python<'py>,
    indices: PyReadonlyArray1<'py, u8>,
    bits: u32,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let data = indices.as_slice()?;
    let out = py.detach(|| bitpack::pack(data, bits)).map_err(to_py_err)?;
    Ok(out.into_pyarray(py))
}

/// The first `count` indices of a packed bit stream (which must hold exactly their bytes).
#[pyfunction]
fn unpack_indices<'py>(
    py: Python<'py>,
    packed: PyReadonlyArray1<'py, u8>,
    bits: u32,
    count: usize,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let data = packed.as_slice()?;
    let out = py
        .detach(|| bitpack::unpack(data, bits, count))
        .map_err(to_py_err)?;
    Ok(out.into_pyarray(py))
}

/// (k, cols) float64 sums of the rows of `x` per label, each in row order.
#[pyfunction]
fn segment_sum<'py>(
    py: Python<'py>,
    labels: PyReadonlyArray1<'py, i64>,
    x: PyReadonlyArray2<'py, f64>,
    k: usize,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let cols = x.shape()[1];
    let (l, data) = (labels.as_slice()?, x.as_slice()?);
    let out = py
        .detach(|| segment::segment_sum(l, data, cols, k))
        .map_err(to_py_err)?;
    PyArray1::from_vec(py, out).reshape([k, cols])
}

/// (N, w) float32 same-shape means of a clustering (see `segment::cluster_means`).
#[pyfunction]
fn cluster_means<'py>(
    py: Python<'py>,
    labels: PyReadonlyArray1<'py, i64>,
    x: PyReadonlyArray2<'py, f32>,
    k: usize,
    divisions: u32,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (n, cols) = (x.shape()[0], x.shape()[1]);
    let (l, data) = (labels.as_slice()?, x.as_slice()?);
    let out = py
        .detach(|| segment::cluster_means(l, data, cols, k, divisions))
        .map_err(to_py_err)?;
    PyArray1::from_vec(py, out).reshape([n, cols])
}

/// Same-shape cluster means of units stored as columns (see `segment::cluster_column_means`).
#[pyfunction]
fn cluster_column_means<'py>(
    py: Python<'py>,
    labels: PyReadonlyArray1<'py, i64>,
    x: PyReadonlyArray2<'py, f32>,
    r: usize,
    k: usize,
    divisions: u32,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let (l, data) = (labels.as_slice()?, x.as_slice()?);
    let out = py
        .detach(|| segment::cluster_column_means(l, data, r, k, divisions))
        .map_err(to_py_err)?;
    PyArray1::from_vec(py, out).reshape([rows, cols])
}

/// (sum, sum of squares) of a float32 vector's values in float64, added in NumPy's order.
#[pyfunction]
fn pairwise_sums(py: Python<'_>, x: PyReadonlyArray1<'_, f32>) -> PyResult<(f64, f64)> {
    let data = x.as_slice()?;
    Ok(py.detach(|| sums::pairwise_sums(data)))
}

/// `pairwise_sums` of float16 (`bf16` false) or bfloat16 values given as uint16 bit patterns.
#[pyfunction]
fn pairwise_sums_16(
    py: Python<'_>,
    bits: PyReadonlyArray1<'_, u16>,
    bf16: bool,
) -> PyResult<(f64, f64)> {
    let data = bits.as_slice()?;
    Ok(py.detach(|| {
        if bf16 {
            sums::pairwise_sums_bf16(data)
        } else {
            sums::pairwise_sums_f16(data)
        }
    }))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kmeans, m)?)?;
    m.add_function(wrap_pyfunction!(ward_merge, m)?)?;
    m.add_class::<KMeansResult>()?;
    m.add_class::<PlusPlusSampler>()?;
    m.add("INIT_NAMES", km::INIT_NAMES.to_vec())?;
    m.add("MAX_THREADS", MAX_THREADS)?;
    m.add_function(wrap_pyfunction!(top_k, m)?)?;
    m.add_function(wrap_pyfunction!(palettize, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_1d, m)?)?;
    m.add_class::<PaletteResult>()?;
    m.add("PALETTE_BITS", pal::BITS.to_vec())?;
    m.add("PALETTE_METHODS", pal::METHOD_NAMES.to_vec())?;
    m.add_function(wrap_pyfunction!(uniform_plan, m)?)?;
    m.add_function(wrap_pyfunction!(variance_plan, m)?)?;
    m.add_function(wrap_pyfunction!(f16_to_f32, m)?)?;
    m.add_function(wrap_pyfunction!(bf16_to_f32, m)?)?;
    m.add_function(wrap_pyfunction!(first_non_finite_16, m)?)?;
    m.add_function(wrap_pyfunction!(f32_to_f16, m)?)?;
    m.add_function(wrap_pyfunction!(f32_to_bf16, m)?)?;
    m.add_function(wrap_pyfunction!(pack_indices, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_indices, m)?)?;
    m.add_function(wrap_pyfunction!(segment_sum, m)?)?;
    m.add_function(wrap_pyfunction!(cluster_means, m)?)?;
    m.add_function(wrap_pyfunction!(cluster_column_means, m)?)?;
    m.add_function(wrap_pyfunction!(pairwise_sums, m)?)?;
    m.add_function(wrap_pyfunction!(pairwise_sums_16, m)?)?;
    m.add("WARD_MAX_N", km::WARD_MAX_N)?;
    Ok(())
}
