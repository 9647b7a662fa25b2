"""The guarantees of README "Guarantees", one test per class of hostile input: the input is never
modified, nothing is dropped or invented, the format is checked, every error is one line, nothing
is left behind, own outputs are accepted, resources are bounded, results are consistent, and real
packs are found whatever part holds their files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from clusterprune import cli
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.io.output import atomic_directory
from clusterprune.io.safetensors import SafetensorsFile, SafetensorsWriter
from conftest import LIBRISPEECH
from hostile import one_line_error, rewrite, run, sigterm_mid_run

torch = pytest.importorskip("torch")


def tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------- 1. the input is never damaged


@pytest.mark.parametrize("how", ["absolute", "parent"])
def test_shards_named_outside_the_checkpoint_are_refused(capsys, tmp_path, checkpoints, how):
    outside = tmp_path / "elsewhere"
    src = tmp_path / "src"
    shutil.copytree(checkpoints["whisper_sharded"], src)
    shutil.copytree(checkpoints["whisper_sharded"], outside)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    name = str(outside / shard) if how == "absolute" else f"../elsewhere/{shard}"
    index["weight_map"] = {k: (name if v == shard else v) for k, v in index["weight_map"].items()}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    before, before_out = tree_hash(src), tree_hash(outside)
    one_line_error(capsys, ["compress", src, tmp_path / "dst"], "is not a file name inside the checkpoint directory")
    assert tree_hash(src) == before and tree_hash(outside) == before_out
    assert not (tmp_path / "dst").exists() and debris(tmp_path) == []


def test_no_output_path_may_lie_inside_the_source(capsys, tmp_path, whisper_copy):
    before = tree_hash(whisper_copy)
    one_line_error(
        capsys,
        ["compress", whisper_copy, tmp_path / "d", "--report", whisper_copy / "config.json"],
        "--report would be written inside the source",
    )
    one_line_error(capsys, ["compress", whisper_copy, whisper_copy / "sub"], "inside the source")
    one_line_error(
        capsys,
        ["sweep", whisper_copy, "--data", tmp_path, "--out", whisper_copy / "s"],
        "the sweep output would be written inside the source",
    )
    assert tree_hash(whisper_copy) == before and not (tmp_path / "d").exists()


# ---------------------------------------------------------------- 2. nothing dropped or invented


def test_a_tensor_missing_from_the_weight_map_is_carried_over(capsys, tmp_path, checkpoints):
    src = tmp_path / "src"
    shutil.copytree(checkpoints["whisper_sharded"], src)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    dropped = "model.decoder.layers.1.fc2.bias"
    del index["weight_map"][dropped]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    code, _, err = run(capsys, "compress", src, tmp_path / "o", "--quiet")
    assert code == 0, err
    with Checkpoint(src) as a, Checkpoint(tmp_path / "o") as b:
        assert set(a.names()) == set(b.names()) and dropped in b.index["weight_map"]
        assert np.array_equal(a.raw(dropped), b.raw(dropped))


@pytest.mark.parametrize(
    "tensor, change, pattern",
    [
        ("model.encoder.layers.0.fc1.bias", None, "tensor model.encoder.layers.0.fc1.bias not found"),
        ("model.decoder.embed_tokens.weight", None, "tensor model.decoder.embed_tokens.weight not found"),
        ("model.decoder.layers.1.fc2.bias", lambda a: a[:-1], "has shape [31], config.json implies [32]"),
        ("model.encoder.layers.1.final_layer_norm.weight", lambda a: a[:5], "has shape [5], config.json implies [32]"),
        ("model.encoder.conv1.bias", lambda a: a.astype(np.int8), "non-float dtype I8"),
    ],
)
def test_every_tensor_the_architecture_needs_is_checked_first(capsys, tmp_path, whisper_copy, tensor, change, pattern):
    f = whisper_copy / "model.safetensors"
    if change is None:
        rewrite(f, lambda n, a: a, drop=(tensor,))
    else:
        rewrite(f, lambda n, a: change(a) if n == tensor else a)
    one_line_error(capsys, ["compress", whisper_copy, tmp_path / "dst"], pattern)
    assert not (tmp_path / "dst").exists() and debris(tmp_path) == []


# ---------------------------------------------------------------- 4. one line, never a traceback


def test_corrupt_metadata_is_one_line_for_inspect_and_finetune_readers(capsys, tmp_path, checkpoints):
    out = tmp_path / "c"
    assert run(capsys, "compress", checkpoints["whisper"], out, "--quiet")[0] == 0
    for bad, pattern in [
        ("{not json", "is not valid JSON"),
        ('{"version": 1}', "'version' is not a string"),
        ('{"version": "0.1.0", "recipe": {}, "modules": {"m": [3, 9]}}', "1 <= K <= N"),
        ('{"format": 99, "version": "9.0", "recipe": {}, "modules": {}}', "has format 99, newer than"),
    ]:
        rewrite(out / "model.safetensors", lambda n, a: a)
        with SafetensorsFile(out / "model.safetensors") as f:
            arrays = {n: np.array(f.raw(n)) for n in f.tensors}
            entries = [(n, f.tensors[n].dtype, f.tensors[n].shape) for n in f.tensors]
        w = SafetensorsWriter(out / "model.new", entries, {"format": "pt", "clusterprune": bad})
        for n, a in arrays.items():
            w.write(n, a)
        w.close()
        (out / "model.new").replace(out / "model.safetensors")
        one_line_error(capsys, ["inspect", out], pattern)


def test_os_level_failures_are_one_line(capsys, tmp_path, checkpoints, whisper_copy):
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(capsys, ["compress", checkpoints["whisper"], locked / "x"], "cannot write here")
    (tmp_path / "a-file").write_text("")
    one_line_error(
        capsys, ["compress", checkpoints["whisper"], tmp_path / "a-file" / "sub" / "x"], "a-file is not a directory"
    )
    one_line_error(
        capsys,
        ["compress", checkpoints["whisper"], tmp_path / "o", "--report", tmp_path / "a-file" / "r.json"],
        "a-file is not a directory",
    )
    assert not (tmp_path / "o").exists()  # refused before any work: no published output
    long = tmp_path / ("n" * 250)  # a legal name; the temporary name built from it must stay legal
    assert run(capsys, "compress", checkpoints["whisper"], long, "--quiet")[0] == 0 and long.is_dir()
    one_line_error(capsys, ["compress", checkpoints["whisper"], tmp_path / ("n" * 260)], "longer than 255 bytes")
    os.mkfifo(whisper_copy / "a-fifo")
    one_line_error(capsys, ["compress", whisper_copy, tmp_path / "f"], "not a regular file or folder")
    (whisper_copy / "a-fifo").unlink()
    (whisper_copy / "dangling").symlink_to(tmp_path / "nowhere")
    one_line_error(capsys, ["compress", whisper_copy, tmp_path / "f"], "a dangling link")
    one_line_error(
        capsys,
        ["compress", checkpoints["whisper"], tmp_path / "s", "--seed", str(2**64)],
        "seed 18446744073709551616 is outside [0, 2^64)",
    )
    assert debris(tmp_path) == []


def test_argparse_errors_are_one_line(capsys, checkpoints, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["compress", str(checkpoints["whisper"]), str(tmp_path / "o"), "--sparsity", "abc"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "invalid float value: 'abc'" in err


# ---------------------------------------------------------------- 5. no debris, no race


def test_sigterm_leaves_nothing(tmp_path, checkpoints):
    args = ["compress", str(checkpoints["whisper"]), str(tmp_path / "o")]
    code, err = sigterm_mid_run("clusterprune.pipeline", "_compress_module", args)
    assert code == 143 and "terminated" in err
    assert sorted(x.name for x in tmp_path.iterdir()) == []


def test_failed_runs_remove_the_parents_they_created_and_stale_temporaries_go(capsys, tmp_path, whisper_copy):
    (whisper_copy / "model.safetensors").write_bytes(b"\0" * 7)
    one_line_error(capsys, ["compress", whisper_copy, tmp_path / "a" / "b" / "dst"], "no header")
    assert not (tmp_path / "a").exists()
    # a run killed with SIGKILL leaves its temporary directory; its lock is free, so the next run removes it
    stale = tmp_path / ".dst.tmp-dead"
    stale.mkdir()
    (tmp_path / ".dst.tmp-dead.lock").write_text("")
    with atomic_directory(tmp_path / "other") as tmp:
        (tmp / "x").write_text("1")
        live = tmp
        with atomic_directory(tmp_path / "third"):  # a live run's temporary directory is never touched
            assert live.exists()
    assert not stale.exists() and (tmp_path / "other" / "x").read_text() == "1" and debris(tmp_path) == []


def test_two_runs_into_one_new_destination_cannot_both_win(tmp_path):
    from clusterprune.errors import OutputExistsError

    dst = tmp_path / "dst"
    with pytest.raises(OutputExistsError, match="appeared while this run was writing"):
        with atomic_directory(dst) as mine:
            (mine / "who").write_text("second")
            with atomic_directory(dst) as other:  # another run publishes first
                (other / "who").write_text("first")
    assert (dst / "who").read_text() == "first" and debris(tmp_path) == []
    with atomic_directory(dst, overwrite=True) as again:  # --overwrite replaces it
        (again / "who").write_text("third")
    assert (dst / "who").read_text() == "third" and debris(tmp_path) == []


@pytest.mark.skipif(not LIBRISPEECH.is_dir(), reason=f"no LibriSpeech utterances at {LIBRISPEECH}")
def test_a_partial_without_saved_state_is_started_over(trainable, tmp_path):
    from clusterprune.training.finetune import FinetuneConfig, finetune
    from conftest import librispeech_copy

    speech = librispeech_copy(tmp_path, n=2)
    src = tmp_path / "fused"
    assert (
        cli.main(["compress", str(trainable["whisper"]), str(src), "--recipe", "paper", "--sparsity", "0.5", "--quiet"])
        == 0
    )
    (tmp_path / "o.partial").mkdir()
    (tmp_path / "o.partial" / "log.jsonl").write_text("")  # killed before its first save
    finetune(src, speech, tmp_path / "o", FinetuneConfig(max_steps=1, batch_size=2), progress=False, log=lambda s: None)
    assert (tmp_path / "o" / "model.safetensors").is_file() and not (tmp_path / "o.partial").exists()


# ---------------------------------------------------------------- 6.-8. own outputs, bounds, consistency


def test_outputs_with_duplicate_or_zero_units_are_accepted_by_finetune_and_load_folded(tmp_path, whisper_copy):
    from clusterprune import load_folded
    from clusterprune.training.structure import read_structure

    def degenerate(n, a):
        if n.endswith("encoder.layers.0.fc1.weight") or n.endswith("encoder.layers.0.fc1.bias"):
            return np.zeros_like(a)
        if n.endswith("encoder.layers.1.fc1.weight"):
            return np.repeat(a[:1], a.shape[0], axis=0)
        return a

    rewrite(whisper_copy / "model.safetensors", degenerate)
    for export in ("fused", "folded"):
        out = tmp_path / export
        assert (
            cli.main(
                [
                    "compress",
                    str(whisper_copy),
                    str(out),
                    "--recipe",
                    "paper",
                    "--sparsity",
                    "0.3",
                    "--export",
                    export,
                    "--quiet",
                ]
            )
            == 0
        )
        with Checkpoint(out) as c:
            read_structure(c)
    assert load_folded(tmp_path / "folded") is not None


def test_thread_counts_are_bounded_and_pools_reused(checkpoints, tmp_path, capsys):
    one_line_error(
        capsys,
        ["compress", checkpoints["whisper"], tmp_path / "o", "--threads", "100000"],
        "threads 100000 is outside [1, 1024]",
    )
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    from clusterprune import kmeans

    t = time.perf_counter()
    for _ in range(50):
        kmeans(x, 8, 0, num_threads=3)
    assert time.perf_counter() - t < 30  # a pool per call would start 150 threads; one pool starts 3


def test_nan_models_are_refused_by_eval_too(capsys, tmp_path, whisper_copy):
    rewrite(
        whisper_copy / "model.safetensors",
        lambda n, a: np.full_like(a, np.nan) if n.endswith("decoder.layer_norm.weight") else a,
    )
    (tmp_path / "d").mkdir()
    one_line_error(capsys, ["eval", whisper_copy, "--data", tmp_path / "d"], "has a non-finite value")


def test_the_plan_file_is_byte_identical_across_runs(checkpoints, tmp_path):
    for d in ("a", "b"):
        assert (
            cli.main(["compress", str(checkpoints["whisper"]), str(tmp_path / d), "--recipe", "paper", "--quiet"]) == 0
        )
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")


def test_eval_inputs_are_one_line(capsys, tmp_path, whisper_copy, tiny_en):
    data = tmp_path / "d" / "test-clean" / "1" / "2"
    data.mkdir(parents=True)
    (data / "1-2.trans.txt").write_bytes(b"1-2-0000 CAF\xe9\n")
    (data / "1-2-0000.flac").write_bytes(b"")
    (tmp_path / "j").mkdir()
    one_line_error(capsys, ["eval", tiny_en, "--data", tmp_path / "d", "--json", tmp_path / "j"], "names a directory")
    one_line_error(capsys, ["eval", tiny_en, "--data", tmp_path / "d"], "not UTF-8 text")
    one_line_error(capsys, ["eval", whisper_copy, "--data", tmp_path / "d"], "cannot load the whisper processor")
    f = whisper_copy / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    one_line_error(capsys, ["eval", whisper_copy, "--data", tmp_path / "d"], "truncated file")
