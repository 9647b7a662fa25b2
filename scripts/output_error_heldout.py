"""How the output-error palettizer's choices (the column order of the index choice, the column
weights of the tables) fare on statistics they were not made from: every tensor that has an input
moment is palettized from the statistics FIT, and its modelled output error
sum over rows of (w - q)^T H (w - q) is measured under the held-out statistics TEST (another
`clusterprune selfgen --layer-inputs` run, e.g. with `--seed 1`), relative to the layer's output
energy w^T H w. No recorded speech and no WER: what `palettize --stats` minimises, out of sample.

    python scripts/output_error_heldout.py MODEL_DIR FIT TEST [--bits 3,4] [--min-size 2048] [--json OUT.json]

Prints one markdown row per (bits, variant, kind of tensor: linear layers, convolutions, the tied
token embedding): the held-out relative error summed over the tensors and its geometric mean;
`--json` writes the same rows. The embedding's error is the mean of its two roles' relative errors
(the input table's weight error and the output projection's; `pipeline.tied_moment`). Variants:

* plain k-means: the exact k-means of the weights, nearest entries (`palettize` without --stats);
* natural / diag(H): the columns in their order, tables weighted by diag(H);
* activation order / diag(H): the columns by descending diag(H);
* activation order / compensated cost: tables weighted by 1 / U_jj^2 (the package's method).
"""

from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from clusterprune.engine.rust import palettize_rows
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.io.jsontext import dumps
from clusterprune.io.stats import load_stats
from clusterprune.palettize.config import PaletteConfig
from clusterprune.palettize.targets import targets

# the subpackage's modules (the package's `palettize` attribute is the function of that name)
pipeline = importlib.import_module("clusterprune.palettize.pipeline")
output_error = importlib.import_module("clusterprune.palettize.output_error")

VARIANTS: dict[str, tuple[bool, str]] = {  # name: (activation order, table weights)
    "plain k-means": (False, "none"),
    "natural / diag(H)": (False, "diag"),
    "activation order / diag(H)": (True, "diag"),
    "activation order / compensated cost": (True, "compensated"),
}


KINDS = ["linear", "convolution", "embedding"]


def kind_of(t: Any) -> str:
    return "embedding" if t.embedding else ("convolution" if len(t.shape) > 2 else "linear")


def relative_errors(ckpt: Checkpoint, fit: Any, test: Any, config: PaletteConfig) -> dict[tuple[str, str], list[float]]:
    """Per (variant, kind of tensor), each tensor's held-out output error over its held-out
    output energy."""
    bits = config.bits
    chosen = targets(ckpt, config)
    fit_moments, test_moments = pipeline.Moments(chosen, fit, ckpt), pipeline.Moments(chosen, test, ckpt)
    out: dict[tuple[str, str], list[float]] = {}
    for t in chosen:
        h, held_out = fit_moments.get(t.name), test_moments.get(t.name)
        if h is None or held_out is None:
            continue
        w = ckpt.f32(t.name).reshape(t.rows, t.cols).astype(np.float64)
        energy = float(np.sum((w @ held_out) * w))
        for name, (act_order, weighting) in VARIANTS.items():
            if weighting == "none":
                r = palettize_rows(w.astype(np.float32), bits, method="exact")
                tables, idx = r.luts, r.indices
            else:
                f = output_error.factor(h, act_order=act_order)
                cw = np.maximum(np.diag(h), 0.0) if weighting == "diag" else f.column_weights()
                cw = np.maximum(cw / max(float(cw.mean()), 1e-30), 1e-6)
                tables = palettize_rows(w.astype(np.float32), bits, col_weights=cw, method="exact").luts
                idx = output_error.choose_indices(w, tables, f)
            q = np.take_along_axis(tables.astype(np.float64), idx.astype(np.intp), axis=1)
            rel = output_error.output_error(w, q, held_out) / energy if energy > 0 else 0.0
            out.setdefault((name, kind_of(t)), []).append(rel)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("fit", type=Path, help="statistics the palettizer reads (selfgen --layer-inputs)")
    ap.add_argument("test", type=Path, help="held-out statistics the error is measured under")
    ap.add_argument("--bits", default="3,4", help="comma-separated bits per weight (default 3,4)")
    ap.add_argument("--min-size", type=int, default=PaletteConfig().min_size, help="as palettize's (default 2048)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    fit, test = load_stats(args.fit), load_stats(args.test)
    rows = []
    with Checkpoint(args.model_dir) as ckpt:
        for bits in (int(b) for b in args.bits.split(",")):
            config = PaletteConfig(bits=bits, min_size=args.min_size)
            for (name, kind), rel in relative_errors(ckpt, fit, test, config).items():
                geo = math.exp(float(np.mean(np.log(np.maximum(rel, 1e-300))))) if rel else 0.0
                rows.append(
                    {
                        "bits": bits,
                        "variant": name,
                        "kind": kind,
                        "tensors": len(rel),
                        "sum": float(sum(rel)),
                        "geomean": geo,
                    }
                )
    rows.sort(key=lambda r: (r["bits"], KINDS.index(r["kind"]), list(VARIANTS).index(r["variant"])))
    print("| bits | tensors | variant | count | held-out relative output error, summed | geometric mean |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bits']} | {r['kind']} | {r['variant']} | {r['tensors']} | {r['sum']:.4f} | {r['geomean']:.5f} |")
    if args.json:
        args.json.write_text(dumps(rows, str(args.json), indent=2) + "\n")


if __name__ == "__main__":
    main()
