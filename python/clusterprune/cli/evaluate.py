"""`clusterprune eval`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .common import data_args


def register(sub: Any) -> None:
    e = sub.add_parser(
        "eval",
        help="word error rate of a checkpoint on local speech data",
        description="Transcribe DATA with MODEL_DIR (Whisper: greedy; HuBERT/wav2vec2: CTC argmax) and report WER. "
        "Needs the eval extra (pip install 'clusterprune[eval]'); CTranslate2 models also the ct2 extra. Under "
        "`torchrun --nproc_per_node N -m clusterprune.cli eval ...` the utterances are shared out; process 0 "
        "writes the JSON.",
    )
    data_args(e)
    e.add_argument(
        "model_dir",
        help="dense, fused, folded or palettized checkpoint, or an export-ct2 directory (runs in CTranslate2)",
    )
    e.add_argument("--json", metavar="OUT", help="write WER, counts and per-utterance hypotheses as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress and no summary line (use with --json)")
    e.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate
    from ..io.output import check_file_destination, write_json_atomic

    if args.json:  # checked before the (long) evaluation
        check_file_destination(args.json, sources=[args.model_dir, args.data], what="--json")
    result = evaluate(
        args.model_dir,
        args.data,
        subset=args.subset,
        limit=args.limit,
        batch_size=args.batch_size,
        language=args.language,
        task=args.task,
        progress=False if args.quiet else args.progress,
        device=args.device,
        compute_type=args.compute_type,
        threads=args.threads,
        shared=True,
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun, process 0 writes and reports
        return 0
    if args.json:
        write_json_atomic(args.json, result, sources=[args.model_dir, args.data])
    if args.quiet:
        return 0
    print(
        f"WER {100 * result['wer']:.2f} % on {result['num_utterances']} utterances ({result['reference_words']} words: "
        f"{result['substitutions']} sub, {result['deletions']} del, {result['insertions']} ins), "
        f"RTF {result['real_time_factor']:.3f}, {result['hit_length_bound']} hit the length bound "
        f"({result['runtime']}, {result['compute_type']})"
    )
    return 0
