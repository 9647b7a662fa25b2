"""CPU inference speed and size of folded checkpoints versus the dense model.

    python benches/bench_folded_speed.py MODEL_DIR [--sparsities 0.05,0.1,0.2] [--include REGEX]
        [--recipe paper] [--allocation A] [--budget units|params] [--repeats 7] [--workdir bench-out/folded]

For each sparsity: compress MODEL_DIR with --export folded, then time one fixed forward pass
(Whisper: encoder on its full window, 30 s of features, + decoder teacher-forced over 64 tokens
or its context if shorter; CTC models: 10 s of audio) of the dense and the folded model, interleaved, and report the median of the repeats, the
speed-up and the parameter count. Timings are side by side in one process on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import clusterprune
from clusterprune.models.hf import load_weights


def forward_fn(model, family: str):
    g = torch.Generator().manual_seed(0)
    if family == "whisper":
        feats = torch.randn(1, model.config.num_mel_bins, 2 * model.config.max_source_positions, generator=g)
        tokens = min(64, model.config.max_target_positions)
        dec = torch.randint(0, 50000, (1, tokens), generator=g) % model.config.vocab_size
        return lambda: model(input_features=feats, decoder_input_ids=dec)
    audio = torch.randn(1, 160000, generator=g)
    return lambda: model(audio)


def median_seconds(fn, repeats: int) -> float:
    times = []
    with torch.no_grad():
        fn()  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--sparsities", default="0.05,0.1,0.2")
    ap.add_argument("--include", default=None)
    ap.add_argument("--recipe", default="paper")
    ap.add_argument("--allocation", default=None, help="override the recipe's allocation")
    ap.add_argument("--budget", default=None, help="override the recipe's budget (units or params)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--workdir", type=Path, default=Path("bench-out/folded"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dense = load_weights(args.model_dir)
    family = dense.config.model_type
    n_dense = sum(p.numel() for p in dense.parameters())
    rows = []
    for s in [float(v) for v in args.sparsities.split(",")]:
        out = args.workdir / f"{args.recipe}-{s:g}"
        report = clusterprune.compress(
            args.model_dir,
            out,
            args.recipe,
            sparsity=s,
            export="folded",
            include=args.include,
            overwrite=True,
            progress=False,
            allocation=args.allocation,
            budget=args.budget,
        )
        folded = load_weights(out)
        f_dense, f_folded = forward_fn(dense, family), forward_fn(folded, family)
        t_dense, t_folded = [], []
        for _ in range(3):  # interleave so drift on a shared machine hits both
            t_dense.append(median_seconds(f_dense, args.repeats))
            t_folded.append(median_seconds(f_folded, args.repeats))
        td, tf = statistics.median(t_dense), statistics.median(t_folded)
        n = sum(p.numel() for p in folded.parameters())
        rows.append(
            {
                "sparsity": s,
                "achieved_sparsity": report.plan.achieved_sparsity,
                "params": n,
                "params_dense": n_dense,
                "size_ratio": n / n_dense,
                "dense_s": td,
                "folded_s": tf,
                "speedup": td / tf,
            }
        )
        print(
            f"sparsity {s:g}: {n:,} / {n_dense:,} parameters ({n / n_dense:.3f}), forward {tf * 1000:.1f} ms vs "
            f"{td * 1000:.1f} ms dense: speed-up {td / tf:.3f}x",
            flush=True,
        )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    setup = {"recipe": args.recipe, "allocation": args.allocation, "budget": args.budget, "include": args.include}
    (args.workdir / "folded_speed.json").write_text(
        json.dumps({"machine": machine, "setup": setup, "rows": rows}, indent=2)
    )
    print(f"\nmachine: {machine}")
    print(f"setup: {setup}")
    print("| sparsity | achieved | parameters (folded / dense) | forward dense (ms) | forward folded (ms) | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sparsity']:g} | {r['achieved_sparsity']:.4f} | {r['size_ratio']:.3f} | {1000 * r['dense_s']:.1f} | "
            f"{1000 * r['folded_s']:.1f} | {r['speedup']:.3f}x |"
        )


if __name__ == "__main__":
    main()
