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
