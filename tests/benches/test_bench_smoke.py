"""Every bench runs at a tiny size inside the test command, so a change that breaks a bench fails
CI; each names the recipe it measures and writes the JSON fields the README reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LIBRISPEECH, REPO

pytest.importorskip("torch")
BENCHES = REPO / "benches"


def bench(name: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(BENCHES / name), *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


def test_large_model_bench_times_both_recipes_and_compares_with_sklearn(workdir):
    pytest.importorskip("sklearn")
    bench("bench_whisper_large.py", "--layers", 1, "--sklearn-modules", 1, "--workdir", workdir, cwd=workdir)
    result = json.loads((workdir / "bench_whisper_large.json").read_text())
    runs = {r["recipe"]: r for r in result["runs"]}
    assert set(runs) == {"paper", "datafree"}
    assert runs["paper"]["clustered_modules"] > 0 and runs["paper"]["gemm_floor_seconds"] > 0
    assert runs["datafree"]["clustered_modules"] == 0 and runs["datafree"]["gemm_floor_seconds"] == 0
    assert all(r["compress_seconds"] > 0 and r["peak_rss_gib"] > 0 for r in result["runs"])
    (row,) = result["sklearn"]
    assert row["speedup"] > 0 and 0.5 < row["inertia_ratio"] < 1.5
    assert result["commit"] and result["clusterprune_version"]


def test_gpu_bench_runs_its_code_path_with_numpy(workdir):
    bench("bench_gpu.py", "--device", "numpy", "--layers", 1, "--agree-modules", 2, "--workdir", workdir, cwd=workdir)
    result = json.loads((workdir / "bench_gpu.json").read_text())
    assert result["recipe"] == "paper" and result["whole_model_seconds"] > 0
    assert len(result["agreement"]) == 2 and all(r["agree"] for r in result["agreement"])
    assert all(r["repeat_max_abs_diff"] == 0.0 for r in result["agreement"])


def test_folded_speed_bench_on_a_tiny_whisper(checkpoints, workdir):
    out = workdir / "folded"
    bench(
        "bench_folded_speed.py",
        checkpoints["whisper"],
        "--sparsities",
        "0.25",
        "--repeats",
        1,
        "--workdir",
        out,
        cwd=workdir,
    )
    result = json.loads((out / "folded_speed.json").read_text())
    assert result["setup"]["recipe"] == "paper"
    (row,) = result["rows"]
    assert row["size_ratio"] < 1 and row["speedup"] > 0


def test_runtime_bench_on_tiny_en_and_a_small_large_shaped_model(tiny_en, workdir):
    pytest.importorskip("ctranslate2")
    if not LIBRISPEECH.is_dir():
        pytest.skip(f"no LibriSpeech utterances at {LIBRISPEECH}")
    out = workdir / "runtime"
    bench(
        "bench_runtime.py",
        tiny_en,
        "--data",
        LIBRISPEECH,
        "--subset",
        "test-clean",
        "--limit",
        2,
        "--rounds",
        1,
        "--large-layers",
        1,
        "--large-rounds",
        1,
        "--workdir",
        out,
        cwd=workdir,
    )
    result = json.loads((out / "bench_runtime.json").read_text())
    keys = {"model", "runtime", "compute_type", "size_bytes", "wer", "audio_s_per_s", "speedup_vs_dense_int8"}
    assert len(result["rows"]) == 6 and all(keys <= set(r) for r in result["rows"])
    rows = {(r["model"], r["runtime"], r["compute_type"]): r for r in result["rows"]}
    assert rows[("dense", "ctranslate2", "int8")]["speedup_vs_dense_int8"] == 1.0
    assert (
        rows[("datafree 0.2", "ctranslate2", "int8")]["size_bytes"]
        < rows[("dense", "ctranslate2", "int8")]["size_bytes"]
    )
    assert len(result["large"]) == 4 and all(r["encoder_s"] > 0 for r in result["large"])


def test_palettize_bench_against_coremltools_on_tiny_en(tiny_en, workdir):
    out = workdir / "palettize"
    args = [tiny_en, "--bits", 4, "--tensors", 2, "--large-layers", 1, "--large-tensors", 1, "--workdir", out]
    r = bench("bench_palettize.py", *args, cwd=workdir)
    result = json.loads((out / "bench_palettize.json").read_text())
    assert result["bits"] == 4 and len(result["rows"]) == 3
    for row in result["rows"]:
        assert {"tensor", "bits", "ours_s", "theirs_s", "speedup", "error_ours", "error_theirs"} <= set(row)
        assert row["speedup"] > 1 and row["error_ours"] <= row["error_theirs"] * 1.0001  # exact 1-D k-means
    assert result["large_model"]["bytes_compact"] < 0.4 * result["large_model"]["bytes_fp16"]
    assert result["comparator"] == "coremltools" and result["theirs"].startswith("coremltools ")
    assert result["method"] == "exact" and result["commit"]
    assert "| coremltools s |" in r.stdout and "error ours / coremltools" in r.stdout


def test_palettize_bench_stops_with_one_line_when_coremltools_cannot_be_imported(tiny_en, workdir, tmp_path):
    shadow = tmp_path / "shadow" / "coremltools"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('coremltools is hidden by this test')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    args = [tiny_en, "--tensors", 1, "--large-layers", 0, "--workdir", tmp_path / "out"]
    r = subprocess.run(
        [sys.executable, str(BENCHES / "bench_palettize.py"), *map(str, args)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert "coremltools cannot be imported" in line and "--comparator scikit-learn" in line
    assert not (tmp_path / "out" / "bench_palettize.json").exists()
    args = [*args[:-1], tmp_path / "sk", "--comparator", "scikit-learn"]
    r = subprocess.run(
        [sys.executable, str(BENCHES / "bench_palettize.py"), *map(str, args)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "sk" / "bench_palettize.json").read_text())
    assert result["comparator"] == "scikit-learn" and result["theirs"].startswith("scikit-learn ")
    assert "| scikit-learn s |" in r.stdout


def _headline_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("headline", REPO / "scripts" / "headline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"no LibriSpeech utterances at {LIBRISPEECH}")
def test_headline_script_measures_every_cell_and_renders_its_table(trainable, tmp_path):
    from conftest import librispeech_copy

    data = librispeech_copy(tmp_path, n=2)
    out = tmp_path / "h.json"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "headline.py"),
            trainable["whisper"],
            "--data",
            data,
            "--out",
            out,
            "--workdir",
            tmp_path / "w",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    record = json.loads(out.read_text())
    cells = [row["cell"] for row in record["rows"]]
    assert cells == [c for c, _, _ in _headline_module().CELLS]
    by = {row["cell"]: row for row in record["rows"]}
    assert by["dense-ct2-int8"]["runtime"] == "ctranslate2" and by["dense"]["runtime"] == "transformers"
    assert by["palettized-4bit"]["bytes"] < by["palettized-5bit"]["bytes"] < by["dense"]["bytes"]
    assert all(row["num_utterances"] == 2 and row["decode_seconds"] > 0 for row in record["rows"])
    assert (tmp_path / "h_table.md").read_text().strip() == _headline_module().render(record["rows"])


def test_the_readme_headline_table_is_the_scripts_rendering_of_its_json():
    headline = _headline_module()
    record = json.loads((REPO / "docs" / "results" / "headline.json").read_text())
    table = headline.render(record["rows"])
    assert headline.readme_table((REPO / "README.md").read_text()) == table
    assert (REPO / "docs" / "results" / "headline_table.md").read_text().strip() == table
    assert {row["model"] for row in record["rows"]} == {"whisper-tiny.en", "whisper-base"}


def test_selfgen_large_bench_measures_memory_speed_and_identity(tiny_en, workdir):
    bench(
        "bench_selfgen_large.py",
        "--processor", tiny_en, "--layers", 2, "--clips", 2, "--decoder-samples", 1, "--processes", "1,2",
        "--workdir", workdir / "selfgen-large",
        cwd=workdir,
    )  # fmt: skip
    result = json.loads((workdir / "selfgen-large" / "bench_selfgen_large.json").read_text())
    assert [r["processes"] for r in result["runs"]] == [1, 2]
    assert all(r["identical_to_one_process"] for r in result["runs"])
    assert all(r["peak_rss_gib"] > result["model_fp32_gib"] and r["seconds_per_clip"] > 0 for r in result["runs"])
    assert result["runs"][0]["file_gib"] <= result["float64_file_gib"] / 2
    assert result["default_command_minutes"] > 0 and result["shape"]["d_model"] == 1280
