"""Palettization by the output error: the blocked column-by-column index choice against a plain
reference, the damping of dead inputs, and `palettize --stats` end to end (it must lower the
modelled output error it claims to minimise)."""

from __future__ import annotations

import json
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
from conftest import LIBRISPEECH, REPO, needs_data, needs_package
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
    out = tmp_path_factory.mktemp("li") / "li.stats.safetensors"
    args = ["selfgen", trainable["whisper"], out, "--clips", "2", "--decoder-samples", "2", "--layer-inputs", "--quiet"]
    from clusterprune import cli

    assert cli.main([str(a) for a in args]) == 0
    return out


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
    assert tensors and not any("embed_tokens" in t for t in tensors)
    errors = {}
    for name in ("plain", "stats"):
        with Checkpoint(tmp_path / name) as ckpt, Checkpoint(src) as dense:
            state = read_state(ckpt)
            errors[name] = sum(
                output_error.output_error(
                    dense.f32(t).reshape(dense.info(t).shape[0], -1),
                    to_f32(state[t][1], state[t][0]).reshape(dense.info(t).shape[0], -1),
                    stats.second_moment(t),
                )
                for t in tensors
            )
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


@needs_package
def test_the_held_out_script_measures_every_variant(trainable, input_stats, tmp_path):
    out = tmp_path / "heldout.json"
    script = REPO / "scripts" / "output_error_heldout.py"
    args = [trainable["whisper"], input_stats, input_stats, "--bits", "3", "--min-size", 0, "--json", out]
    r = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    variants = ["natural / diag(H)", "activation order / diag(H)", "activation order / compensated cost"]
    assert [row["variant"] for row in rows] == variants
    assert all(row["bits"] == 3 and row["tensors"] > 0 and 0 < row["geomean"] <= row["sum"] for row in rows)
    assert "| 3 | activation order / compensated cost |" in r.stdout
