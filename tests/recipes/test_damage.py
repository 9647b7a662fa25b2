"""The joint data-free allocator (allocation "damage")."""

from __future__ import annotations

import numpy as np
import pytest

import clusterprune
from clusterprune.errors import InvalidArgumentError
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.recipes.damage import damage_plan, stream_variances, unit_scores


@pytest.mark.parametrize("source", ["whisper", "hubert", "hubert_stable"])
def test_budget_is_met_and_every_module_keeps_a_unit(checkpoints, source):
    for budget, sparsity in (("units", 0.3), ("params", 0.2)):
        kinds = "ffn" if budget == "units" else "all"
        plan = clusterprune.plan(
            checkpoints[source], "datafree", sparsity=sparsity, allocation="damage", budget=budget, kinds=kinds
        )
        removed_units = sum(m.n_units - m.k for m in plan.modules)
        if budget == "units":
            assert removed_units == round(sparsity * sum(m.n_units for m in plan.modules))
        else:
            assert plan.achieved_sparsity >= sparsity - 1e-9
        assert all(1 <= m.k <= m.n_units for m in plan.modules)
        assert all(m.modelled_error is not None and m.modelled_error >= 0 for m in plan.modules)
        assert {(m.k == m.n_units) for m in plan.modules} != {True}
        assert "modelled_error" in plan.to_dict()["modules"][0]


def test_units_go_in_increasing_order_of_damage(checkpoints):
    with Checkpoint(checkpoints["whisper"]) as ckpt:
        umap = clusterprune.models.registry.unit_map(ckpt.config, set(ckpt.where))
        pool = [s for s in umap.modules if s.kind == "ffn"]
        d = damage_plan(ckpt, list(umap.modules), pool, "gauss_ln", remove_units=40)
        scores = {s.name: unit_scores(ckpt, s, "gauss_ln") for s in umap.modules}
        stream = stream_variances(ckpt, list(umap.modules), scores)
    # brute force: the 40 smallest damages over all pool units (the best unit of each module kept)
    cands = []
    for s in pool:
        dmg = np.sort(scores[s.name] / stream[s.name])
        cands += [(v, s.name) for v in dmg[:-1]]
    cands.sort()
    expect = {s.name: s.n_units for s in pool}
    for _, name in cands[:40]:
        expect[name] -= 1
    assert d.ks == expect
    removed = sorted(cands)[:40]
    assert sum(d.errors.values()) == pytest.approx(sum(v for v, _ in removed))
    # the residual stream grows along each stack (pre-LN Whisper): later modules see more variance
    enc = [stream[s.name] for s in umap.modules if s.module_type.startswith("encoder")]
    assert all(b >= a for a, b in zip(enc, enc[1:], strict=False))


def test_damage_needs_a_gaussian_score():
    with pytest.raises(InvalidArgumentError, match="Gaussian score"):
        clusterprune.make_recipe("datafree", allocation="damage", score="l2")
