"""The Rust engine through its Python API, checked against float64 numpy / brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import clusterprune
from clusterprune import _core
from clusterprune.engine.rust import float64_sums, half_sums
from clusterprune.errors import InvalidArgumentError, NonFiniteError


def reference_inertia(x: np.ndarray, labels: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(sum(((x[labels == c] - x[labels == c].mean(axis=0)) ** 2).sum() for c in np.unique(labels)))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("init", ["kmeans++", "ward"])
def test_inertia_matches_float64_reference_and_is_monotone(seed, init):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 12)).astype(np.float32)
    r = clusterprune.kmeans(x, 30 if init == "kmeans++" else 150, seed, init=init)
    assert r.init == init
    assert r.inertia == pytest.approx(reference_inertia(x, r.assignments), rel=1e-9)
    assert all(b <= a for a, b in itertools.pairwise(r.inertia_history))
    assert len(np.unique(r.assignments)) == r.centroids.shape[0]
    for c in range(r.centroids.shape[0]):
        np.testing.assert_allclose(
            r.centroids[c], x[r.assignments == c].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6
        )


def test_matches_brute_force_on_tiny_inputs():
    rng = np.random.default_rng(3)
    for _ in range(5):
        centers = rng.normal(scale=10, size=(3, 2))
        x = (centers[rng.integers(0, 3, 7)] + rng.normal(scale=0.1, size=(7, 2))).astype(np.float32)
        k = len(np.unique(np.round(x / 5)))  # well separated: number of blobs present
        best = min(
            reference_inertia(x, np.array(lab)) for lab in itertools.product(range(k), repeat=7) if len(set(lab)) == k
        )
        assert clusterprune.kmeans(x, k, 0).inertia == pytest.approx(best, rel=1e-6)


def test_thread_count_and_seed_determinism():
    x = np.random.default_rng(1).normal(size=(600, 40)).astype(np.float32)
    for k in (40, 500):
        ref = clusterprune.kmeans(x, k, 7, num_threads=1)
        for threads in (2, 4):
            r = clusterprune.kmeans(x, k, 7, num_threads=threads)
            assert r.assignments.tobytes() == ref.assignments.tobytes()
            assert r.centroids.tobytes() == ref.centroids.tobytes()
            assert r.inertia == ref.inertia


def test_awkward_inputs_duplicates_zeros_k1_kn():
    x = np.zeros((12, 5), dtype=np.float32)
    x[6:] = 1.0
    x[-1] = 3.0
    for k in (1, 2, 3, 5, 11, 12):
        r = clusterprune.kmeans(x, k, 0)
        assert len(np.unique(r.assignments)) == k
    r = clusterprune.kmeans(x, 1, 0)
    np.testing.assert_allclose(r.centroids[0], x.mean(0), rtol=1e-6)
    r = clusterprune.kmeans(x, 12, 0)
    assert r.inertia == 0.0 and np.array_equal(r.centroids, x)


def test_half_precision_input_is_computed_in_float32():
    x = np.random.default_rng(2).normal(size=(64, 8)).astype(np.float16)
    r16 = clusterprune.kmeans(x, 8, 1)
    r32 = clusterprune.kmeans(x.astype(np.float32), 8, 1)
    assert np.array_equal(r16.assignments, r32.assignments)


def test_bad_arguments():
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match=r"K = 0 is outside \[1, N = 4\]"):
        clusterprune.kmeans(x, 0)
    with pytest.raises(ValueError):
        clusterprune.kmeans(x, 5)
    with pytest.raises(InvalidArgumentError, match="2-D"):
        clusterprune.kmeans(np.ones(3), 1)
    x[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match="unit 2 at position 1"):
        clusterprune.kmeans(x, 2)
    with pytest.raises(InvalidArgumentError, match="unknown k-means init"):
        clusterprune.kmeans(np.ones((4, 3), dtype=np.float32), 2, init="random")
    # finite but too long for the f32 distance products: refused, naming the unit
    long = np.ones((200, 3), dtype=np.float32)
    long[150, 0] = 1e19
    with pytest.raises(InvalidArgumentError, match=r"unit 150 has squared norm 1\.000e38"):
        clusterprune.kmeans(long, 150)


def test_bf16_and_f16_conversions_match_numpy_reference():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(scale=s, size=2000) for s in (1e-3, 1.0, 1e4)]).astype(np.float32)
    x = np.concatenate([x, np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 1e6], dtype=np.float32)])
    with np.errstate(over="ignore"):
        half = x.astype(np.float16)
    np.testing.assert_array_equal(_core.f32_to_f16(x).view(np.float16), half)
    np.testing.assert_array_equal(_core.f16_to_f32(half.view(np.uint16)), half.astype(np.float32))
    # bf16 reference: round to nearest even on the upper 16 bits
    u = x.view(np.uint32).astype(np.uint64)
    ref = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(_core.f32_to_bf16(x), ref)
    back = _core.bf16_to_f32(ref)
    np.testing.assert_array_equal(back, (ref.astype(np.uint32) << 16).view(np.float32))
    assert np.isnan(_core.bf16_to_f32(_core.f32_to_bf16(np.array([np.nan], dtype=np.float32))))[0]


def test_top_k_matches_argsort_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 5, size=30).astype(np.float64)  # many ties
        k = int(rng.integers(1, 31))
        ref = np.sort(np.lexsort((np.arange(30), -s))[:k])
        assert np.array_equal(clusterprune.top_k(s, k), ref)


def test_allocators_against_python_reference():
    rng = np.random.default_rng(4)
    for s in (0.02, 0.1, 0.3, 0.5):
        units = [int(u) for u in rng.choice([6, 20, 1536], size=9)]
        base = _core.uniform_plan(units, s)
        assert base == [min(max(round(n * (1 - s)), 1), n) for n in units]
        var = [float(v) for v in rng.random(9)]
        groups = [0] * 9
        plan = _core.variance_plan(units, var, groups, s, 1.2)
        assert sum(plan) == sum(base)
        order = np.argsort(var, kind="stable")
        low_exhausted = all(plan[j] == 1 for r, j in enumerate(order) if 3 * r // 9 == 0)
        for rank, i in enumerate(order):
            if 3 * rank // 9 == 2:
                gain = min(units[i], int(np.floor(1.2 * base[i])))
                assert plan[i] == gain or (low_exhausted and base[i] <= plan[i] < gain)
            if 3 * rank // 9 == 1:  # mid third only gives when the low third reached K = 1
                assert plan[i] == base[i] or (low_exhausted and plan[i] < base[i])
    with pytest.raises(InvalidArgumentError, match=r"sparsity 1 is outside \[0, 1\)"):
        _core.uniform_plan([4], 1.0)


def test_kmeans_beats_or_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.cluster")
    x = np.random.default_rng(9).normal(size=(400, 30)).astype(np.float32)
    for k in (20, 360):
        ours = clusterprune.kmeans(x, k, 0).inertia
        theirs = sklearn.KMeans(k, n_init=1, random_state=0).fit(x).inertia_
        assert ours <= theirs * 1.01


def test_float64_sums_are_numpys_float64_sums_bit_for_bit():
    """The sum and the sum of squares of a float32 array as NumPy adds its float64 copy (pairwise,
    in memory order), for C- and Fortran-ordered arrays, strided views, float64 input, sizes
    around the pairwise block, negative zeros and values of wide magnitude."""
    rng = np.random.default_rng(5)
    shapes = [(0,), (1,), (7,), (8,), (128,), (129,), (5, 300), (300, 77), (64, 1030), (3, 4, 5), (70_001,)]
    differs_from_a_plain_sum = False
    for shape in shapes:
        x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 5, shape)).astype(np.float32)
        x.reshape(-1)[::11] = -0.0
        for view in (x, x.T, np.asfortranarray(x), x[..., ::2], x.astype(np.float64)):
            b = view.astype(np.float64)
            want = (float(b.sum()).hex(), float((b * b).sum()).hex())
            got = float64_sums(view)
            assert (got[0].hex(), got[1].hex()) == want, (shape, view.flags)
            if b.size:  # np.cumsum adds one value after the other
                differs_from_a_plain_sum |= float(np.cumsum(b.reshape(-1))[-1]).hex() != want[0]
    assert differs_from_a_plain_sum  # the data tell a pairwise sum from a sequential one


def test_half_sums_are_numpys_float64_sums_of_the_values_bit_for_bit():
    """float16 and bfloat16 bit patterns of every exponent, subnormals to the largest (their
    squares span more bits than a float64 holds), against NumPy's sums of the converted values."""
    rng = np.random.default_rng(8)
    for n in (1, 100, 129, 5000, 70_001):
        for bf16, exponent in ((False, 0x7C00), (True, 0x7F80)):
            bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
            top = np.uint16(exponent & -exponent)  # the exponent's lowest bit: cleared, Inf and NaN become finite
            bits = np.where((bits & exponent) == exponent, bits & ~top, bits).astype(np.uint16)
            values = _core.bf16_to_f32(bits) if bf16 else bits.view(np.float16)
            b = np.asarray(values, dtype=np.float64)
            want = (float(b.sum()).hex(), float((b * b).sum()).hex())
            got = half_sums(bits, bf16)
            assert (got[0].hex(), got[1].hex()) == want, (n, bf16)
