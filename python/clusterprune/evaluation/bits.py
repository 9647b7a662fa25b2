"""The bits axis of a sweep: palettize the dense model, or the model with structured removal first
(``stack``: a recipe at a sparsity, folded, then palettized), at every (allocation, bits) cell
(compact format), evaluate it, and show WER against bits and against the compact file's size."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ..io.checkpoint import Checkpoint
from ..palettize.config import ALLOCATIONS, BITS
from ..palettize.pipeline import fp16_bytes, palettize
from ..pipeline import compress


def check_bits(bits: list[int], allocations: list[str]) -> None:
    for b in bits:
        if b not in BITS:
            raise InvalidArgumentError(f"--bits {b} is not one of: {', '.join(map(str, BITS))}")
    for a in allocations:
        if a not in ALLOCATIONS:
            raise InvalidArgumentError(f"--bit-allocations {a!r} is not one of: {', '.join(ALLOCATIONS)}")


def cell_key(allocation: str, bits: int, stats: bool = False, stack: tuple[str, float] | None = None) -> str:
    on = f"-on-{stack[0]}-{stack[1]:g}" if stack else ""
    return f"palettize-{allocation}-{bits}b" + ("-stats" if stats else "") + on


def palettize_cell(
    model_dir: Path,
    dst: Path,
    allocation: str,
    bits: int,
    options: dict[str, Any],
    stats: str | Path | None = None,
    stack: tuple[str, float] | None = None,
    step_stats: str | Path | None = None,
) -> dict[str, Any]:
    """Palettizes one cell (``stats``: against each layer's output error, with the layer-input
    moments of that file; ``stack``: (recipe, sparsity) of a structured removal first, reading
    ``step_stats`` when the recipe reads statistics); the fields its results row records."""
    mixed = {"avg_bits": float(bits)} if allocation == "error" else {}
    source = model_dir
    folded = dst.parent / f"{dst.name}.folded"
    if stack is not None and stats is None and step_stats is not None:
        # the structured step reads the statistics, the palettization does not: two calls (one
        # palettize call would also palettize by the file's layer-input moments)
        compress(
            model_dir,
            folded,
            stack[0],
            sparsity=stack[1],
            export="folded",
            overwrite=True,
            progress=False,
            stats=step_stats,
        )
        source = folded
    elif stack is not None:
        mixed |= {"sparsity": stack[1], "recipe": stack[0]}
    with Checkpoint(model_dir) as dense:
        dense_fp16 = fp16_bytes(dense)
    try:
        report = palettize(
            source,
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
    finally:
        shutil.rmtree(folded, ignore_errors=True)
    return {
        "method": "palettize",
        "output_error": stats is not None,
        "allocation": allocation,
        "sparsity": stack[1] if stack else 0.0,
        "achieved_sparsity": achieved_sparsity(report.source_compression),
        "stacked_on": stack[0] if stack else None,
        "bits": bits,
        "avg_bits": report.avg_bits,
        "bytes_compact": report.bytes_compact,
        "size_ratio": report.bytes_compact / dense_fp16,  # of the dense model's fp16 file, stacked or not
    }


def achieved_sparsity(record: dict[str, Any] | None) -> float:
    """The share of units the structured step removed (its compression record: N and K per module)."""
    sizes = list((record or {}).get("modules", {}).values())
    total = sum(n for n, _ in sizes)
    return 1.0 - sum(k for _, k in sizes) / total if total else 0.0


def _series(r: dict[str, Any]) -> tuple[str, bool, str, float]:
    """One line of the plots: (allocation, by the output error, stacked on, at sparsity)."""
    return r["allocation"], bool(r.get("output_error", False)), r.get("stacked_on") or "", r["sparsity"]


def _label(series: tuple[str, bool, str, float]) -> str:
    alloc, by, on, sparsity = series
    return f"palettize / {alloc}" + (" / output error" if by else "") + (f" on {on} {sparsity:g}" if on else "")


def bits_table(rows: list[dict[str, Any]], dense_wer: float) -> list[str]:
    pal = sorted((r for r in rows if r["method"] == "palettize"), key=lambda r: (*_series(r), -r["bits"]))
    if not pal:
        return []
    lines = [
        "",
        "| palettize | by | stacked on | bits | avg bits | compact size / fp16 | WER % | x dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in pal:
        by = "output error (--stats)" if r.get("output_error") else "weight error"
        on = f"{r['stacked_on']} {r['sparsity']:g}" if r.get("stacked_on") else "-"
        lines.append(
            f"| {r['allocation']} | {by} | {on} | {r['bits']} | {r['avg_bits']:.2f} | {r['size_ratio']:.3f} | "
            f"{100 * r['wer']:.2f} | {r['wer'] / dense_wer:.2f} |"
        )
    return lines


def plot_bits(rows: list[dict[str, Any]], out: Path, plt: Any) -> None:
    """wer_vs_bits.png (WER against the average bits) and wer_vs_size.png (WER against the compact
    size over the fp16 file's), one line per allocation, method and structured step."""
    pal = [r for r in rows if r["method"] == "palettize"]
    if not pal:
        return
    dense = next(r["wer"] for r in rows if r["method"] == "dense")
    for x, xlabel, name in (
        ("avg_bits", "bits per palettized weight", "wer_vs_bits.png"),
        ("size_ratio", "compact size / the dense fp16 file", "wer_vs_size.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for series in sorted({_series(r) for r in pal}):
            pts = sorted((r[x], 100 * r["wer"]) for r in pal if _series(r) == series)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(series))
        ax.axhline(100 * dense, color="k", linestyle="--", label="dense")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("WER (%)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
