"""`clusterprune sweep`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import BUDGETS
from ..io.metadata import EXPORTS
from .common import data_args, floats, names


def register(sub: Any) -> None:
    w = sub.add_parser(
        "sweep",
        help="compress and evaluate a grid of methods x allocations x sparsities",
        description="Compress MODEL_DIR with every method / allocation / sparsity, evaluate each (and the dense "
        "model once) on DATA, and write DIR/results.json, results.md, wer_vs_sparsity.png and k_plan.png. "
        "Finished cells are skipped on a re-run.",
    )
    data_args(w)
    w.add_argument("model_dir", help="dense checkpoint directory")
    w.add_argument("--sparsities", default="0.02,0.05,0.1,0.2", help="comma-separated (default 0.02,0.05,0.1,0.2)")
    w.add_argument("--methods", default="kmeans,magnitude", help="methods or recipe names, comma-separated")
    w.add_argument(
        "--allocations",
        default="uniform,variance",
        help="comma-separated; 'recipe' = each recipe's own allocation (default uniform,variance)",
    )
    w.add_argument("--export", choices=EXPORTS, default="fused")
    w.add_argument("--budget", choices=BUDGETS, help="override every recipe's budget (units or params)")
    w.add_argument("--include", metavar="REGEX", help="only modules whose name matches")
    w.add_argument("--exclude", metavar="REGEX", help="skip modules whose name matches")
    w.add_argument("--keep-models", action="store_true", help="keep every compressed checkpoint")
    w.add_argument(
        "--runtime",
        choices=("transformers", "ct2"),
        default="transformers",
        help="ct2: export every model (dense too) with export-ct2 and evaluate it in CTranslate2 (--compute-type)",
    )
    w.add_argument(
        "--bits",
        default="",
        help="also palettize the dense model at these bits, comma-separated (e.g. 8,6,5,4,3; compact format); "
        "give --sparsities '' for a bits-only sweep",
    )
    w.add_argument(
        "--bit-allocations", default="uniform", help="palettize allocations: uniform, variance, error (comma-separated)"
    )
    w.add_argument(
        "--bit-sparsities",
        default="",
        help="also palettize the model folded after structured removal at these sparsities (comma-separated): "
        "every --bits cell stacked on --bit-recipe",
    )
    w.add_argument(
        "--bit-recipe",
        metavar="NAME",
        help="recipe of that structured step (default datafree-selfgen with --stats, else datafree)",
    )
    w.add_argument("--granularity", help="palettize granularity (default per-channel)")
    w.add_argument("--group-size", type=int, help="palettize rows per table with per-grouped-channel")
    w.add_argument(
        "--stats",
        metavar="FILE",
        help="statistics of `clusterprune selfgen`: read by datafree-selfgen cells; made with --layer-inputs, "
        "every --bits cell is also palettized by the output error",
    )
    w.add_argument("--out", required=True, help="output directory")
    w.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.sweep import sweep

    summary = sweep(
        args.model_dir,
        args.data,
        args.out,
        sparsities=floats(args.sparsities, "--sparsities"),
        methods=names(args.methods),
        allocations=names(args.allocations),
        subset=args.subset,
        limit=args.limit,
        batch_size=args.batch_size,
        export=args.export,
        include=args.include,
        exclude=args.exclude,
        keep_models=args.keep_models,
        progress=args.progress,
        budget=args.budget,
        device=args.device,
        runtime=args.runtime,
        compute_type=args.compute_type,
        threads=args.threads,
        bits=[int(b) for b in floats(args.bits, "--bits")],
        bit_allocations=names(args.bit_allocations),
        stats=args.stats,
        bit_sparsities=floats(args.bit_sparsities, "--bit-sparsities"),
        bit_recipe=args.bit_recipe,
        palette_options={k: v for k, v in (("granularity", args.granularity), ("group_size", args.group_size)) if v},
    )
    print(Path(args.out, "results.md").read_text())
    print(f"dense WER {100 * summary['dense_wer']:.2f} %; results in {args.out}")
    return 0
