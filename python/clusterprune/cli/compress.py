"""`clusterprune compress`."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import DEFAULT_RECIPE, RECOMMENDED
from ..io.metadata import EXPORTS
from .common import recipe_flags, recipe_name, recipe_overrides


def _k_override(text: str) -> tuple[str, int]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected MODULE=K, got {text!r}")
    try:
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"K in {text!r} is not an integer") from None


def register(sub: Any) -> None:
    c = sub.add_parser(
        "compress",
        help="compress a Hugging Face checkpoint directory",
        description="Compress SRC (a Hugging Face checkpoint directory with config.json and safetensors "
        "weights, or a hub id in the local cache) into DST, with no data and no training. The default recipe, "
        "datafree, removes the FFN neurons of least modelled output variance (attention untouched); --recipe "
        "paper clusters attention heads and FFN neurons by k-means (Xu et al.). --export fused (default) writes "
        "the same shapes (and size) with the removed units tied or zeroed; --export folded writes the smaller "
        "model. Guide: docs/guide/compress.md.",
    )
    c.add_argument("src", help="source checkpoint directory (never modified)")
    c.add_argument("dst", help="destination directory (written atomically)")
    c.add_argument(
        "--sparsity",
        type=float,
        default=0.1,
        help="fraction of the recipe's units removed (budget units: per module; budget params: of all compressible "
        "parameters), in [0, 1) (default 0.1)",
    )
    c.add_argument(
        "--recipe",
        type=recipe_name,
        default=DEFAULT_RECIPE,
        metavar="NAME",
        help=f"named set of choices (default {DEFAULT_RECIPE}): {', '.join(RECOMMENDED)}; 'paper' reproduces "
        "Xu et al., datafree-selfgen needs --stats (docs/recipes.md; experimental recipes are listed there)",
    )
    c.add_argument(
        "--export",
        choices=EXPORTS,
        default="fused",
        help="fused (default): same shapes and size, loads with from_pretrained; folded: the smaller model, "
        "loads with clusterprune.load_folded and goes to CTranslate2 with export-ct2",
    )
    c.add_argument("--seed", type=int, default=0, help="seed of k-means++ and of the seeded models (default 0)")
    c.add_argument("--include", metavar="REGEX", help="only modules whose name matches (e.g. 'ffn$')")
    c.add_argument("--exclude", metavar="REGEX", help="skip modules whose name matches (e.g. 'attn')")
    c.add_argument("--report", metavar="JSON", help="write the plan and per-module results as JSON")
    c.add_argument(
        "--stats",
        metavar="FILE",
        help="activation statistics of SRC made by `clusterprune selfgen` (read by recipe datafree-selfgen)",
    )
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.add_argument(
        "--set-k",
        metavar="MODULE=K",
        type=_k_override,
        action="append",
        default=[],
        help="force K for one module (repeatable)",
    )
    recipe_flags(c)
    c.add_argument("--threads", type=int, help="worker threads of the CPU engine (default: all cores)")
    c.add_argument(
        "--device",
        choices=("cpu", "cuda", "numpy"),
        default="cpu",
        help="cpu: Rust engine; cuda: CuPy on the GPU (pip install 'clusterprune[gpu]'); numpy: the GPU code on the CPU",
    )
    c.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
    c.add_argument("--quiet", action="store_true", help="no progress and nothing printed on success")
    c.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..io.output import check_file_destination, write_json_atomic
    from ..pipeline import compress
    from ..report import format_compression

    if args.report:  # checked before any work: never inside the source, never a folder
        check_file_destination(args.report, sources=[args.src], what="--report")
    report = compress(
        args.src,
        args.dst,
        args.recipe,
        sparsity=args.sparsity,
        export=args.export,
        seed=args.seed,
        include=args.include,
        exclude=args.exclude,
        k_overrides=dict(args.set_k) or None,
        overwrite=args.overwrite,
        progress=False if args.quiet else args.progress,
        num_threads=args.threads,
        device=args.device,
        stats=args.stats,
        **recipe_overrides(args),
    )
    data = report.to_dict()
    if args.report:
        write_json_atomic(args.report, data, sources=[args.src])
    if not args.quiet:
        print(format_compression(data))
    return 0
