"""Palettization by the output error: the blocked column-by-column index choice against a plain
reference, the damping of dead inputs, and `palettize --stats` end to end (it must lower the
modelled output error it claims to minimise)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clusterprune.io.checkpoint import Checkpoint
from clusterprune.io.palette import read_state
from clusterprune.io.safetensors import to_f32
from clusterprune.io.stats import load_stats
from clusterprune.palettize import output_error
from clusterprune.palettize.output_error import choose_indices, damped, factor, nearest
from clusterprune.palettize.pipeline import tied_moment
from conftest import LIBRISPEECH, REPO, needs_data, needs_package, small_selfgen
from hostile import one_line_error, run


def reference_indices(w: np.ndarray, tables: np.ndarray, h: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """GPTQ's update one column at a time over every remaining column, straight from its
    definition, the columns taken in ``order`` (default: as they are)."""
    rows, cols = w.shape
    order = np.arange(cols) if order is None else order
    hd = damped(h)[np.ix_(order, order)]  # the damped moment of the columns in their order
    u = np.linalg.cholesky(np.linalg.inv(hd)).T
    w = w.astype(np.float64)[:, order].copy()
    out = np.zeros((rows, cols), dtype=np.uint8)
    for j in range(cols):
        dist = np.abs(tables - w[:, j : j + 1])
        idx = np.argmin(dist, axis=1)
        out[:, order[j]] = idx
        err = (w[:, j] - tables[np.arange(rows), idx]) / u[j, j]
        w[:, j:] -= np.outer(err, u[j, j:])
    return out


def random_problem(rng, rows: int, cols: int, k: int, dead: int = 0):
    w = rng.standard_normal((rows, cols))
    x = rng.standard_normal((4 * cols, cols)) @ rng.standard_normal((cols, cols))  # correlated inputs
    x[:, :dead] = 0.0  # inputs that are always zero
    h = x.T @ x / x.shape[0]
    tables = np.sort(rng.standard_normal((rows, k)), axis=1)
    return w, tables, h


@pytest.mark.parametrize(("rows", "cols", "k", "dead"), [(1, 1, 1, 0), (5, 7, 2, 0), (6, 40, 8, 3), (3, 300, 16, 0)])
def test_the_blocked_choice_equals_the_reference(monkeypatch, rows, cols, k, dead):
    rng = np.random.default_rng(rows * 1000 + cols)
    w, tables, h = random_problem(rng, rows, cols, k, dead)
    expected = reference_indices(w, tables, h)
    for block in (1, 3, 128):
        monkeypatch.setattr(output_error, "BLOCK", block)
        np.testing.assert_array_equal(choose_indices(w, tables, factor(h, act_order=False)), expected)


@pytest.mark.parametrize(("rows", "cols", "k", "dead"), [(1, 1, 1, 0), (5, 7, 2, 2), (4, 200, 16, 0)])
def test_the_activation_order_takes_the_most_heard_columns_first(monkeypatch, rows, cols, k, dead):
    rng = np.random.default_rng()  # fresh problems each run
    w, tables, h = random_problem(rng, rows, cols, k, dead)
    scale = rng.uniform(0.1, 10.0, size=cols)
    h = scale[:, None] * h * scale[None, :]  # columns heard very unequally (D H D stays a moment)
    order = np.argsort(-np.diag(damped(h)), kind="stable")
    expected = reference_indices(w, tables, h, order)
    for block in (1, 3, 128):
        monkeypatch.setattr(output_error, "BLOCK", block)
        np.testing.assert_array_equal(choose_indices(w, tables, factor(h)), expected)


def test_table_weights_are_what_a_column_costs_after_the_later_columns_compensate():
    rng = np.random.default_rng()
    _, _, h = random_problem(rng, 1, 12, 2, dead=2)
    f = factor(h)
    hd = damped(h)
    for at, col in enumerate(f.order):
        later = f.order[at + 1 :]
        schur = hd[col, col] - hd[col, later] @ np.linalg.solve(hd[np.ix_(later, later)], hd[later, col])
        assert f.column_weights()[col] == pytest.approx(schur, rel=1e-9)
    assert list(f.order) == sorted(range(12), key=lambda c: (-hd[c, c], c))


def test_an_identity_moment_rounds_to_the_nearest_entry():
    rng = np.random.default_rng(1)
    w, tables, _ = random_problem(rng, 4, 9, 4)
    got = choose_indices(w, tables, factor(np.eye(9)))
    np.testing.assert_array_equal(got, np.stack([nearest(tables, w[:, j]) for j in range(9)], axis=1))


def test_the_choice_lowers_the_output_error_of_nearest_rounding():
    rng = np.random.default_rng(2)
    w, tables, h = random_problem(rng, 64, 48, 4)
    chosen = choose_indices(w, tables, factor(h))
    plain = np.stack([nearest(tables, w[:, j]) for j in range(48)], axis=1)
    q = np.take_along_axis(tables, chosen.astype(np.intp), axis=1)
    p = np.take_along_axis(tables, plain.astype(np.intp), axis=1)
    assert output_error.output_error(w, q, h) < 0.9 * output_error.output_error(w, p, h)


def test_dead_inputs_are_damped_to_a_factorisable_moment():
    h = np.diag([0.0, 2.0, 0.0])
    d = damped(h)
    assert np.all(np.linalg.eigvalsh(d) > 0) and d[0, 0] > 1.0 and d[1, 1] > 2.0


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def input_stats(trainable, tmp_path_factory):
    return small_selfgen(trainable["whisper"], tmp_path_factory.mktemp("li"), "--layer-inputs")


@needs_package
def test_layer_inputs_add_moments_and_leave_the_module_statistics_as_they_were(input_stats, selfgen_stats):
    with_inputs, plain = load_stats(input_stats), load_stats(selfgen_stats)
    assert list(with_inputs.modules) == list(plain.modules) and not plain.inputs
    for name in plain.modules:
        a, b = with_inputs.modules[name], plain.modules[name]
        assert a.mean.tobytes() == b.mean.tobytes() and a.cov.tobytes() == b.cov.tobytes()
    fed = {t for names in with_inputs.feeds.values() for t in names}
    assert {"model.decoder.layers.0.self_attn.k_proj.weight", "model.encoder.layers.0.fc2.weight"} <= fed
    h = with_inputs.second_moment("model.encoder.layers.0.self_attn.v_proj.weight")
    assert np.allclose(h, h.T) and np.linalg.eigvalsh(h).min() > -1e-6 * np.trace(h)


@needs_package
def test_palettize_by_the_output_error_lowers_it(capsys, trainable, input_stats, tmp_path):
    src = trainable["whisper"]
    for name, extra in (("plain", []), ("stats", ["--stats", input_stats])):
        args = ["palettize", src, tmp_path / name, "--bits", "3", "--format", "compact", "--min-size", "0", "--quiet"]
        assert run(capsys, *args, *extra)[0] == 0
    plan = json.loads((tmp_path / "stats" / "clusterprune_palette.json").read_text())
    stats = load_stats(input_stats)
    tensors = plan["statistics"]["tensors"]
    # every linear layer, both convolutions (their input windows) and the tied token embedding
    assert {"model.encoder.conv1.weight", "model.encoder.conv2.weight", "model.decoder.embed_tokens.weight"} <= set(
        tensors
    )
    errors = {}
    for name in ("plain", "stats"):
        with Checkpoint(tmp_path / name) as ckpt, Checkpoint(src) as dense:
            state = read_state(ckpt)
            errors[name] = 0.0
            for t in tensors:
                w = dense.f32(t).reshape(dense.info(t).shape[0], -1).astype(np.float64)
                h = stats.second_moment(t)
                if "embed_tokens" in t:
                    h = tied_moment(h, w)
                q = to_f32(state[t][1], state[t][0]).reshape(w.shape)
                errors[name] += output_error.output_error(w, q, h) / output_error.output_error(w, 0 * w, h)
    assert errors["stats"] < 0.9 * errors["plain"]


def test_statistics_without_layer_inputs_say_how_to_make_them(capsys, tmp_path, checkpoints):
    from clusterprune.io.stats import ActivationStats, ModuleStats

    path = tmp_path / "s.safetensors"
    ActivationStats({"m": ModuleStats(np.zeros(2), np.eye(2), 3, 1.0)}).save(path)
    one_line_error(capsys, ["palettize", checkpoints["whisper"], tmp_path / "o", "--stats", path], "--layer-inputs")


@needs_data
@needs_package
def test_a_bits_sweep_with_layer_inputs_measures_both_errors(capsys, trainable, input_stats, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", trainable["whisper"], "--data", LIBRISPEECH, "--subset", "test-clean", "--limit", "1"]
    args += ["--sparsities", "", "--bits", "3", "--stats", input_stats, "--out", out]
    assert run(capsys, *args)[0] == 0
    rows = [r for r in json.loads((out / "results.json").read_text()) if r["method"] == "palettize"]
    assert sorted(r["output_error"] for r in rows) == [False, True]
    assert "output error (--stats)" in (out / "results.md").read_text()


@needs_data
@needs_package
def test_stacked_bits_cells_palettize_by_the_statistics_only_when_asked(capsys, trainable, input_stats, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", trainable["whisper"], "--data", LIBRISPEECH, "--subset", "test-clean", "--limit", "1"]
    args += ["--sparsities", "", "--bits", "3", "--stats", input_stats, "--bit-sparsities", "0.25"]
    assert run(capsys, *args, "--keep-models", "--out", out)[0] == 0
    rows = {r["cell"]: r for r in json.loads((out / "results.json").read_text()) if r["method"] == "palettize"}
    stacked = {c: r for c, r in rows.items() if r["stacked_on"] == "datafree-selfgen"}
    assert sorted(r["output_error"] for r in stacked.values()) == [False, True]
    for cell, r in stacked.items():  # the structured step read the statistics in both; the palettization only in one
        plan = json.loads((out / "models" / cell / "clusterprune_palette.json").read_text())
        assert ("statistics" in plan) == r["output_error"], cell
        assert plan["source_compression"]["recipe"]["name"] == "datafree-selfgen"
    assert not any(p.name.endswith(".folded") for p in (out / "models").iterdir())


@needs_package
def test_the_held_out_script_measures_every_variant(trainable, input_stats, tmp_path):
    out = tmp_path / "heldout.json"
    script = REPO / "scripts" / "output_error_heldout.py"
    args = [trainable["whisper"], input_stats, input_stats, "--bits", "3", "--min-size", 0, "--json", out]
    r = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    variants = [
        "plain k-means",
        "natural / diag(H)",
        "activation order / diag(H)",
        "activation order / compensated cost",
    ]
    kinds = ["linear", "convolution", "embedding"]
    assert [(row["kind"], row["variant"]) for row in rows] == [(k, v) for k in kinds for v in variants]
    assert all(
        row["bits"] == 3 and row["tensors"] > 0 and 0 < row["geomean"] <= row["sum"] * (1 + 1e-12) for row in rows
    )
    by = {(row["kind"], row["variant"]): row["sum"] for row in rows}
    for kind in kinds:  # in sample (FIT = TEST): the output-error method beats the plain k-means on what it minimises
        assert by[(kind, "activation order / compensated cost")] < by[(kind, "plain k-means")]
    assert "| 3 | convolution | activation order / compensated cost |" in r.stdout


def test_the_tied_embedding_moment_sums_both_roles_relative_errors():
    rng = np.random.default_rng(7)
    table = rng.standard_normal((50, 6))
    x = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    h = x.T @ x / 200
    e = 0.1 * rng.standard_normal(table.shape)
    as_input = np.sum(e * e) / np.sum(table * table)
    as_output = np.sum((e @ h) * e) / np.sum((table @ h) * table)
    m = tied_moment(h, table)
    assert output_error.output_error(table, table - e, m) / output_error.output_error(table, 0 * table, m) == (
        pytest.approx(0.5 * (as_input + as_output), rel=1e-12)
    )
    assert np.array_equal(tied_moment(h, 0 * table), h)  # an all-zero table: nothing to weigh the roles by


@needs_package
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_the_agreement_script_measures_nothing_between_a_model_and_itself(capsys, trainable, tmp_path):
    src = trainable["whisper"]
    args = ["palettize", src, tmp_path / "p2", "--bits", "2", "--format", "compact", "--min-size", "0", "--quiet"]
    assert run(capsys, *args)[0] == 0
    out = tmp_path / "agreement.json"
    script = REPO / "scripts" / "selfgen_agreement.py"
    cmd = [sys.executable, str(script), str(src), str(src), str(tmp_path / "p2"), "--clips", "1", "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    same, palettized = json.loads(out.read_text())
    assert same["kl_nats_per_token"] == 0.0 and same["top1_agreement"] == 1.0 and same["positions"] >= 1
    assert palettized["kl_nats_per_token"] > 0.0 and palettized["positions"] == same["positions"]


@needs_package
def test_the_allocator_weighs_a_block_by_what_it_writes_into_the_stream(trainable, input_stats):
    from clusterprune.palettize.config import PaletteConfig
    from clusterprune.palettize.pipeline import Moments
    from clusterprune.palettize.stream import stream_shares
    from clusterprune.palettize.targets import targets

    stats = load_stats(input_stats)
    with Checkpoint(trainable["whisper"]) as ckpt:
        moments = Moments(targets(ckpt, PaletteConfig(min_size=0)), stats, ckpt)
        shares = stream_shares(ckpt, stats, moments)
        for layer, block, writer in (
            ("model.encoder.layers.0", "fc1", "fc2"),
            ("model.decoder.layers.0", "encoder_attn.q_proj", "encoder_attn.out_proj"),
        ):
            w = ckpt.f32(f"{layer}.{writer}.weight").astype(np.float64)
            written = np.trace(w @ stats.second_moment(f"{layer}.{writer}.weight") @ w.T)
            expected = written / stats.infos()[f"{layer}.ffn"].stream_variance
            assert shares[f"{layer}.{block}.weight"] == pytest.approx(expected, rel=1e-9)
            assert shares[f"{layer}.{writer}.weight"] == shares[f"{layer}.{block}.weight"]
    assert not {"model.encoder.conv1.weight", "model.decoder.embed_tokens.weight"} & set(shares)
    assert all(np.isfinite(v) and v > 0 for v in shares.values())


@needs_package
def test_a_ctc_models_feature_encoder_convolutions_get_input_moments(capsys, trainable, tmp_path):
    from clusterprune import cli

    src, stats = trainable["hubert"], tmp_path / "h.stats.safetensors"
    assert cli.main(["selfgen", str(src), str(stats), "--clips", "1", "--layer-inputs", "--quiet"]) == 0
    fed = {t for names in load_stats(stats).feeds.values() for t in names}
    convs = {t for t in fed if ".conv_layers." in t}
    assert convs and not any("pos_conv" in t for t in fed)  # the grouped, weight-normed one is left out
    args = ["palettize", src, tmp_path / "p", "--bits", "3", "--format", "compact", "--min-size", "0", "--quiet"]
    assert run(capsys, *args, "--stats", stats)[0] == 0
    plan = json.loads((tmp_path / "p" / "clusterprune_palette.json").read_text())
    assert convs <= set(plan["statistics"]["tensors"])
