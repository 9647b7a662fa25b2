"""Recipes beyond the paper: the Gaussian-LayerNorm importance score and the cosine merge."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import clusterprune
from clusterprune.fusion import fold
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.models.registry import unit_map
from clusterprune.models.units import Part
from clusterprune.recipes.gaussian import ModuleContext, activation_variance, expected_contribution
from clusterprune.recipes.registries import FUSIONS, SCORES

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
            attn = [s for s in unit_map(c.config, set(c.where)).modules if s.kind == "attention"]
            assert all(f"{s.input_norm}.weight" in c.where for s in attn)  # the LayerNorm feeding V
            if name == "hubert":  # post-LN: block i reads block i-1's output
                assert attn[0].input_norm.endswith("encoder.layer_norm")
                assert attn[1].input_norm.endswith("layers.0.final_layer_norm")


@pytest.mark.parametrize("recipe", ["datafree", "cosine", "datafree-comp", "datafree-refit"])
@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_new_recipes_compress_only_ffn_and_fold_exactly(checkpoints, tmp_path, recipe, family):
    src = checkpoints[family]
    fused = clusterprune.compress(src, tmp_path / "fused", sparsity=0.25, recipe=recipe)
    clusterprune.compress(src, tmp_path / "folded", sparsity=0.25, recipe=recipe, export="folded")
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


def _attention_parts(rng, heads=3, d=2, hidden=5):
    v = rng.normal(size=(heads * d, hidden))
    vb = rng.normal(size=heads * d)
    o = rng.normal(size=(hidden, heads * d))
    from clusterprune.models.units import ModuleSpec, to_units

    spec = ModuleSpec("a", "attention", "encoder.self_attn", 0, heads, d, hidden, ())
    parts_t = [
        (Part("a.v_proj.weight", "producer"), v),
        (Part("a.v_proj.bias", "bias"), vb),
        (Part("a.out_proj.weight", "consumer"), o),
    ]
    return [(p, to_units(t, spec, p)) for p, t in parts_t], (v, vb, o)


def test_head_score_and_mean_match_monte_carlo():
    rng = np.random.default_rng(2)
    heads, d, hidden = 3, 2, 5
    parts, (v, vb, o) = _attention_parts(rng, heads, d, hidden)
    gamma, beta = rng.uniform(0.5, 2, hidden), rng.normal(size=hidden)
    ctx = ModuleContext(gamma, beta, kind="attention", unit_rows=d)
    x = rng.standard_normal((200_000, hidden)) * gamma + beta
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        out = (x @ v[rows].T + vb[rows]) @ o[:, rows].T  # one attended token
        np.testing.assert_allclose(SCORES["gauss_ln"](parts, ctx)[h], out.var(axis=0).sum(), rtol=0.03)
        np.testing.assert_allclose(expected_contribution(parts, ctx)[h], out.mean(axis=0), atol=0.05)


def test_ffn_mean_matches_monte_carlo():
    rng = np.random.default_rng(3)
    w, b, c = rng.normal(size=(4, 3)), rng.normal(size=(4, 1)), rng.normal(size=(4, 3))
    gamma, beta = rng.uniform(0.5, 2, 3), 0.3 * rng.normal(size=3)
    parts = [(Part("fc1.weight", "producer"), w), (Part("fc1.bias", "bias"), b), (Part("fc2.weight", "consumer"), c)]
    mean = expected_contribution(parts, ModuleContext(gamma, beta))
    x = rng.standard_normal((400_000, 3)) * gamma + beta
    act = torch.nn.functional.gelu(torch.from_numpy(x @ w.T + b[:, 0])).numpy().mean(axis=0)
    np.testing.assert_allclose(mean, act[:, None] * c, atol=0.01)


def _set(path, name, fn):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    tensors[name] = fn(tensors[name]).astype(tensors[name].dtype)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def _whisper_out(path, x, dec):
    model = transformers.WhisperForConditionalGeneration.from_pretrained(path).eval()
    with torch.no_grad():
        return model(input_features=x, decoder_input_ids=dec).logits


@pytest.mark.parametrize("compensate", [True, False])
def test_removing_constant_units_with_compensation_is_exact(whisper_copy, tmp_path, compensate):
    """A neuron with zero fc1 row outputs the constant gelu(b): the score ranks it last, and the
    compensation moves its constant into fc2's bias, exactly. A head whose value rows are zero
    outputs the constant O^T b_v whatever the attention: the same holds for the head."""
    ffn, attn = "model.encoder.layers.0", "model.encoder.layers.0.self_attn"
    _set(whisper_copy, f"{ffn}.fc1.weight", lambda w: np.concatenate([0 * w[:1], w[1:]]))
    _set(whisper_copy, f"{ffn}.fc1.bias", lambda b: np.concatenate([[1.5], b[1:]]))
    d = 32 // 4
    _set(whisper_copy, f"{attn}.v_proj.weight", lambda w: np.concatenate([0 * w[:d], w[d:]]))
    _set(whisper_copy, f"{attn}.v_proj.bias", lambda b: np.concatenate([np.full(d, 0.7), b[d:]]))
    report = clusterprune.compress(
        whisper_copy,
        tmp_path / "out",
        sparsity=0.0,
        recipe="datafree-heads",
        include=r"encoder\.layers\.0\.",
        k_overrides={f"{ffn}.ffn": 47},
        compensate=compensate,
    )
    plan = {m.name: m.k for m in report.plan.modules}
    assert plan == {f"{ffn}.ffn": 47, attn: 3}
    with Checkpoint(tmp_path / "out") as c:
        assert np.all(c.f32(f"{ffn}.fc1.weight")[0] == 0) and np.all(c.f32(f"{ffn}.fc2.weight")[:, 0] == 0)
        assert np.all(c.f32(f"{attn}.out_proj.weight")[:, :d] == 0)
    torch.manual_seed(0)
    x, dec = torch.randn(1, 8, 32), torch.tensor([[1, 5, 7]])
    same = torch.allclose(_whisper_out(whisper_copy, x, dec), _whisper_out(tmp_path / "out", x, dec), atol=1e-5)
    assert same == compensate


def test_refit_moves_a_duplicate_neurons_output_onto_its_twin():
    rng = np.random.default_rng(4)
    w, b, c = rng.normal(size=(6, 4)), rng.normal(size=(6, 1)), rng.normal(size=(6, 4))
    w[5], b[5] = w[2], b[2]  # neuron 5 duplicates neuron 2
    parts = [(Part("fc1.weight", "producer"), w), (Part("fc1.bias", "bias"), b), (Part("fc2.weight", "consumer"), c)]
    labels = np.array([0, 1, 2, 3, 4, -1])
    from clusterprune.recipes.refit import refit_consumer

    x, shift = refit_consumer(parts, labels, ModuleContext(np.ones(4), np.zeros(4)), seed=0)
    np.testing.assert_allclose(x[2], c[2] + c[5], atol=1e-4)  # the twin takes both columns
    np.testing.assert_allclose(np.delete(x, 2, axis=0), c[[0, 1, 3, 4]], atol=1e-4)
    np.testing.assert_allclose(shift, 0.0, atol=1e-4)


def test_params_budget_and_fixed_heads(checkpoints):
    with Checkpoint(checkpoints["whisper"]) as c:
        umap = unit_map(c.config, set(c.where))
    compressible = sum(s.n_units * s.params_per_unit for s in umap.modules)
    p = clusterprune.plan(checkpoints["whisper"], sparsity=0.1, recipe="datafree-heads")
    ks = {m.name: (m.module_type, m.n_units, m.k) for m in p.modules}
    assert all(k == n - 1 for t, n, k in ks.values() if t == "encoder.self_attn")
    assert not any(t in ("decoder.self_attn", "decoder.cross_attn") for t, _, _ in ks.values())
    assert (
        abs(p.achieved_sparsity - 0.1)
        < 4 * max(s.params_per_unit for s in umap.modules if s.kind == "ffn") / compressible
    )
    ffn_only = clusterprune.plan(
        checkpoints["whisper"], sparsity=0.1, recipe="datafree", budget="params", allocation="uniform"
    )
    assert abs(ffn_only.achieved_sparsity - 0.1) < 0.02 and {m.kind for m in ffn_only.modules} == {"ffn"}
    with pytest.raises(clusterprune.InvalidArgumentError, match="cannot be reached"):
        clusterprune.plan(checkpoints["whisper"], sparsity=0.9, recipe="datafree", budget="params")
    with pytest.raises(clusterprune.InvalidArgumentError, match="leaves no head"):
        clusterprune.plan(checkpoints["whisper"], sparsity=0.1, recipe="datafree-heads", remove_heads=4)
    with pytest.raises(clusterprune.InvalidArgumentError, match="removal"):
        clusterprune.plan(checkpoints["whisper"], sparsity=0.1, recipe="paper", compensate=True)


def test_refit_output_is_identical_whatever_the_blas_thread_count(checkpoints, tmp_path):
    script = (
        "import sys, clusterprune; clusterprune.compress(sys.argv[1], sys.argv[2], sparsity=0.25, recipe='datafree-refit', "
        "export='folded')"
    )
    outs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        out = tmp_path / f"t{threads}"
        subprocess.run([sys.executable, "-c", script, str(checkpoints["hubert_stable"]), str(out)], env=env, check=True)
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1]


def test_attention_logit_variance_matches_monte_carlo():
    from clusterprune.recipes.gaussian import attention_logit_variance

    rng = np.random.default_rng(5)
    heads, d, hidden = 2, 3, 6
    wq, bq, wk = rng.normal(size=(heads * d, hidden)), rng.normal(size=heads * d), rng.normal(size=(heads * d, hidden))
    gamma, beta = rng.uniform(0.5, 1.5, hidden), 0.5 * rng.normal(size=hidden)
    ctx = ModuleContext(gamma, beta, kind="attention", unit_rows=d)
    parts = [
        (Part("a.q_proj.weight", "producer"), wq.reshape(heads, -1)),
        (Part("a.k_proj.weight", "producer"), wk.reshape(heads, -1)),
        (Part("a.q_proj.bias", "bias"), bq.reshape(heads, -1)),
    ]
    xk = rng.standard_normal((2000, hidden)) * gamma + beta
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        per_query = []
        for _ in range(10):  # 20000 queries in chunks: the quadratic form in q has a heavy tail
            xq = rng.standard_normal((2000, hidden)) * gamma + beta
            logits = (xq @ wq[rows].T + bq[rows]) @ (xk @ wk[rows].T).T / np.sqrt(d)  # (queries, keys)
            per_query.append(logits.var(axis=1))
        np.testing.assert_allclose(attention_logit_variance(parts, ctx)[h], np.concatenate(per_query).mean(), rtol=0.05)
