"""GPU compression time and CPU/GPU agreement, in one call (for a lent GPU machine).

    python benches/bench_gpu.py [--recipe paper] [--device cuda|numpy] [--layers 32]
        [--workdir /tmp/bench-gpu] [--agree-modules 4]

1. Builds the Whisper-large-v3-shaped checkpoint of bench_whisper_large.py (synthetic fp16).
2. Warms the device up (kernel compilation, a GEMM) outside the timed region, then compresses the
   whole model at 10 % sparsity with `--recipe` (default `paper`: the k-means engine) on
   `--device` (cuda: CuPy; numpy: the same code path on the CPU, the smoke run where no GPU is
   present) and reports the time (goal on cuda: under 30 s on one H100 / H200).
3. On a sample of clustered modules, runs the Rust CPU engine and the namespace path with the
   same seed and compares assignments and inertia (agreement: same assignments, or inertia
   within 1e-4 relative).
4. Compresses the same modules twice on the device and reports whether the outputs are
   byte-identical (max abs difference otherwise).
Prints short tables; writes WORKDIR/bench_gpu.json; exits 1 when a module disagrees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clusterprune  # noqa: E402
from bench_whisper_large import make_checkpoint, unit_matrix  # noqa: E402
from clusterprune.engine.xp import kmeans_xp, namespace  # noqa: E402
from clusterprune.io.checkpoint import Checkpoint  # noqa: E402
from clusterprune.models.registry import unit_map  # noqa: E402


def warm_up(xp) -> None:
    """Compiles the kernels the k-means uses and runs a GEMM before anything is timed."""
    x = xp.asarray(np.random.default_rng(0).standard_normal((256, 64), dtype=np.float32))
    kmeans_xp(x, 16, 0, xp=xp, init="kmeans++", max_iter=2)
    kmeans_xp(x, 200, 0, xp=xp, init="ward", max_iter=2)
    if xp is not np:
        xp.cuda.Device().synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-gpu"))
    ap.add_argument("--agree-modules", type=int, default=4)
    ap.add_argument("--recipe", default="paper", help="recipe timed (default paper: the k-means engine)")
    ap.add_argument("--device", choices=("cuda", "numpy"), default="cuda")
    args = ap.parse_args()
    xp = namespace(args.device)
    device_name = xp.cuda.runtime.getDeviceProperties(0)["name"].decode() if xp is not np else "numpy (CPU)"
    src = args.workdir / f"whisper-large-shaped-{args.layers}"
    t = time.perf_counter()
    make_checkpoint(src, args.layers)
    print(f"checkpoint ready in {time.perf_counter() - t:.1f} s", flush=True)
    warm_up(xp)
    t = time.perf_counter()
    report = clusterprune.compress(
        src, args.workdir / "gpu-out", args.recipe, sparsity=0.1, device=args.device, overwrite=True, progress=False
    )
    device_seconds = time.perf_counter() - t
    print(f"whole model, recipe {args.recipe}, on {device_name}: {device_seconds:.1f} s", flush=True)
    plan = {m.name: m.k for m in report.plan.modules}
    rows = []
    with Checkpoint(src) as ckpt:
        umap = unit_map(ckpt.config, set(ckpt.where))
        clustered = [s for s in umap.modules if s.name in plan and plan[s.name] < s.n_units]
        if report.plan.recipe.method != "kmeans":
            clustered = []  # a removal recipe runs no k-means: nothing to compare
        step = max(len(clustered) // max(args.agree_modules, 1), 1)
        for spec in clustered[::step][: args.agree_modules]:
            x = unit_matrix(ckpt, spec)
            k = plan[spec.name]
            t = time.perf_counter()
            cpu = clusterprune.kmeans(x, k, 0)
            t_cpu = time.perf_counter() - t
            t = time.perf_counter()
            dev = kmeans_xp(x, k, 0, xp=xp)
            if xp is not np:
                xp.cuda.Device().synchronize()
            t_dev = time.perf_counter() - t
            again = kmeans_xp(x, k, 0, xp=xp)
            rel = abs(cpu.inertia - dev.inertia) / max(cpu.inertia, 1e-30)
            same = bool(np.array_equal(cpu.assignments, dev.assignments))
            repeat_diff = float(np.max(np.abs(dev.centroids - again.centroids)))
            rows.append(
                {
                    "module": spec.name,
                    "n": x.shape[0],
                    "d": x.shape[1],
                    "k": k,
                    "cpu_s": t_cpu,
                    "device_s": t_dev,
                    "same_assignments": same,
                    "inertia_rel_diff": rel,
                    "agree": same or rel <= 1e-4,
                    "repeat_max_abs_diff": repeat_diff,
                }
            )
            print(f"  {spec.name}: same assignments {same}, inertia rel diff {rel:.2e}", flush=True)
    result = {
        "device": device_name,
        "recipe": args.recipe,
        "layers": args.layers,
        "whole_model_seconds": device_seconds,
        "agreement": rows,
    }
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "bench_gpu.json").write_text(json.dumps(result, indent=2))
    print(
        f"\n| device | recipe | whole model, 10 % | goal |\n|---|---|---|---|\n| {device_name} | {args.recipe} | "
        f"{device_seconds:.1f} s | < 30 s on cuda |"
    )
    print("\n| module | N x d | K | CPU engine (s) | device (s) | same assignments | inertia rel. diff | repeat diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['module']} | {r['n']} x {r['d']} | {r['k']} | {r['cpu_s']:.2f} | {r['device_s']:.2f} | "
            f"{r['same_assignments']} | {r['inertia_rel_diff']:.1e} | {r['repeat_max_abs_diff']:.1e} |"
        )
    sys.exit(0 if all(r["agree"] for r in rows) else 1)


if __name__ == "__main__":
    main()
