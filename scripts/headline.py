"""The README's headline table: size, WER and speed of what a user gets from one Whisper model.

For each MODEL (a Hugging Face Whisper checkpoint directory), side by side in one run:

* dense, in transformers (fp32 compute) and in CTranslate2 int8 (export-ct2);
* `datafree`, 10 % of the FFN neurons, folded, in CTranslate2 int8 (compress + export-ct2);
* palettized, 5 and 4 bits per weight per output channel, compact file, in transformers.

WER on DATA (pooled, greedy decoding, the eval command's normaliser), speed in audio seconds per
second of decoding (batch 8, the machine's threads), size of the weights file each runtime reads
(model.safetensors, or CTranslate2's model.bin). Writes OUT (JSON, one row per cell with the
command that made it) and the markdown table beside it (OUT's name + _table.md); ``--readme`` also replaces the README's
table between its headline markers.

    python scripts/headline.py whisper-tiny.en whisper-base --data librispeech \
        --out docs/results/headline.json --workdir bench-out/headline --readme
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START, END = "<!-- headline:", "<!-- /headline -->"
HEADER = "| model | what | file | size (MB) | WER % | x dense | audio s/s |\n|---|---|---|---|---|---|---|"

# (cell, what a user gets, how it is made): the steps are clusterprune commands
CELLS: list[tuple[str, str, list[list[str]]]] = [
    ("dense", "dense, transformers", []),
    ("dense-ct2-int8", "dense, CTranslate2 int8", [["export-ct2", "{model}", "{out}", "--quantization", "int8"]]),
    (
        "datafree-ffn10-ct2-int8",
        "`datafree` 10 % of FFN neurons, folded, CTranslate2 int8",
        [
            ["compress", "{model}", "{out}.folded", "--sparsity", "0.1", "--export", "folded"],
            ["export-ct2", "{out}.folded", "{out}", "--quantization", "int8"],
        ],
    ),
    (
        "palettized-5bit",
        "palettized 5 bits per weight, compact",
        [["palettize", "{model}", "{out}", "--bits", "5", "--format", "compact"]],
    ),
    (
        "palettized-4bit",
        "palettized 4 bits per weight, compact",
        [["palettize", "{model}", "{out}", "--bits", "4", "--format", "compact"]],
    ),
]


def weights_bytes(model: Path) -> tuple[str, int]:
    """The weights file(s) a runtime reads, and their size."""
    if (model / "model.bin").is_file():
        return "model.bin", (model / "model.bin").stat().st_size
    files = sorted(model.glob("*.safetensors"))
    return ("model.safetensors" if len(files) == 1 else f"{len(files)} safetensors"), sum(
        f.stat().st_size for f in files
    )


def measure(
    model: Path, label: str, data: str, subset: str | None, limit: int | None, workdir: Path
) -> list[dict[str, Any]]:
    from clusterprune import cli
    from clusterprune.evaluation.data import load_utterances
    from clusterprune.evaluation.evaluate import evaluate

    utts = load_utterances(data, subset, limit)  # decoded once for every cell
    rows = []
    for cell, what, steps in CELLS:
        out = workdir / f"{label}-{cell}"
        commands = []
        for step in steps:
            argv = [a.format(model=model, out=out) for a in step]
            commands.append("clusterprune " + " ".join(argv))
            target = Path(argv[2])
            if not target.exists() and cli.main([*argv, "--quiet"]) != 0:
                sys.exit(f"headline: {' '.join(argv)} failed")
        evaluated = out if steps else model
        ct2 = (evaluated / "model.bin").is_file()
        result = evaluate(
            evaluated, data, subset=subset, utterances=utts, progress=False, compute_type="int8" if ct2 else None
        )
        file, size = weights_bytes(evaluated)
        eval_cmd = f"clusterprune eval {evaluated} --data DATA" + (" --compute-type int8" if ct2 else "")
        rows.append(
            {
                "model": label,
                "cell": cell,
                "what": what,
                "file": file,
                "bytes": size,
                "wer": result["wer"],
                "num_utterances": result["num_utterances"],
                "reference_words": result["reference_words"],
                "hit_length_bound": result["hit_length_bound"],
                "audio_seconds": result["audio_seconds"],
                "decode_seconds": result["decode_seconds"],
                "runtime": result["runtime"],
                "compute_type": result["compute_type"],
                "commands": [*commands, eval_cmd],
            }
        )
        print(
            f"{label:>16} {cell:<26} {size / 1e6:8.1f} MB  WER {100 * result['wer']:6.2f} %  "
            f"{result['audio_seconds'] / result['decode_seconds']:6.1f} audio s/s",
            flush=True,
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the recorded rows (the README's headline table)."""
    dense = {r["model"]: r["wer"] for r in rows if r["cell"] == "dense"}
    lines = [HEADER]
    for r in rows:
        ratio = r["wer"] / dense[r["model"]] if dense.get(r["model"]) else float("nan")
        lines.append(
            f"| {r['model']} | {r['what']} | {r['file']} | {r['bytes'] / 1e6:.1f} | {100 * r['wer']:.2f} | "
            f"{ratio:.2f}x | {r['audio_seconds'] / r['decode_seconds']:.1f} |"
        )
    return "\n".join(lines)


def replace_readme_table(text: str, table: str) -> str:
    start = text.index(START)
    body = text.index("\n", start) + 1
    end = text.index(END, body)
    return text[:body] + table + "\n" + text[end:]


def readme_table(text: str) -> str:
    """The table the README holds between its headline markers."""
    start = text.index(START)
    return text[text.index("\n", start) + 1 : text.index(END)].strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="Whisper checkpoint directories (labels: their names)")
    ap.add_argument("--data", required=True, help="evaluation speech (LibriSpeech layout, or what eval reads)")
    ap.add_argument("--subset")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out", type=Path, required=True, help="JSON to write; the markdown table goes beside it")
    ap.add_argument("--workdir", type=Path, default=Path("bench-out/headline"))
    ap.add_argument("--readme", action="store_true", help="also replace the README's headline table")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows = [row for m in args.models for row in measure(m, m.name, args.data, args.subset, args.limit, args.workdir)]
    import numpy
    import torch

    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {numpy.__version__}",
        "data": re.sub(r".*/", "", str(args.data).rstrip("/")),
        "seconds": time.monotonic() - started,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    table = render(rows)
    args.out.with_name(f"{args.out.stem}_table.md").write_text(table + "\n")
    if args.readme:
        README.write_text(replace_readme_table(README.read_text(), table))
    print(table)


if __name__ == "__main__":
    main()
