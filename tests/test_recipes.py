"""Recipes beyond the paper: the Gaussian-LayerNorm importance score and the cosine merge."""

from __future__ import annotations

import numpy as np
import pytest

import clusterprune
from clusterprune.checkpoint import Checkpoint
from clusterprune.fusion import fold
from clusterprune.strategies import FUSIONS, SCORES, ModuleContext, activation_variance
from clusterprune.unitmap import Part, unit_map

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "gelu_new"])
def test_activation_variance_matches_monte_carlo(activation):
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=6), rng.uniform(0.1, 3.0, size=6)
    z = mu[:, None] + sigma[:, None] * rng.standard_normal((6, 400_000))
    a = torch.from_numpy(z)
    f = {
        "gelu": torch.nn.functional.gelu,
        "relu": torch.relu,
        "silu": torch.nn.functional.silu,
        "gelu_new": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
    }[activation](a).numpy()
    np.testing.assert_allclose(activation_variance(mu, sigma, activation), f.var(axis=1), rtol=0.02)


def test_gauss_ln_score_is_variance_times_consumer_energy():
    rng = np.random.default_rng(1)
    w, b, c = rng.normal(size=(5, 4)), 0.3 * rng.normal(size=(5, 1)), rng.normal(size=(5, 4))
    gamma, beta = rng.uniform(0.5, 2, 4), 0.3 * rng.normal(size=4)
    parts = [(Part("fc1.weight", "producer"), w), (Part("fc1.bias", "bias"), b), (Part("fc2.weight", "consumer"), c)]
    score = SCORES["gauss_ln"](parts, ModuleContext(gamma, beta, "gelu"))
    z = rng.standard_normal((400_000, 4)) * gamma + beta
    pre = torch.from_numpy(z @ w.T + b[:, 0])
    mc = torch.nn.functional.gelu(pre).numpy().var(axis=0) * (c * c).sum(axis=1)
    np.testing.assert_allclose(score, mc, rtol=0.03)


def test_cosine_fusion_merges_direction_and_scale():
    d = np.array([[3.0, 4.0], [6.0, 8.0], [0.0, 1.0]])  # units 0 and 1 share a direction
    parts = [(Part("fc1.weight", "producer"), d), (Part("fc2.weight", "consumer"), np.eye(3)[:, :2] + 1)]
    merged = dict((p.role, m) for p, m in fold(parts, np.array([0, 0, 1]), 2, FUSIONS["cosine"]))
    np.testing.assert_allclose(merged["producer"][0], [0.6 * 7.5, 0.8 * 7.5])  # mean norm 7.5
    np.testing.assert_allclose(merged["consumer"][0], parts[1][1][0] + parts[1][1][1])


def test_ffn_input_norm_follows_the_block_layout(checkpoints):
    for name, expected in (
        ("whisper", "final_layer_norm"),
        ("hubert", "layer_norm"),
        ("hubert_stable", "final_layer_norm"),
    ):
        with Checkpoint(checkpoints[name]) as c:
            ffn = [s for s in unit_map(c.config, set(c.where)).modules if s.kind == "ffn"]
            assert all(s.input_norm and s.input_norm.endswith(f".{expected}") for s in ffn)
            assert all(f"{s.input_norm}.weight" in c.where for s in ffn)


@pytest.mark.parametrize("recipe", ["datafree", "cosine"])
@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_new_recipes_compress_only_ffn_and_fold_exactly(checkpoints, tmp_path, recipe, family):
    src = checkpoints[family]
    fused = clusterprune.compress(src, tmp_path / "fused", 0.25, recipe=recipe)
    clusterprune.compress(src, tmp_path / "folded", 0.25, recipe=recipe, export="folded")
    assert {m.kind for m in fused.plan.modules} == {"ffn"}
    assert fused.plan.excluded and all("attn" in n or "attention" in n for n in fused.plan.excluded)
    assert fused.to_dict()["recipe"]["name"] == recipe
    cls = transformers.WhisperForConditionalGeneration if family == "whisper" else transformers.HubertForCTC
    a, b = cls.from_pretrained(tmp_path / "fused"), clusterprune.load_folded(tmp_path / "folded")
    if family == "whisper":
        x, dec = torch.randn(1, 8, 32), torch.tensor([[1, 5, 7]])
        with torch.no_grad():
            ya, yb = (
                a(input_features=x, decoder_input_ids=dec).logits,
                b(input_features=x, decoder_input_ids=dec).logits,
            )
    else:
        x = torch.randn(1, 1600)
        with torch.no_grad():
            ya, yb = a(x).logits, b(x).logits
    assert torch.allclose(ya, yb, atol=1e-5)
