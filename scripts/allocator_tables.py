"""Issue 15's tables and plot from the results of its sweeps and evaluations.

    python scripts/allocator_tables.py docs/allocator
    python scripts/allocator_tables.py docs/allocator-base --title "whisper base, 150 LibriSpeech utterances"

reads ``docs/allocator/*/results.json`` (``clusterprune sweep`` outputs) and
``docs/allocator/evals/*.json`` (``clusterprune eval --json`` of single models, each beside a
``.cell.json`` naming its recipe, allocation, budget, sparsity and achieved sparsity, and for
recipes that read statistics their ``stats_settings``), and writes
``results.md`` (WER % and x dense per recipe / allocation / budget / sparsity) and
``wer_vs_sparsity.png`` (one panel per budget).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _recipe_label(row: dict[str, Any]) -> str:
    """The recipe, and for recipes that read statistics, how their inputs were made (``selfgen
    --audio``; files made before that option existed carry no setting and are synth)."""
    method = row["method"]
    if "selfgen" not in method:
        return method
    return f"{method} ({row.get('stats_settings', {}).get('audio', 'synth')} statistics)"


def _rows(root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for results in sorted(root.glob("*/results.json")):
        for r in json.loads(results.read_text()):
            budget = r["data_key"].get("budget") or "units"
            rows.append({**r, "budget": budget, "source": results.parent.name})
    for cell in sorted((root / "evals").glob("*.cell.json")):
        meta = json.loads(cell.read_text())
        result = json.loads(cell.with_name(cell.name.replace(".cell.json", ".json")).read_text())
        rows.append({**meta, "wer": result["wer"], "source": "evals/" + cell.name})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--title", default="whisper tiny.en, 150 LibriSpeech utterances", help="the plot's title")
    args = ap.parse_args()
    rows = _rows(args.root)
    dense = [r["wer"] for r in rows if r.get("method") == "dense"]
    if not dense or max(dense) - min(dense) > 1e-12:
        raise SystemExit(f"expected one dense WER, found {sorted(set(dense))}")
    base = dense[0]
    cells: dict[tuple[str, str, str], dict[float, dict[str, Any]]] = {}
    for r in rows:
        if r.get("method") == "dense":
            continue
        key = (r["budget"], _recipe_label(r), r["allocation"])
        seen = cells.setdefault(key, {}).get(r["sparsity"])
        if seen is not None and abs(seen["wer"] - r["wer"]) > 1e-12:
            raise SystemExit(f"{key} at {r['sparsity']}: {seen['source']} and {r['source']} disagree")
        cells[key][r["sparsity"]] = r
    lines = [f"Dense WER {100 * base:.2f} %. WER % (x dense) [achieved sparsity of all compressible weights].", ""]
    for budget in ("units", "params"):
        keys = sorted(k for k in cells if k[0] == budget)
        if not keys:
            continue
        sparsities = sorted({s for k in keys for s in cells[k]})
        what = "FFN neurons" if budget == "units" else "all compressible weights"
        lines += [f"Budget: fraction of {what} removed.", ""]
        lines.append("| recipe | allocation | " + " | ".join(f"{100 * s:g} %" for s in sparsities) + " |")
        lines.append("|---|---|" + "---|" * len(sparsities))
        for k in keys:
            vals = []
            for s in sparsities:
                r = cells[k].get(s)
                vals.append(
                    f"{100 * r['wer']:.2f} ({r['wer'] / base:.2f}x) [{100 * r['achieved_sparsity']:.1f} %]" if r else ""
                )
            lines.append(f"| {k[1]} | {k[2]} | " + " | ".join(vals) + " |")
        lines.append("")
    (args.root / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = sorted({k[1:] for k in cells})  # one colour per recipe / allocation in both panels
    cmap = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    colour = {s: cmap(i % cmap.N) for i, s in enumerate(series)}
    for ax, budget in zip(axes, ("units", "params"), strict=True):
        for k in sorted(c for c in cells if c[0] == budget):
            pts = sorted(cells[k].items())
            xs, ys = [100 * s for s, _ in pts], [100 * r["wer"] for _, r in pts]
            ax.plot(xs, ys, marker="o", color=colour[k[1:]], label=f"{k[1]} / {k[2]}")
        ax.axhline(100 * base, color="k", lw=0.8, ls=":", label="dense")
        ax.axhline(140 * base, color="r", lw=0.8, ls="--", label="1.4x dense (goal)")
        ax.set_xlabel("% of FFN neurons removed" if budget == "units" else "% of compressible weights removed")
        ax.set_ylabel("WER %")
        ax.set_ylim(0, 40)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.root / "wer_vs_sparsity.png", dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
