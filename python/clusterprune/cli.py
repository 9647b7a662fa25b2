"""The `clusterprune` command line (torch-free: numpy and the Rust engine only)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ClusterpruneError, InvalidArgumentError
from .strategies import ALLOCATIONS, FEATURES, FUSIONS, INITS, METHODS, RECIPES, SCORES, VARIANCE_GROUPS, WEIGHTINGS


def _k_override(text: str) -> tuple[str, int]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected MODULE=K, got {text!r}")
    try:
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"K in {text!r} is not an integer") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterprune",
        description="Data-free, training-free structured compression of speech models (Whisper, HuBERT, "
        "wav2vec2) by channel-wise k-means parameter clustering (Xu et al., Interspeech 2026).",
    )
    parser.add_argument("--version", action="version", version=f"clusterprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "compress",
        help="compress a Hugging Face checkpoint directory",
        description="Compress SRC (a Hugging Face checkpoint directory with config.json and safetensors "
        "weights) into DST. Attention heads and FFN neurons are clustered (or pruned) per module.",
    )
    c.add_argument("src", help="source checkpoint directory (never modified)")
    c.add_argument("dst", help="destination directory (written atomically)")
    c.add_argument(
        "--sparsity", type=float, default=0.1, help="fraction of units removed per module, in [0, 1) (default 0.1)"
    )
    c.add_argument("--recipe", choices=sorted(RECIPES), default="paper", help="named set of choices (default: paper)")
    c.add_argument("--method", choices=METHODS, help="kmeans (clustering) or magnitude (prune smallest units)")
    c.add_argument("--allocation", choices=ALLOCATIONS, help="uniform K per module or the paper's variance-mixed plan")
    c.add_argument(
        "--export",
        choices=("fused", "folded"),
        default="fused",
        help="fused: same shapes, loads with from_pretrained; folded: smaller model for load_folded",
    )
    c.add_argument("--seed", type=int, default=0, help="k-means++ seed (default 0)")
    c.add_argument("--include", metavar="REGEX", help="only modules whose name matches (e.g. 'ffn$')")
    c.add_argument("--exclude", metavar="REGEX", help="skip modules whose name matches (e.g. 'attn')")
    c.add_argument("--report", metavar="JSON", help="write the plan and per-module results as JSON")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.add_argument(
        "--set-k",
        metavar="MODULE=K",
        type=_k_override,
        action="append",
        default=[],
        help="force K for one module (repeatable)",
    )
    g = c.add_argument_group("recipe options (override the recipe)")
    g.add_argument("--feature", choices=sorted(FEATURES), help="what k-means sees of a unit")
    g.add_argument("--weighting", choices=sorted(WEIGHTINGS), help="scaling of the feature blocks")
    g.add_argument("--fusion", choices=sorted(FUSIONS), help="centroid (consumer summed when folded) or mean")
    g.add_argument("--score", choices=sorted(SCORES), help="magnitude score")
    g.add_argument(
        "--variance-groups", choices=VARIANCE_GROUPS, help="module types ranked together by the variance allocator"
    )
    g.add_argument("--high-factor", type=float, help="K multiplier of the high-variance third (paper 1.2)")
    g.add_argument("--init", choices=INITS, help="k-means initialisation")
    g.add_argument("--max-iter", type=int, help="maximum Lloyd iterations")
    c.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    c.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
    c.add_argument("--quiet", action="store_true", help="print nothing on success")

    i = sub.add_parser("inspect", help="list a checkpoint's compressible modules (and its plan, if compressed)")
    i.add_argument("src", help="checkpoint directory")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _compress(args: argparse.Namespace) -> int:
    from .pipeline import compress
    from .report import format_compression, write_json_atomic

    if args.threads is not None and args.threads < 1:
        raise InvalidArgumentError(f"--threads {args.threads} must be >= 1")
    report = compress(
        args.src,
        args.dst,
        args.sparsity,
        recipe=args.recipe,
        export=args.export,
        seed=args.seed,
        include=args.include,
        exclude=args.exclude,
        k_overrides=dict(args.set_k) or None,
        overwrite=args.overwrite,
        progress=args.progress,
        num_threads=args.threads,
        method=args.method,
        allocation=args.allocation,
        feature=args.feature,
        weighting=args.weighting,
        fusion=args.fusion,
        score=args.score,
        variance_groups=args.variance_groups,
        high_factor=args.high_factor,
        init=args.init,
        max_iter=args.max_iter,
    )
    data = report.to_dict()
    if args.report:
        write_json_atomic(args.report, data)
    if not args.quiet:
        print(format_compression(data))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from .inspect_checkpoint import inspect
    from .report import format_inspection

    info = inspect(args.src)
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"compress": _compress, "inspect": _inspect}[args.command](args)
    except ClusterpruneError as exc:
        print(f"clusterprune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clusterprune: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
