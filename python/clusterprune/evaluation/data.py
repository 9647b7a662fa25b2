"""Evaluation data: LibriSpeech-layout directories, `datasets` saved with ``save_to_disk``, or
local parquet / json / csv files with an audio and a text column. ``datasets`` is the data layer;
audio is decoded with soundfile (mono, resampled to 16 kHz)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, InvalidArgumentError
from ..speech import SAMPLE_RATE, Utterance, resample

AUDIO_EXTS = (".flac", ".wav")
TEXT_COLUMNS = ("text", "transcript", "sentence", "transcription")

__all__ = ["SAMPLE_RATE", "Utterance", "decode_audio", "load_dataset_rows", "load_utterances"]


def decode_audio(source: str | bytes, label: str) -> np.ndarray:
    import soundfile

    try:
        data, sr = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32")
    except Exception as exc:  # soundfile raises several types for bad files
        raise CorruptCheckpointError(f"{label}: unreadable audio: {exc}") from None
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.size == 0:
        raise CorruptCheckpointError(f"{label}: empty audio")
    if sr != SAMPLE_RATE:  # band-limited, as Whisper's feature extractor expects 16 kHz
        data = resample(data, sr)
    return np.ascontiguousarray(data, dtype=np.float32)


def _librispeech_rows(root: Path) -> dict[str, list[str]]:
    """id / audio path / text rows of every ``*.trans.txt`` under ``root``."""
    rows: dict[str, list[str]] = {"id": [], "audio": [], "text": []}
    transcripts = sorted(root.rglob("*.trans.txt"))
    listed: set[Path] = set()
    for trans in transcripts:
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise CorruptCheckpointError(f"{trans}: not UTF-8 text (byte {exc.start})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            audio = next(
                (trans.parent / f"{utt}{e}" for e in AUDIO_EXTS if (trans.parent / f"{utt}{e}").is_file()), None
            )
            if audio is None:
                raise CheckpointNotFoundError(f"{trans}:{n}: no audio file {utt}.flac for this transcript line")
            rows["id"].append(utt)
            rows["audio"].append(str(audio))
            rows["text"].append(text)
            listed.add(audio)
    for audio in sorted(p for e in AUDIO_EXTS for p in root.rglob(f"*{e}")):
        if audio not in listed:
            raise CorruptCheckpointError(f"{audio}: no transcript line for this audio file in {audio.parent}")
    return rows


def load_dataset_rows(data: str | os.PathLike[str], subset: str | None) -> Any:
    """A ``datasets.Dataset`` with columns id, audio (path or {'bytes', 'path'}), text."""
    import datasets

    path = Path(data)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such data directory or file")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            key = subset or next(iter(ds))
            if key not in ds:
                raise InvalidArgumentError(f"{path}: no split {key!r} (has {', '.join(ds)})")
            ds = ds[key]
        return _normalise_columns(ds, str(path))
    if path.is_file() or (path.is_dir() and not list(path.rglob("*.trans.txt"))):
        files = (
            [path]
            if path.is_file()
            else sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".json", ".jsonl", ".csv"))
        )
        if not files:
            raise CheckpointNotFoundError(
                f"{path}: no LibriSpeech transcripts, saved dataset or parquet/json/csv files"
            )
        kind = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(files[0].suffix)
        if kind is None:
            raise InvalidArgumentError(f"{files[0]}: unsupported data file type")
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
        return _normalise_columns(ds, str(path))
    root = path
    if subset:
        root = path / subset
        if not root.is_dir():
            raise CheckpointNotFoundError(f"{root}: no such subset directory")
    return datasets.Dataset.from_dict(_librispeech_rows(root))


def _normalise_columns(ds: Any, label: str) -> Any:
    cols = set(ds.column_names)
    text = next((c for c in TEXT_COLUMNS if c in cols), None)
    if "audio" not in cols or text is None:
        raise InvalidArgumentError(
            f"{label}: needs an 'audio' column and a text column ({', '.join(TEXT_COLUMNS)}); has {sorted(cols)}"
        )
    if "audio" in ds.features and hasattr(ds.features["audio"], "decode"):
        import datasets

        ds = ds.cast_column("audio", datasets.Audio(decode=False))
    if text != "text":
        ds = ds.rename_column(text, "text")
    if "id" not in cols:
        ds = ds.add_column("id", [f"{i:06d}" for i in range(len(ds))])
    return ds


def load_utterances(
    data: str | os.PathLike[str], subset: str | None = None, limit: int | None = None
) -> list[Utterance]:
    """Decoded utterances, in a stable order, at most ``limit``."""
    if limit is not None and limit < 1:
        raise InvalidArgumentError(f"--limit {limit} must be >= 1")
    ds = load_dataset_rows(data, subset)
    if len(ds) == 0:
        raise InvalidArgumentError(f"{data}: the data set is empty")
    n = len(ds) if limit is None else min(limit, len(ds))
    out = []
    for row in ds.select(range(n)):
        audio = row["audio"]
        if isinstance(audio, dict):
            source = audio.get("bytes") or audio.get("path")
            label = f"{data}: {audio.get('path') or row['id']}"
        else:
            source, label = audio, str(audio)
        if not row["text"] or not str(row["text"]).strip():
            raise CorruptCheckpointError(f"{label}: empty transcript for utterance {row['id']}")
        out.append(Utterance(str(row["id"]), decode_audio(source, label), str(row["text"])))
    return out
