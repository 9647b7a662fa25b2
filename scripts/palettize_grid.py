"""The palettization grid of docs/results/palettize.md: every cell is
palettized (compact format) with `clusterprune.palettize`, evaluated over all utterances of DATA,
and appended to OUT/results.jsonl (cells already there are skipped on a re-run).

    python scripts/palettize_grid.py MODEL_DIR --data ../shared/data/librispeech --out docs/palettize
        [--cells NAME,NAME]   # default: every cell below

Each cell: a name and the palettize options (PaletteConfig fields, plus sparsity / recipe for the
stacked cells, which fold first)."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import clusterprune
from clusterprune.evaluation.data import load_utterances
from clusterprune.evaluation.evaluate import evaluate

G8 = {"granularity": "per-grouped-channel", "group_size": 8}  # 8 divides every tiny.en row count
CELLS: dict[str, dict[str, Any]] = {
    "uniform-8": {"bits": 8},
    "uniform-6": {"bits": 6},
    "uniform-5": {"bits": 5},
    "uniform-4": {"bits": 4},
    "uniform-3": {"bits": 3},
    "datafree-10%-uniform-6": {"bits": 6, "sparsity": 0.1, "recipe": "datafree"},
    "datafree-10%-uniform-4": {"bits": 4, "sparsity": 0.1, "recipe": "datafree"},
    "error-4": {"avg_bits": 4.0},
    "variance-4": {"bits": 4, "allocation": "variance"},
    "error-3.5": {"avg_bits": 3.5},
    "error-3": {"avg_bits": 3.0},
    "grouped8-8": {"bits": 8, **G8},
    "grouped8-4": {"bits": 4, **G8},
    "uniform-3-embedding-6": {"bits": 3, "embedding_bits": 6},
    "error-4.5": {"avg_bits": 4.5},
    "uniform-4-input-weighted": {"bits": 4, "weighting": "input"},
    "uniform-3-input-weighted": {"bits": 3, "weighting": "input"},
    "uniform-4-outliers": {"bits": 4, "outliers": 0.005},
    "uniform-4-binned": {"bits": 4, "method": "binned"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cells", help="comma-separated cell names (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = {json.loads(line)["cell"] for line in results.read_text().splitlines()} if results.exists() else set()
    names = args.cells.split(",") if args.cells else list(CELLS)
    utts = load_utterances(args.data, None, None)
    if "dense" not in done:
        w = evaluate(args.model_dir, None, utterances=utts, batch_size=16)
        with results.open("a") as fh:
            fh.write(json.dumps({"cell": "dense", "options": {}, "wer": w["wer"], "size_ratio": 1.0}) + "\n")
    for name in names:
        if name in done:
            continue
        options = dict(CELLS[name])
        dst = args.out / "models" / name
        t0 = time.monotonic()
        report = clusterprune.palettize(args.model_dir, dst, format="compact", overwrite=True, **options)
        seconds = time.monotonic() - t0
        w = evaluate(dst, None, utterances=utts, batch_size=16)
        row = {
            "cell": name,
            "options": options,
            "wer": w["wer"],
            "hit_length_bound": w["hit_length_bound"],
            "avg_bits": report.avg_bits,
            "bits": sorted({t.bits for t in report.tensors}),
            "bytes_fp16": report.bytes_fp16,
            "bytes_compact": report.bytes_compact,
            "bytes_written": report.bytes_written,
            "size_ratio": report.bytes_compact / report.bytes_fp16,
            "modelled_error": sum(t.rel_error for t in report.tensors),
            "palettize_seconds": seconds,
        }
        with results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{name}: WER {100 * w['wer']:.2f} %, {row['size_ratio']:.3f} x fp16", flush=True)
        shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(args.out / "models", ignore_errors=True)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    (args.out / "results.md").write_text(table(rows))
    plot(rows, args.out)


def table(rows: list[dict[str, Any]]) -> str:
    """Sizes are against the dense model's fp16 file (a stacked cell's source is smaller)."""
    dense = next(r["wer"] for r in rows if r["cell"] == "dense")
    fp16 = max(r.get("bytes_fp16", 0) for r in rows)
    lines = [
        "| cell | options | avg bits | bits used | compact MB | / dense fp16 | WER % | x dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        bits = "/".join(map(str, r.get("bits", []))) or "-"
        avg = f"{r['avg_bits']:.2f}" if "avg_bits" in r else "16"
        size = r.get("bytes_compact", fp16)
        lines.append(
            f"| {r['cell']} | {opts} | {avg} | {bits} | {size / 1e6:.1f} | {size / fp16:.3f} | {100 * r['wer']:.2f} | "
            f"{r['wer'] / dense:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """wer_vs_size.png: WER against the compact file's size (fraction of the fp16 file)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    dense = next(r["wer"] for r in rows if r["cell"] == "dense")
    fp16 = max(r.get("bytes_fp16", 0) for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["cell"] == "dense" or r["wer"] > 10 * dense:
            continue  # off the chart: named in results.md
        x = r["bytes_compact"] / fp16
        ax.scatter(x, 100 * r["wer"], s=18)
        ax.annotate(r["cell"], (x, 100 * r["wer"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.axhline(100 * dense, color="k", linestyle="--", label="dense (fp16 file = 1.0)")
    ax.axhline(110 * dense, color="grey", linestyle=":", label="1.10 x dense")
    ax.set_xlabel("compact file size / dense fp16 file size")
    ax.set_ylabel("WER (%)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "wer_vs_size.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
