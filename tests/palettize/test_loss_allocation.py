"""`palettize --avg-bits --stats` with the output Fisher (`selfgen --sensitivity`): the allocator
spends bits by the modelled loss 1/2 sum_r G_r (w_r - q_r)^T H (w_r - q_r), checked against a
direct computation; a tensor the statistics do not cover keeps --bits."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from clusterprune.io.checkpoint import Checkpoint
from clusterprune.io.safetensors import to_f32
from clusterprune.io.stats import load_stats
from clusterprune.palettize import pipeline
from clusterprune.palettize.config import make_config
from clusterprune.palettize.targets import targets
from conftest import needs_package, small_selfgen
from hostile import run


@pytest.fixture(scope="module")
def loss_stats(trainable, tmp_path_factory):
    return small_selfgen(trainable["whisper"], tmp_path_factory.mktemp("loss"), "--layer-inputs", "--sensitivity")


def planned(monkeypatch, ckpt, stats, config):
    """(the plan, the measure the allocator was given)."""
    seen = {}
    real = pipeline.error_plan

    def spy(chosen, rho, size, budget, levels):
        seen["rho"] = rho
        return real(chosen, rho, size, budget, levels)

    monkeypatch.setattr(pipeline, "error_plan", spy)
    chosen = targets(ckpt, config)
    plan = pipeline.plan_bits(ckpt, chosen, config, {}, None, pipeline.Moments(chosen, stats, ckpt))
    return plan, seen["rho"], chosen


@needs_package
def test_the_allocator_reads_the_modelled_loss(monkeypatch, trainable, loss_stats):
    stats = load_stats(loss_stats)
    config = make_config(avg_bits=3.5, min_size=0, max_bits=7)
    with Checkpoint(trainable["whisper"]) as ckpt:
        plan, rho, chosen = planned(monkeypatch, ckpt, stats, config)
        by_name = {t.name: t for t in chosen}
        for name in ("model.encoder.layers.0.fc1.weight", "model.decoder.layers.0.encoder_attn.v_proj.weight"):
            t, h, g = by_name[name], stats.second_moment(name), stats.sensitivity[name]
            w = ckpt.f32(name).reshape(t.rows, t.cols).astype(np.float64)
            for b in (2, 3, 6):
                p, _ = pipeline.palettize_tensor(ckpt, t, b, config, None, None, h)
                d = w - to_f32(p.dequantize(), ckpt.info(name).dtype).reshape(t.rows, t.cols).astype(np.float64)
                expected = 0.5 * sum(g[r] * d[r] @ h @ d[r] for r in range(t.rows))
                assert rho(name, b) == pytest.approx(expected, rel=1e-9), (name, b)
            assert rho(name, 7) == pytest.approx(rho(name, 6) / 4, rel=1e-12)  # above the measured levels
    assert len({plan[n] for n in stats.sensitivity if n in plan}) > 1
    assert plan["model.decoder.embed_tokens.weight"] == 4  # the token embedding keeps the plan's centre


@needs_package
def test_a_tensor_without_its_sensitivity_keeps_the_plans_centre(monkeypatch, trainable, loss_stats):
    stats = load_stats(loss_stats)
    left_out = "model.encoder.layers.0.fc2.weight"
    partial = dataclasses.replace(stats, sensitivity={n: v for n, v in stats.sensitivity.items() if n != left_out})
    config = make_config(avg_bits=3.5, bits=5, min_size=0)
    with Checkpoint(trainable["whisper"]) as ckpt:
        plan, rho, _ = planned(monkeypatch, ckpt, partial, config)
    assert plan[left_out] == 5
    with pytest.raises(KeyError):
        rho(left_out, 3)  # it was not traded


@needs_package
def test_palettize_by_the_loss_end_to_end(capsys, trainable, loss_stats, tmp_path):
    args = ["palettize", trainable["whisper"], tmp_path / "m", "--avg-bits", "3.5", "--format", "compact"]
    assert run(capsys, *args, "--min-size", "0", "--stats", loss_stats, "--quiet")[0] == 0
    plan = json.loads((tmp_path / "m" / "clusterprune_palette.json").read_text())
    allocated = set(plan["statistics"]["loss_allocated"])
    assert "model.encoder.conv1.weight" in allocated and "model.decoder.embed_tokens.weight" not in allocated
    bits = {t["name"]: t["bits"] for t in plan["tensors"]}
    assert len({bits[n] for n in allocated}) > 1
