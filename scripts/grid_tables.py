"""The recipe-grid tables and plots of docs/results/recipes.md, from the measured sweeps under docs/recipe-grid/.

    python scripts/grid_tables.py [docs/recipe-grid]

Sweeps whose directory name starts with "ffn" form the FFN grid (sparsity = fraction of FFN
neurons), those starting with "all" the all-weights grid (fraction of all compressible
parameters). A cell measured in several sweeps must agree (same WER) or the script stops.
speed/*.json (benches/bench_folded_speed.py output) add the folded model's CPU speed-up per point.
Writes grid_ffn.png and grid_all.png and prints the markdown tables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clusterprune.evaluation.sweep import plot


def load(root: Path, prefix: str) -> list[dict[str, Any]]:
    cells: dict[tuple[str, str, float], dict[str, Any]] = {}
    for path in sorted(root.glob(f"{prefix}*/results.json")):
        for row in json.loads(path.read_text()):
            key = (row["method"], row["allocation"], row["sparsity"])
            old = cells.get(key)
            if old is not None and abs(old["wer"] - row["wer"]) > 1e-12:
                sys.exit(f"{path}: cell {key} disagrees with an earlier sweep ({row['wer']} vs {old['wer']})")
            cells[key] = row
    return list(cells.values())


def table(rows: list[dict[str, Any]], cell: Any) -> str:
    dense = next(r["wer"] for r in rows if r["method"] == "dense")
    points = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
    by = {(r["method"], r["allocation"], r["sparsity"]): r for r in rows}
    lines = [
        "| recipe | allocation | " + " | ".join(f"{100 * p:g} %" for p in points) + " |",
        "|---|---|" + "---|" * len(points),
    ]
    for m, a in sorted({(r["method"], r["allocation"]) for r in rows if r["method"] != "dense"}):
        vals = [cell(by[(m, a, p)], dense) if (m, a, p) in by else "" for p in points]
        lines.append(f"| {m} | {a} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def speed_table(root: Path) -> str:
    files = sorted((root / "speed").glob("*.json"))
    if not files:
        return ""
    lines = ["| plan (shapes) | sparsity | achieved | parameters folded / dense | speed-up |", "|---|---|---|---|---|"]
    machine = ""
    for f in files:
        data = json.loads(f.read_text())
        machine = data["machine"]
        for r in data["rows"]:
            lines.append(
                f"| {f.stem} | {100 * r['sparsity']:g} % | {100 * r['achieved_sparsity']:.1f} % | "
                f"{r['size_ratio']:.3f} | {r['speedup']:.2f}x |"
            )
    return "\n".join(lines) + f"\n\n(machine: {machine})"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/recipe-grid")
    ffn, every = load(root, "ffn"), load(root, "all")
    for rows, name in ((ffn, "grid_ffn"), (every, "grid_all")):
        out = root / name
        out.mkdir(exist_ok=True)
        plot(rows, out)
        (out / "k_plan.png").unlink(missing_ok=True)
    print("FFN grid, WER % (x dense):\n")
    print(table(ffn, lambda r, d: f"{100 * r['wer']:.2f} ({r['wer'] / d:.2f}x)"))
    print("\nAll-weights grid, WER % (achieved sparsity, utterances at the length bound):\n")
    print(
        table(
            every,
            lambda r, d: f"{100 * r['wer']:.2f} ({100 * r['achieved_sparsity']:.1f} %, {r['hit_length_bound']})",
        )
    )
    speed = speed_table(root)
    if speed:
        print("\nFolded model, CPU forward pass speed-up over dense:\n")
        print(speed)


if __name__ == "__main__":
    main()
