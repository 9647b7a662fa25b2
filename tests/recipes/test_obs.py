"""Method obs: greedy optimal-brain-surgeon removal against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import clusterprune
from clusterprune.errors import InvalidArgumentError
from clusterprune.recipes.obs import greedy_removal, output_variance, ridged


def _schur_error(cov: np.ndarray, consumer: np.ndarray, removed: list[int]) -> float:
    """The output error of removing ``removed`` with the kept consumer re-solved (float64, direct)."""
    s = ridged(cov)
    kept = [i for i in range(cov.shape[0]) if i not in removed]
    r = list(removed)
    schur = s[np.ix_(r, r)] - s[np.ix_(r, kept)] @ np.linalg.solve(s[np.ix_(kept, kept)], s[np.ix_(kept, r)])
    return float(np.trace(consumer[r].T @ schur @ consumer[r]))


def _awkward_cases(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    cases = []
    for n, h in ((5, 3), (6, 4), (7, 2)):
        acts = rng.standard_normal((40, n))
        consumer = rng.standard_normal((n, h))
        cases.append((np.cov(acts.T, bias=True), consumer))
        dup = acts.copy()
        dup[:, 1] = dup[:, 0]  # a duplicated neuron: removing one of the pair costs ~nothing
        cases.append((np.cov(dup.T, bias=True), consumer))
        zero = consumer.copy()
        zero[2] = 0.0  # a neuron that writes nothing
        cases.append((np.cov(acts.T, bias=True), zero))
    return cases


def test_each_step_is_the_cheapest_removal_and_errors_are_exact():
    rng = np.random.default_rng(20261201)
    for cov, consumer in _awkward_cases(rng):
        n = cov.shape[0]
        r = greedy_removal(cov, consumer, n - 1)  # down to K = 1
        assert len(r.order) == n - 1 and len(set(r.order.tolist())) == n - 1
        for step in range(n - 1):
            prev = r.order[:step].tolist()
            costs = {j: _schur_error(cov, consumer, prev + [j]) for j in range(n) if j not in prev}
            best = min(costs.values())
            assert costs[int(r.order[step])] == pytest.approx(best, rel=1e-7, abs=1e-9)
            assert r.errors[step] == pytest.approx(costs[int(r.order[step])], rel=1e-7, abs=1e-9)
        assert np.all(np.diff(r.errors) >= -1e-12)
        assert r.errors[-1] <= output_variance(cov, consumer) * (1 + 1e-6)


def test_duplicate_and_silent_neurons_go_first():
    rng = np.random.default_rng(7)
    acts = rng.standard_normal((60, 6))
    acts[:, 4] = acts[:, 3]
    consumer = rng.standard_normal((6, 3))
    consumer[1] = 0.0
    cov = np.cov(acts.T, bias=True)
    r = greedy_removal(cov, consumer, 2)
    assert 1 in r.order.tolist() and ({3, 4} & set(r.order.tolist()))
    assert r.errors[-1] <= 1e-5 * output_variance(cov, consumer)  # the ridge's share only


def test_step_counts_are_clamped_and_the_best_two_subsets_agree_with_brute_force():
    rng = np.random.default_rng(3)
    acts = rng.standard_normal((50, 5))
    cov, consumer = np.cov(acts.T, bias=True), rng.standard_normal((5, 2))
    assert len(greedy_removal(cov, consumer, 0).order) == 0
    assert len(greedy_removal(cov, consumer, 99).order) == 4  # at least one neuron stays
    # greedy is not optimal in general, but never below the optimum
    best = min(_schur_error(cov, consumer, list(c)) for c in itertools.combinations(range(5), 2))
    assert greedy_removal(cov, consumer, 2).errors[-1] >= best - 1e-9


def test_recipe_checks():
    with pytest.raises(InvalidArgumentError, match="FFN neurons only"):
        clusterprune.make_recipe("datafree-obs", kinds="all")
    with pytest.raises(InvalidArgumentError, match="unknown allocation 'error'"):
        clusterprune.make_recipe("datafree", allocation="error")  # measured worse and retired
    with pytest.raises(InvalidArgumentError, match="activation model of method obs"):
        clusterprune.make_recipe("datafree", activations="selfgen")


def test_obs_fused_and_folded_compute_the_same_function(checkpoints, tmp_path):
    fused = clusterprune.compress(checkpoints["whisper"], tmp_path / "f", "datafree-obs", sparsity=0.3)
    folded = clusterprune.compress(
        checkpoints["whisper"], tmp_path / "d", "datafree-obs", sparsity=0.3, export="folded"
    )
    assert [m.k for m in fused.plan.modules] == [m.k for m in folded.plan.modules]
    torch = pytest.importorskip("torch")
    from clusterprune.models.hf import load_folded, load_weights

    a, b = load_weights(tmp_path / "f"), load_folded(tmp_path / "d")
    feats = torch.randn(1, 8, 32)
    ids = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        ya = a(input_features=feats, decoder_input_ids=ids).logits
        yb = b(input_features=feats, decoder_input_ids=ids).logits
    assert torch.allclose(ya, yb, atol=1e-4)


def test_merge_repair_restores_the_members_variance_and_keeps_the_mean():
    from clusterprune.models.units import Part
    from clusterprune.recipes.gaussian import ModuleContext
    from clusterprune.recipes.repair import repair_scales, repaired

    rng = np.random.default_rng(11)
    d, n = 8, 6
    w = rng.standard_normal((n, d))
    w[1] = w[0] * 0.5 + 0.1 * rng.standard_normal(d)  # correlated members
    b = rng.standard_normal(n)
    gamma, beta = rng.uniform(0.5, 2.0, d), rng.standard_normal(d)
    ctx = ModuleContext(norm_weight=gamma, norm_bias=beta)
    parts = [(Part("fc1.weight", "producer"), w), (Part("fc1.bias", "bias"), b[:, None])]
    labels = np.array([0, 0, 1, 1, 1, 2])
    k = 3
    folded = [(p, np.stack([m[labels == c].mean(axis=0) for c in range(k)])) for p, m in parts]
    s = repair_scales(parts, labels, k, ctx)
    assert s[2] == 1.0 and np.all(s[:2] >= 1.0)  # averaging never grows the variance
    fixed = dict((p.role, m) for p, m in repaired(folded, s, ctx))
    z = rng.standard_normal((200000, d))
    x = z * gamma + beta
    pre = x @ w.T + b
    merged = x @ fixed["producer"].T + fixed["bias"][:, 0]
    plain = x @ folded[0][1].T + folded[1][1][:, 0]
    for c in range(2):
        members = pre[:, labels == c]
        assert merged[:, c].var() == pytest.approx(members.var(axis=0).mean(), rel=0.02)
        assert merged[:, c].mean() == pytest.approx(plain[:, c].mean(), abs=0.02)
    with pytest.raises(InvalidArgumentError, match="merged units"):
        clusterprune.make_recipe("datafree", repair=True)
