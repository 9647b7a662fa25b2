"""CTranslate2 import (checked against the ctranslate2 runtime on real speech), the data layer,
WER evaluation and the sweep, on whisper tiny.en from PyPI and the shared LibriSpeech utterances."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from clusterprune import cli
from clusterprune.ct2_import import import_ct2, locate_package, parse_model_bin
from clusterprune.errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedModelError
from conftest import LIBRISPEECH, PACKAGE, librispeech_copy, needs_data, needs_package

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("jiwer")
pytest.importorskip("soundfile")


@needs_package
@needs_data
def test_import_matches_ctranslate2_greedy_transcripts(tiny_en):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from clusterprune.data import load_utterances

    utts = load_utterances(LIBRISPEECH, "test-other", 6)
    proc = transformers.WhisperProcessor.from_pretrained(tiny_en)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_en, dtype=torch.float32).eval()
    where, _, _ = locate_package(PACKAGE)
    ct = ctranslate2.models.Whisper(str(where), device="cpu", compute_type="float32")
    feats = proc.feature_extractor([u.audio for u in utts], sampling_rate=16000, return_tensors="np").input_features
    prompt = proc.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    res = ct.generate(ctranslate2.StorageView.from_array(feats), [prompt] * len(utts), beam_size=1, max_length=200)
    ct_texts = [proc.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in res]
    with torch.no_grad():
        out = model.generate(torch.from_numpy(feats), max_new_tokens=150, do_sample=False, num_beams=1)
    hf_texts = [t.strip() for t in proc.tokenizer.batch_decode(out, skip_special_tokens=True)]
    assert hf_texts == ct_texts
    assert all(len(t.split()) >= 3 for t in hf_texts)


def _fake_distribution(site: Path, name: str, files: dict[str, bytes]) -> None:
    pkg = site / name.replace("-", "_")
    pkg.mkdir(parents=True)
    record = []
    for rel, data in files.items():
        (pkg / rel).write_bytes(data)
        record.append(f"{pkg.name}/{rel},,")
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@needs_package
def test_split_package_is_reassembled_and_checked(tmp_path, monkeypatch, tiny_en):
    where, blob, _ = locate_package(PACKAGE)
    aux = {f: (where / f).read_bytes() for f in ("config.json", "tokenizer.json", "vocabulary.txt")}
    cut = len(blob) // 3
    site = tmp_path / "site"
    _fake_distribution(site, "tiny-split-part1", {**aux, "model.bin": blob[:cut]})
    _fake_distribution(site, "tiny-split-part2", {"model.bin": blob[cut:]})
    _fake_distribution(site, "tiny-broken-part1", {**aux, "model.bin": blob[:cut]})
    monkeypatch.syspath_prepend(str(site))
    out = import_ct2(None, tmp_path / "out", package="tiny-split-part1")
    from clusterprune.checkpoint import Checkpoint

    with Checkpoint(out) as a, Checkpoint(tiny_en) as b:
        assert a.names() == b.names()
        assert all(np.array_equal(a.raw(n), b.raw(n)) for n in a.names())
        assert "tiny-split-part2" in a.files["model.safetensors"].metadata["clusterprune_source"]
    with pytest.raises(CorruptCheckpointError, match="incomplete"):
        import_ct2(None, tmp_path / "broken", package="tiny-broken-part1")
    assert not (tmp_path / "broken").exists()
    with pytest.raises(CheckpointNotFoundError, match="not installed"):
        import_ct2(None, tmp_path / "x", package="no-such-package-xyz")


@needs_package
def test_bad_ct2_checkpoints(tmp_path):
    where, blob, _ = locate_package(PACKAGE)
    with pytest.raises(CorruptCheckpointError, match="incomplete model.bin"):
        parse_model_bin(blob[:-100], "cut")
    with pytest.raises(CorruptCheckpointError, match="unexpected bytes"):
        parse_model_bin(blob + b"\0" * 8, "long")
    other = bytearray(blob)
    spec_at = blob.index(b"WhisperSpec")
    other[spec_at : spec_at + 7] = b"Ghisper"
    with pytest.raises(UnsupportedModelError, match="not a Whisper model"):
        from clusterprune.ct2_import import hf_tensors

        hf_tensors(parse_model_bin(bytes(other), "other"))
    src = tmp_path / "ct2"
    src.mkdir()
    code = cli.main(["import-ct2", str(src), str(tmp_path / "dst")])
    assert code == 1 and not (tmp_path / "dst").exists()


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
    # a folded checkpoint at sparsity 0 transcribes exactly like the dense one
    args = ["compress", str(tiny_en), str(tmp_path / "f0"), "--sparsity", "0", "--export", "folded", "--quiet"]
    assert cli.main(args) == 0
    folded = _eval_json(tmp_path / "f0", tmp_path / "f0.json")
    assert [u["hypothesis"] for u in folded["utterances"]] == [u["hypothesis"] for u in dense["utterances"]]


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
    from clusterprune.data import load_utterances

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
def test_saved_dataset_and_parquet_inputs(tmp_path):
    datasets = pytest.importorskip("datasets")
    from clusterprune.data import load_utterances

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
