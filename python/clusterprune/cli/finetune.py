"""`clusterprune finetune` (one process, or many under torchrun / accelerate launch)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(sub: Any) -> None:
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

    f.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.finetune import FinetuneConfig, finetune

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
