"""The greedy removal's inverse when a covariance summed in float32 is indefinite beyond the ridge."""

from __future__ import annotations

import numpy as np

from clusterprune.recipes.obs import greedy_removal, inverse, ridged


def test_an_indefinite_covariance_gets_a_larger_ridge_and_finite_costs():
    rng = np.random.default_rng(0)
    n = 60
    x = rng.standard_normal((20, n))  # 20 positions for 60 neurons: rank 20
    cov = np.cov(x.T, bias=True)
    cov -= 1e-3 * np.trace(cov) / n * np.eye(n)  # float32 rounding's negative eigenvalues, exaggerated
    assert np.any(np.diag(np.linalg.inv(ridged(cov))) <= 0)
    p, scale = inverse(cov)
    assert scale > 1.0 and np.all(np.diag(p) > 0)
    removal = greedy_removal(cov, rng.standard_normal((n, 8)), n - 1)
    assert np.all(np.isfinite(removal.errors)) and len(set(removal.order.tolist())) == n - 1


def test_a_positive_definite_covariance_keeps_the_plain_ridge():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 30))
    cov = np.cov(x.T, bias=True)
    p, scale = inverse(cov)
    assert scale == 1.0
    np.testing.assert_array_equal(p, (np.linalg.inv(ridged(cov)) + np.linalg.inv(ridged(cov)).T) / 2)


def _reference(cov: np.ndarray, scale: float) -> np.ndarray:
    """The inverse as a whole-matrix expression: a ridged copy, inverted, symmetrised."""
    p = np.linalg.inv(ridged(cov, scale))
    return (p + p.T) / 2


def test_the_in_place_inverse_gives_the_reference_numbers_and_leaves_its_input_as_it_was():
    rng = np.random.default_rng()  # fresh inputs each run
    for n in (1, 2, 7, 300, 513):  # one neuron, a partial block of the symmetrisation, several blocks
        acts = rng.standard_normal((max(2 * n, 4), n))
        cases = [np.cov(acts.T, bias=True).reshape(n, n)]
        if n > 2:
            dup = acts.copy()
            dup[:, 1] = dup[:, 0]  # duplicated neurons: a singular covariance, only the ridge inverts it
            dup[:, 2] = 0.0  # a neuron that never fires
            cases.append(np.cov(dup.T, bias=True))
            signed = cases[0].copy()
            signed[0, 1] = signed[1, 0] = -0.0  # the reference's copy turns -0.0 into 0.0
            cases.append(signed)
            low = rng.standard_normal((n // 3 + 1, n))  # fewer positions than neurons, made indefinite
            indefinite = np.cov(low.T, bias=True)
            cases.append(indefinite - 1e-3 * np.trace(indefinite) / n * np.eye(n))
        for cov in cases:
            before = cov.copy()
            p, scale = inverse(cov)
            np.testing.assert_array_equal(p, _reference(before, scale))
            assert np.array_equal(p, p.T)
            np.testing.assert_array_equal(cov, before)  # -0.0 == 0.0: only a zero's sign may change
            assert np.array_equal(np.diag(cov).view(np.int64), np.diag(before).view(np.int64))
