"""The Rust palettizer against simple references on fresh random rows (brute force, float64)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from clusterprune._core import kmeans_1d, palettize
from clusterprune.errors import InvalidArgumentError, NonFiniteError


def brute_force(values: np.ndarray, weights: np.ndarray, k: int) -> float:
    """The optimum over every labelling of the values (no contiguity assumed)."""
    best = np.inf
    for labels in itertools.product(range(k), repeat=values.size):
        lab = np.array(labels)
        cost = 0.0
        for c in range(k):
            m = lab == c
            if m.any():
                mean = np.sum(weights[m] * values[m]) / np.sum(weights[m])
                cost += float(np.sum(weights[m] * (values[m] - mean) ** 2))
        best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_exact_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(2, 8)), int(rng.integers(1, 4))
    values = rng.standard_normal(n)
    if seed % 3 == 0:
        values[-1] = values[0]  # a duplicate
    weights = rng.uniform(0.1, 2.0, n)
    _, exact = kmeans_1d(values, k, weights=weights, method="exact")
    assert exact == pytest.approx(brute_force(values, weights, k), rel=1e-10, abs=1e-12)
    for method in ("binned", "lloyd"):
        assert kmeans_1d(values, k, weights=weights, method=method)[1] >= exact - 1e-12


def test_k_equals_n_and_fewer_distinct_values():
    values = np.array([3.0, -1.0, 3.0, 0.25])
    c, cost = kmeans_1d(values, 4, method="exact")
    assert cost == 0.0 and c.tolist() == [-1.0, 0.25, 3.0, 3.0]
    c1, _ = kmeans_1d(values, 1, method="lloyd")
    assert c1[0] == pytest.approx(values.mean())


def reference_dequantize(r, rows: int, cols: int, group_rows: int) -> np.ndarray:
    g = np.arange(rows) // group_rows
    out = r.luts[g[:, None], r.indices.astype(int)].astype(np.float64)
    if r.scales is not None:
        out *= r.scales[:, None]
    return out


@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("group_rows", [1, 4, 12])
def test_nearest_entries_and_error_on_stored_values(storage, group_rows):
    rng = np.random.default_rng(group_rows)
    w = rng.standard_normal((12, 40)).astype(np.float32)
    w[3] = 0.0  # an all-zero row
    w[5] = 1.5  # a constant row
    if storage == "float16":
        w = w.astype(np.float16).astype(np.float32)
    lut_dtype = "bfloat16" if storage == "bfloat16" else "float16"
    cw = rng.uniform(0.5, 2.0, 40)
    r = palettize(w, 3, group_rows=group_rows, lut_dtype=lut_dtype, col_weights=cw)
    assert r.luts.shape == (12 // group_rows, 8) and r.indices.shape == (12, 40)
    assert np.all(np.diff(r.luts, axis=1) >= 0)
    deq = reference_dequantize(r, 12, 40, group_rows)
    g = np.arange(12) // group_rows
    best = np.min(np.abs(r.luts[g][:, :, None].astype(np.float64) - w[:, None, :]), axis=1)
    np.testing.assert_allclose(np.abs(deq - w), best, rtol=0, atol=1e-7)
    wsse = [(cw[None, :] * (deq - w) ** 2)[g == i].sum() for i in range(12 // group_rows)]
    np.testing.assert_allclose(r.wsse, wsse, rtol=1e-9, atol=1e-12)
    if group_rows == 1:
        assert np.all(deq[3] == 0) and np.all(deq[5] == 1.5)


def test_outliers_scales_threads_and_bad_input():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    a = palettize(w, 2, outlier_fraction=0.05, row_scale=True, method="binned", num_threads=1)
    b = palettize(w, 2, outlier_fraction=0.05, row_scale=True, method="binned", num_threads=3)
    for f in ("luts", "scales", "indices", "outliers", "wsse"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert a.outliers.size == 16 * 3  # round(0.05 * 64) per row
    top = np.argsort(-np.abs(w), axis=1, kind="stable")[:, :3]
    assert set(a.outliers.tolist()) == {r * 64 + c for r in range(16) for c in top[r]}
    with pytest.raises(InvalidArgumentError, match="does not divide"):
        palettize(w, 2, group_rows=5)
    with pytest.raises(InvalidArgumentError, match="bits 9"):
        palettize(w, 9)
    w[2, 7] = np.nan
    with pytest.raises(NonFiniteError, match="unit 2 at position 7"):
        palettize(w, 2)
