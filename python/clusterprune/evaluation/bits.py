"""The bits axis of a sweep: palettize the dense model at every (allocation, bits) cell (compact
format), evaluate it, and show WER against bits (and against the file's size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ..palettize.config import ALLOCATIONS, BITS
from ..palettize.pipeline import palettize


def check_bits(bits: list[int], allocations: list[str]) -> None:
    for b in bits:
        if b not in BITS:
            raise InvalidArgumentError(f"--bits {b} is not one of: {', '.join(map(str, BITS))}")
    for a in allocations:
        if a not in ALLOCATIONS:
            raise InvalidArgumentError(f"--bit-allocations {a!r} is not one of: {', '.join(ALLOCATIONS)}")


def cell_key(allocation: str, bits: int, stats: bool = False) -> str:
    return f"palettize-{allocation}-{bits}b" + ("-stats" if stats else "")


def palettize_cell(
    model_dir: Path,
    dst: Path,
    allocation: str,
    bits: int,
    options: dict[str, Any],
    stats: str | Path | None = None,
) -> dict[str, Any]:
    """Palettizes one cell (``stats``: against each layer's output error, with the layer-input
    moments of that file); the fields its results row records."""
    mixed = {"avg_bits": float(bits)} if allocation == "error" else {}
    report = palettize(
        model_dir,
        dst,
        bits=bits,
        allocation=allocation,
        format="compact",
        overwrite=True,
        progress=False,
        stats=stats,
        **mixed,
        **options,
    )
    return {
        "method": "palettize",
        "output_error": stats is not None,
        "allocation": allocation,
        "sparsity": 0.0,
        "achieved_sparsity": 0.0,
        "bits": bits,
        "avg_bits": report.avg_bits,
        "bytes_compact": report.bytes_compact,
        "size_ratio": report.bytes_compact / report.bytes_fp16,
    }


def bits_table(rows: list[dict[str, Any]], dense_wer: float) -> list[str]:
    pal = sorted(
        (r for r in rows if r["method"] == "palettize"),
        key=lambda r: (r["allocation"], r.get("output_error", False), -r["bits"]),
    )
    if not pal:
        return []
    lines = [
        "",
        "| palettize | by | bits | avg bits | compact size / fp16 | WER % | x dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in pal:
        by = "output error (--stats)" if r.get("output_error") else "weight error"
        lines.append(
            f"| {r['allocation']} | {by} | {r['bits']} | {r['avg_bits']:.2f} | {r['size_ratio']:.3f} | "
            f"{100 * r['wer']:.2f} | {r['wer'] / dense_wer:.2f} |"
        )
    return lines


def plot_bits(rows: list[dict[str, Any]], out: Path, plt: Any) -> None:
    """wer_vs_bits.png: WER against the average bits, one line per allocation."""
    pal = [r for r in rows if r["method"] == "palettize"]
    if not pal:
        return
    dense = next(r["wer"] for r in rows if r["method"] == "dense")
    fig, ax = plt.subplots(figsize=(6, 4))
    for alloc, by in sorted({(r["allocation"], r.get("output_error", False)) for r in pal}):
        pts = sorted(
            (r["avg_bits"], 100 * r["wer"])
            for r in pal
            if (r["allocation"], r.get("output_error", False)) == (alloc, by)
        )
        label = f"palettize / {alloc}" + (" / output error" if by else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.axhline(100 * dense, color="k", linestyle="--", label="dense")
    ax.set_xlabel("bits per palettized weight")
    ax.set_ylabel("WER (%)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "wer_vs_bits.png", dpi=120)
    plt.close(fig)
