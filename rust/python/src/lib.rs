//! PyO3 binding of clusterprune-core. It only converts: numpy buffers in and out, core errors to
//! the exception classes of `clusterprune.errors`, and it releases the GIL around heavy work.

use clusterprune_core::{allocate, dtype, kmeans as km, select, CoreError};
use numpy::{
    IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// Raises the `clusterprune.errors` class that matches a core error.
fn to_py_err(py: Python<'_>, err: CoreError) -> PyErr {
    let class = match err {
        CoreError::InvalidArgument(_) => "InvalidArgumentError",
        CoreError::NonFinite { .. } => "NonFiniteError",
    };
    let msg = err.to_string();
    match py
        .import("clusterprune.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1((msg.clone(),)))
    {
        Ok(instance) => PyErr::from_value(instance),
        Err(_) => PyRuntimeError::new_err(msg),
    }
}

/// Runs `f` without the GIL, on a private pool of `threads` threads when given.
fn run_detached<T: Send>(
    py: Python<'_>,
    threads: Option<usize>,
    f: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    match threads {
        None => Ok(py.detach(f)),
        Some(t) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t.max(1))
                .build()
                .map_err(|e| PyRuntimeError::new_err(format!("cannot start {t} threads: {e}")))?;
            Ok(py.detach(|| pool.install(f)))
        }
    }
}

/// k-means on the rows of a C-contiguous float32 matrix. Returns (assignments, centroids,
/// inertia, inertia_history, n_iter, converged, init_used).
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
) -> PyResult<Bound<'py, PyTuple>> {
    let (n, d) = (units.shape()[0], units.shape()[1]);
    let data = units.as_slice()?;
    let cfg = km::KMeansConfig {
        k,
        max_iter,
        tol,
        seed,
        init: km::Init::parse(init).map_err(|e| to_py_err(py, e))?,
    };
    let result = run_detached(py, num_threads, || km::kmeans(data, n, d, &cfg))?
        .map_err(|e| to_py_err(py, e))?;
    let assignments: Vec<i64> = result.assignments.iter().map(|&a| a as i64).collect();
    let centroids = PyArray1::from_vec(py, result.centroids).reshape([k, d])?;
    (
        assignments.into_pyarray(py),
        centroids,
        result.inertia,
        result.inertia_history,
        result.n_iter,
        result.converged,
        result.init.name(),
    )
        .into_pyobject(py)
}

/// Ascending indices of the k largest scores (ties keep the lower index).
#[pyfunction]
fn top_k<'py>(
    py: Python<'py>,
    scores: PyReadonlyArray1<'py, f64>,
    k: usize,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let keep = select::top_k(scores.as_slice()?, k).map_err(|e| to_py_err(py, e))?;
    Ok(keep
        .into_iter()
        .map(|i| i as i64)
        .collect::<Vec<_>>()
        .into_pyarray(py))
}

/// K = round(N (1 - s)) per module.
#[pyfunction]
fn uniform_plan(py: Python<'_>, units: Vec<usize>, sparsity: f64) -> PyResult<Vec<usize>> {
    allocate::uniform(&units, sparsity).map_err(|e| to_py_err(py, e))
}

/// The paper's variance-mixed plan (terciles by variance within each group).
#[pyfunction]
fn variance_plan(
    py: Python<'_>,
    units: Vec<usize>,
    variances: Vec<f64>,
    groups: Vec<usize>,
    sparsity: f64,
    factor: f64,
) -> PyResult<Vec<usize>> {
    allocate::variance(&units, &variances, &groups, sparsity, factor).map_err(|e| to_py_err(py, e))
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

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kmeans, m)?)?;
    m.add_function(wrap_pyfunction!(top_k, m)?)?;
    m.add_function(wrap_pyfunction!(uniform_plan, m)?)?;
    m.add_function(wrap_pyfunction!(variance_plan, m)?)?;
    m.add_function(wrap_pyfunction!(f16_to_f32, m)?)?;
    m.add_function(wrap_pyfunction!(bf16_to_f32, m)?)?;
    m.add_function(wrap_pyfunction!(f32_to_f16, m)?)?;
    m.add_function(wrap_pyfunction!(f32_to_bf16, m)?)?;
    m.add("WARD_MAX_N", km::WARD_MAX_N)?;
    Ok(())
}
