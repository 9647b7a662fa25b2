"""`clusterprune export-ct2`."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from ..exporters.ct2 import QUANTIZATIONS

    x = sub.add_parser(
        "export-ct2",
        help="export a Whisper checkpoint (dense, fused or folded) for CTranslate2 / faster-whisper",
        description="Write MODEL_DIR as a CTranslate2 Whisper directory (model.bin, config.json, vocabulary, "
        "tokenizer.json, preprocessor_config.json) that ctranslate2.models.Whisper(OUT) and "
        "faster_whisper.WhisperModel(OUT) load offline. Needs no torch (pip install 'clusterprune[ct2]'). "
        "Folded FFN widths carry over; removed heads are put back as zero heads (CTranslate2 has one head "
        "count per stack): the function is unchanged, attention runs no faster.",
    )
    x.add_argument("model_dir", help="Whisper checkpoint directory (or a Hugging Face hub id)")
    x.add_argument("out", help="destination directory (written atomically)")
    x.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="store the weights quantized (default: keep the checkpoint's dtype; a compute type can still be "
        "chosen when loading, e.g. faster-whisper's compute_type='int8')",
    )
    x.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    x.add_argument("--quiet", action="store_true", help="no progress and nothing printed on success")
    x.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..exporters.ct2 import export_ct2
    from ..report import megabytes

    record = export_ct2(args.model_dir, args.out, quantization=args.quantization, overwrite=args.overwrite)
    padded = record["padded_heads"]
    if args.quiet:
        return 0
    print(
        f"wrote CTranslate2 Whisper model {args.out}: model.bin {megabytes(record['model_bin_bytes'])}, "
        f"weights {record['quantization'] or 'as stored'}"
    )
    if padded:
        print(
            f"{len(padded)} attention modules had heads removed: they were padded back with zero heads to the "
            "stack's head count (same function; CTranslate2 runs their attention at full width)"
        )
    return 0
