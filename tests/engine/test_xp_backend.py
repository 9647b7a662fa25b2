"""The GPU code path (array-namespace k-means, fusion and folding) run with NumPy on the CPU and
checked against the Rust engine; real-GPU checks skip without CuPy and a CUDA device."""

from __future__ import annotations

import numpy as np
import pytest

import clusterprune
from clusterprune import cli
from clusterprune.engine.xp import kmeans_xp, namespace
from clusterprune.errors import DeviceUnavailableError, NonFiniteError


def _gpu_available() -> bool:
    try:
        namespace("cuda")
        return True
    except DeviceUnavailableError:
        return False


CASES = [
    (300, 9, 7, "kmeans++"),
    (300, 9, 40, "auto"),
    (300, 9, 250, "auto"),
    (200, 33, 100, "ward"),
    (20, 4000, 16, "auto"),
]


@pytest.mark.parametrize("n,d,k,init", CASES)
@pytest.mark.parametrize("seed", [0, 5])
def test_numpy_path_agrees_with_the_rust_engine(n, d, k, init, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    a = clusterprune.kmeans(x, k, seed, init=init)
    b = kmeans_xp(x, k, seed, init=init)
    assert a.init == b.init
    assert abs(a.inertia - b.inertia) <= 1e-4 * a.inertia
    assert np.array_equal(a.assignments, b.assignments)
    assert all(y <= x_ for x_, y in zip(b.inertia_history, b.inertia_history[1:], strict=False))


def test_awkward_inputs_on_the_numpy_path():
    x = np.zeros((12, 5), dtype=np.float32)
    x[6:] = 1.0
    x[-1] = 3.0
    for k in (1, 2, 3, 5, 11, 12):
        r = kmeans_xp(x, k, 0)
        assert len(np.unique(r.assignments)) == k
        assert r.inertia == pytest.approx(clusterprune.kmeans(x, k, 0).inertia, abs=1e-12)
    x[3, 2] = np.inf
    with pytest.raises(NonFiniteError, match="unit 3 at position 2"):
        kmeans_xp(x, 2, 0)


def test_kmeanspp_draws_follow_the_engine_stream():
    # with max_iter=0 the result is the k-means++ seeding itself: equal assignments for every seed
    # mean the namespace path (its distances fed to the engine's sampler) draws the engine's units
    x = np.random.default_rng(1).normal(size=(60, 4)).astype(np.float32)
    inertias = set()
    for seed in range(6):
        a = clusterprune.kmeans(x, 5, seed, init="kmeans++", max_iter=0)
        b = kmeans_xp(x, 5, seed, init="kmeans++", max_iter=0)
        assert np.array_equal(a.assignments, b.assignments)
        assert a.inertia == pytest.approx(b.inertia, rel=1e-12)
        inertias.add(round(a.inertia, 6))
    assert len(inertias) > 1, "different seeds should give different seedings"


def test_ward_on_the_numpy_path_is_the_engines_merge_loop():
    # K >= N/2 selects Ward: the namespace computes the cost matrix, the engine merges
    x = np.random.default_rng(2).normal(size=(40, 6)).astype(np.float32)
    for k in (20, 30, 39):
        a = clusterprune.kmeans(x, k, 0, init="ward", max_iter=0)
        b = kmeans_xp(x, k, 0, init="ward", max_iter=0)
        assert a.init == b.init == "ward"
        assert np.array_equal(a.assignments, b.assignments)


def test_compress_on_the_numpy_path_matches_the_cpu_engine(checkpoints, tmp_path):
    from clusterprune.io.checkpoint import Checkpoint

    src = checkpoints["hubert"]
    clusterprune.compress(src, tmp_path / "cpu", sparsity=0.3, export="folded", recipe="paper")
    report = clusterprune.compress(src, tmp_path / "xp", sparsity=0.3, export="folded", device="numpy", recipe="paper")
    assert report.to_dict()["device"] == "numpy"
    with Checkpoint(tmp_path / "cpu") as a, Checkpoint(tmp_path / "xp") as b:
        for name in a.names():
            np.testing.assert_allclose(a.f32(name), b.f32(name), rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.skipif(_gpu_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_a_clear_error(checkpoints, tmp_path, capsys):
    code = cli.main(["compress", str(checkpoints["whisper"]), str(tmp_path / "o"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 1 and "--device cuda" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not _gpu_available(), reason="needs CuPy and a CUDA device")
def test_cupy_agrees_with_the_rust_engine():  # pragma: no cover - runs on GPU machines only
    cupy = namespace("cuda")
    rng = np.random.default_rng(0)
    for n, d, k, init in CASES:
        x = rng.normal(size=(n, d)).astype(np.float32)
        a = clusterprune.kmeans(x, k, 0, init=init)
        b = kmeans_xp(x, k, 0, init=init, xp=cupy)
        assert abs(a.inertia - b.inertia) <= 1e-4 * a.inertia


def test_the_gpu_segment_sum_is_a_fixed_order_product_that_matches_the_reference():
    from clusterprune.engine.xp import onehot_sum, segment_sum

    rng = np.random.default_rng(5)
    for n, d, k in ((1, 3, 1), (50, 7, 9), (200, 4, 200)):
        labels = rng.integers(0, k, size=n)
        x = rng.normal(size=(n, d))
        ref = np.zeros((k, d))
        for i, lab in enumerate(labels):  # the float64 reference, row by row
            ref[lab] += x[i]
        np.testing.assert_allclose(onehot_sum(np, labels, x, k), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(segment_sum(np, labels, x, k), ref)
        ints = rng.integers(-50, 50, size=(n, d)).astype(np.float64)  # exact: any summation order agrees
        assert np.array_equal(onehot_sum(np, labels, ints, k), segment_sum(np, labels, ints, k))
        assert np.array_equal(onehot_sum(np, labels, x, k), onehot_sum(np, labels, x, k))
