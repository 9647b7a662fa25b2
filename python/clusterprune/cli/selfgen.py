"""`clusterprune selfgen`: activation statistics from the model's own response to synthetic input."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    c = sub.add_parser(
        "selfgen",
        help="measure activation statistics on self-generated inputs (no recorded speech; needs the hf extra)",
        description="Run the dense model MODEL on seeded speech-like synthetic clips (a source-filter "
        "synthesiser: no recorded speech) and, for Whisper, on transcripts it samples itself; write every FFN "
        "module's activation mean and covariance and its residual-stream variance to OUT (one safetensors "
        "file, written atomically). `clusterprune compress MODEL DST --recipe datafree-selfgen --stats OUT` "
        "reads it without torch. Deterministic: one torch thread, seeded synthesis and sampling; under "
        "`torchrun --nproc_per_node N -m clusterprune.cli selfgen ...` the clips are shared out and the file is "
        "the same for any N. Needs the hf extra (pip install 'clusterprune[hf]').",
    )
    c.add_argument("model", help="dense checkpoint directory (or a hub id in the local cache)")
    c.add_argument("out", help="statistics file to write (e.g. tiny.stats.safetensors)")
    c.add_argument("--clips", type=int, default=64, help="synthetic clips of 2-16 s (default 64)")
    c.add_argument("--decoder-samples", type=int, default=8, help="sampled transcripts per clip (default 8)")
    c.add_argument("--seed", type=int, default=0, help="seed of synthesis and sampling (default 0)")
    c.add_argument(
        "--audio",
        choices=("synth", "espeak"),
        default="synth",
        help="synth: the source-filter synthesiser's clips (default); espeak: the transcripts the model samples "
        "of those clips, read aloud by espeak-ng (rule-based formant speech, no recordings; Whisper only; "
        "needs the espeak-ng program: apt-get install espeak-ng)",
    )
    c.add_argument(
        "--device",
        default="cpu",
        help="torch device the model runs on (default cpu; e.g. cuda; under torchrun: each process's own GPU)",
    )
    c.add_argument(
        "--layer-inputs",
        action="store_true",
        help="also record the second moments of every linear layer's input, for `palettize --stats` "
        "(a larger file: about d^2 / 2 float32 per attention and FFN input)",
    )
    c.add_argument(
        "--sensitivity",
        action="store_true",
        # experimental (the docs' catalog): also each linear layer's and convolution's output Fisher
        # diagonal, by which `palettize --avg-bits --stats` then spends bits; it lost to uniform bits
        help=argparse.SUPPRESS,
    )
    c.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    c.add_argument("--quiet", action="store_true", help="no progress and nothing printed on success")
    c.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)"
    )
    c.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import selfgen
    from ..io.resolve import resolve_model

    model = resolve_model(args.model)
    stats = selfgen(
        model,
        args.out,
        clips=args.clips,
        decoder_samples=args.decoder_samples,
        seed=args.seed,
        audio=args.audio,
        progress=False if args.quiet else args.progress,
        overwrite=args.overwrite,
        device=args.device,
        layer_inputs=args.layer_inputs,
        sensitivity=args.sensitivity,
    )
    if args.quiet or stats is None:  # under torchrun, process 0 writes and reports
        return 0
    counts = sorted({m.count for m in stats.infos().values()})
    print(f"wrote {args.out}: {len(stats.modules)} FFN modules, {counts[0]}-{counts[-1]} positions each")
    return 0
