"""`clusterprune palettize`."""

from __future__ import annotations

import argparse
from typing import Any

from ..io.palette import FORMATS
from ..palettize.config import PaletteConfig
from .common import config_flags, recipe_name


def register(sub: Any) -> None:
    c = sub.add_parser(
        "palettize",
        help="palettize a checkpoint: per-channel k-means of the scalar weights into 2^bits values",
        description="Palettize SRC (a Hugging Face checkpoint directory, dense, fused or folded) into DST: "
        "the weights of every chosen tensor are clustered per output channel (or group of channels, or "
        "tensor) into 2^bits values (a look-up table + bits-wide indices). Data-free; mixed bits with "
        "--avg-bits. Guide: docs/guide/palettize.md.",
    )
    c.add_argument("src", help="source checkpoint directory (never modified)")
    c.add_argument("dst", help="destination directory (written atomically)")
    c.add_argument(
        "--format",
        choices=FORMATS,
        default="dequantized",
        help="dequantized: same tensors, loads with from_pretrained; compact: packed indices + tables "
        "(about bits/16 of the fp16 size), loads with clusterprune.load_palettized and clusterprune eval",
    )
    c.add_argument(
        "--sparsity",
        type=float,
        help="first compress SRC at this sparsity (folded export), then palettize the folded model",
    )
    c.add_argument("--recipe", type=recipe_name, metavar="NAME", help="recipe of that first step (default datafree)")
    c.add_argument(
        "--stats",
        metavar="FILE",
        help="self-generated statistics (clusterprune selfgen): with --layer-inputs moments in it, each layer is "
        "palettized against its output error (tables weighted by the input's second moment, indices chosen "
        "column by column with the error compensated); also read by the --sparsity step's recipe "
        "(datafree-selfgen)",
    )
    c.add_argument("--report", metavar="JSON", help="write the per-tensor plan and sizes as JSON")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.add_argument("--threads", type=int, help="worker threads of the Rust engine (default: all cores)")
    c.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
    c.add_argument("--quiet", action="store_true", help="no progress and nothing printed on success")
    config_flags(c, "palettization options", PaletteConfig.options())
    c.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..io.output import check_file_destination, write_json_atomic
    from ..palettize.pipeline import palettize
    from ..report import format_palettization

    if args.report:
        check_file_destination(args.report, sources=[args.src], what="--report")
    if args.recipe and args.sparsity is None:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError("--recipe is for the first (compress) step: give --sparsity too")
    report = palettize(
        args.src,
        args.dst,
        format=args.format,
        sparsity=args.sparsity,
        recipe=args.recipe,
        stats=args.stats,
        overwrite=args.overwrite,
        progress=False if args.quiet else args.progress,
        num_threads=args.threads,
        **{f.name: getattr(args, f.name) for f in PaletteConfig.options()},
    )
    data = report.to_dict()
    if args.report:
        write_json_atomic(args.report, data, sources=[args.src])
    if not args.quiet:
        print(format_palettization(data))
    return 0
