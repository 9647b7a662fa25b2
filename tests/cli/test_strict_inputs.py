"""Never a wrong answer with exit 0, nothing left behind, one clear line: one test per class of
defect of the model loaders, the JSON writers, export-ct2, the CTranslate2 evaluation, selfgen,
the Python API and the command line."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

import clusterprune
from clusterprune.errors import ClusterpruneError, CorruptCheckpointError, InvalidArgumentError
from clusterprune.io.output import atomic_directory, write_json_atomic
from conftest import needs_package
from hostile import one_line_error, rewrite, run, sigterm_mid_run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------- the loaders are strict and exact


@pytest.mark.parametrize(
    "kind", ["whisper", "whisper_float16", "whisper_bfloat16", "whisper_sharded", "hubert", "wav2vec2"]
)
def test_the_loader_gives_exactly_the_weights_transformers_reads(checkpoints, kind):
    from clusterprune.models.hf import load_weights

    ours = load_weights(checkpoints[kind]).state_dict()
    family = transformers.AutoConfig.from_pretrained(checkpoints[kind]).architectures[0]
    theirs = getattr(transformers, family).from_pretrained(checkpoints[kind], dtype=torch.float32).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(
    ("kind", "tensor"),
    [
        ("whisper", "model.encoder.layer_norm.weight"),
        ("whisper", "model.decoder.embed_positions.weight"),
        ("hubert", "lm_head.bias"),
    ],
)
def test_a_checkpoint_missing_a_tensor_is_refused_not_filled_with_random_weights(
    capsys, checkpoints, tmp_path, kind, tensor
):
    from clusterprune.models.hf import load_weights

    src = tmp_path / "src"
    shutil.copytree(checkpoints[kind], src)
    rewrite(src / "model.safetensors", drop=(tensor,))
    with pytest.raises(CorruptCheckpointError, match=f"lacks 1 tensor.* e.g. {tensor}.*random weights") as info:
        load_weights(src)
    assert "\n" not in str(info.value)
    if kind == "whisper":  # selfgen loads through the same loader
        one_line_error(capsys, ["selfgen", src, tmp_path / "s.safetensors", "--clips", "1"], f"e.g. {tensor}")


def test_an_unknown_tensor_is_refused(checkpoints, tmp_path):
    from clusterprune.models.hf import load_weights

    src = tmp_path / "src"
    shutil.copytree(checkpoints["whisper"], src)
    rewrite(src / "model.safetensors", add={"model.encoder.extra.weight": np.zeros(3, dtype=np.float32)})
    with pytest.raises(
        CorruptCheckpointError, match="not part of the WhisperForConditionalGeneration model, e.g. model.encoder.extra"
    ):
        load_weights(src)


def test_selfgen_needs_the_dense_model(capsys, checkpoints, tmp_path):
    folded = tmp_path / "folded"
    assert run(capsys, "compress", checkpoints["whisper"], folded, "--export", "folded", "--quiet")[0] == 0
    one_line_error(capsys, ["selfgen", folded, tmp_path / "s.safetensors"], "a folded checkpoint; self-generated")
    assert not (tmp_path / "s.safetensors").exists()


# ---------------------------------------------------------------- JSON: no NaN, ever


def test_json_with_nan_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ClusterpruneError, match=r"report.json: modules.1.wer is NaN or infinite"):
        write_json_atomic(tmp_path / "report.json", {"modules": [{"wer": 1.0}, {"wer": math.nan}]})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- export-ct2 and CTranslate2 directories


def whisper_tokenizer(tokens: list[str]) -> dict:
    return {"model": {"vocab": {t: i for i, t in enumerate(tokens)}}}


def test_export_refuses_a_vocabulary_that_cannot_drive_whisper(tmp_path):
    from clusterprune.exporters.ct2 import _vocabulary

    words = ["a", "b", "<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    config = {"decoder_start_token_id": 3, "eos_token_id": 2}
    assert _vocabulary(whisper_tokenizer(words), 7, config, tmp_path)[:5] == words
    with pytest.raises(CorruptCheckpointError, match="no <|startoftranscript|> among the model's 5 token ids"):
        _vocabulary(whisper_tokenizer(["a", "b", "c", "<|endoftext|>", "<|notimestamps|>"]), 5, {}, tmp_path)
    with pytest.raises(CorruptCheckpointError, match="has id 3, but config.json's decoder_start_token_id is 4"):
        _vocabulary(whisper_tokenizer(words), 5, {"decoder_start_token_id": 4}, tmp_path)
    with pytest.raises(CorruptCheckpointError, match="without a valid integer id"):
        _vocabulary({"model": {"vocab": {"a": "zero"}}}, 5, {}, tmp_path)


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (lambda d: (d / "config.json").unlink(), "config.json: file not found"),
        (lambda d: (d / "vocabulary.json").unlink(), "vocabulary.json: file not found"),
        (lambda d: (d / "vocabulary.json").write_text("{}"), "vocabulary.json: not a JSON list"),
        (lambda d: (d / "tokenizer.json").write_text("{"), "tokenizer.json: invalid JSON"),
        (lambda d: (d / "clusterprune_export.json").write_text("[]"), "clusterprune_export.json: not a JSON object"),
        (lambda d: (d / "clusterprune_export.json").write_text('{"max_target_positions": "x"}'), "is not a length"),
        (lambda d: (d / "generation_config.json").write_text('{"lang_to_id": [1]}'), "lang_to_id is not a table"),
    ],
)
def test_a_damaged_ctranslate2_directory_names_its_file(tmp_path, damage, pattern):
    from clusterprune.evaluation.runtimes import _check_ct2_files

    d = tmp_path / "ct2"
    d.mkdir()
    (d / "model.bin").write_bytes(b"\0" * 8)
    for name in (
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "clusterprune_export.json",
        "generation_config.json",
    ):
        (d / name).write_text("{}")
    (d / "vocabulary.json").write_text('["a"]')
    assert _check_ct2_files(d) == ({}, {})
    damage(d)
    with pytest.raises(ClusterpruneError, match=pattern):
        _check_ct2_files(d)


# ---------------------------------------------------------------- nothing left behind, checked first


def test_a_failed_or_interrupted_write_removes_the_folders_it_created(tmp_path):
    for stop in (RuntimeError("failed"), KeyboardInterrupt()):
        with pytest.raises(type(stop)):
            with atomic_directory(tmp_path / "a" / "b" / "out") as tmp:
                (tmp / "x").write_text("partial")
                raise stop
        assert list(tmp_path.iterdir()) == []


def test_palettize_under_sigterm_leaves_nothing(tmp_path, checkpoints):
    args = ["palettize", str(checkpoints["whisper"]), str(tmp_path / "a" / "b" / "o")]
    code, err = sigterm_mid_run("clusterprune.palettize.pipeline", "palettize_tensor", args)
    assert code == 143 and "terminated" in err
    assert list(tmp_path.iterdir()) == []


def test_a_report_that_cannot_be_written_is_found_before_the_work(capsys, checkpoints, tmp_path):
    (tmp_path / "a-file").write_text("")
    for report, pattern in (
        (tmp_path / "a-file" / "r.json", "a-file is not a directory"),
        ("/proc/r.json", "cannot be written in /proc"),
    ):
        one_line_error(capsys, ["palettize", checkpoints["whisper"], tmp_path / "o", "--report", report], pattern)
        assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- messages that say what to do


def test_the_api_refuses_wrong_types_with_its_own_error(checkpoints, tmp_path):
    src = checkpoints["whisper"]
    for call in (
        lambda: clusterprune.palettize(src, tmp_path / "o", 42),
        lambda: clusterprune.palettize(5, tmp_path / "o"),
        lambda: clusterprune.palettize(src, 5),
        lambda: clusterprune.inspect(3),
        lambda: clusterprune.selfgen(src, tmp_path / "s", clips="2"),
        lambda: clusterprune.load_folded(None),
    ):
        with pytest.raises(InvalidArgumentError):
            call()
    assert list(tmp_path.iterdir()) == []


def test_palettize_takes_the_statistics_its_first_step_reads(capsys, checkpoints, tmp_path):
    src = checkpoints["whisper"]
    one_line_error(capsys, ["palettize", src, tmp_path / "o", "--stats", tmp_path / "x"], "no such statistics file")
    one_line_error(
        capsys,
        ["palettize", src, tmp_path / "o", "--sparsity", "0.1", "--recipe", "datafree-selfgen"],
        "needs --stats FILE",
    )


@needs_package
def test_palettize_passes_statistics_to_its_first_step(capsys, trainable, selfgen_stats, tmp_path):
    out = tmp_path / "o"
    args = ["--sparsity", "0.1", "--recipe", "datafree-selfgen", "--stats", selfgen_stats, "--quiet"]
    assert run(capsys, "palettize", trainable["whisper"], out, *args)[0] == 0
    plan = json.loads((out / "clusterprune_palette.json").read_text())
    assert plan["source_compression"]["recipe"]["activations"] == "selfgen"


def test_a_closed_standard_output_ends_quietly(checkpoints):
    p = subprocess.Popen(
        [sys.executable, "-m", "clusterprune.cli", "inspect", str(checkpoints["whisper"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p.stdout.close()  # before the process writes: its first line meets a closed pipe
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141 and err == b""
