"""GPU benchmark and CPU/GPU agreement check, in one call (for a lent GPU machine).

    python benches/bench_gpu.py [--layers 32] [--workdir /tmp/bench-gpu] [--agree-modules 4]

1. Builds the Whisper-large-v3-shaped checkpoint of bench_whisper_large.py (synthetic fp16).
2. Compresses the whole model at 10 % sparsity with --device cuda (CuPy) and reports the time
   (goal: under 30 s on one H100).
3. On a sample of clustered modules, runs the Rust CPU engine and the CuPy path with the same
   seed and compares assignments and inertia (agreement: same assignments, or inertia within
   1e-4 relative).
Prints a short table; writes WORKDIR/bench_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-gpu"))
    ap.add_argument("--agree-modules", type=int, default=4)
    args = ap.parse_args()
    cupy = namespace("cuda")
    device_name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    src = args.workdir / f"whisper-large-shaped-{args.layers}"
    t = time.perf_counter()
    make_checkpoint(src, args.layers)
    print(f"checkpoint ready in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    report = clusterprune.compress(
        src, args.workdir / "gpu-out", sparsity=0.1, device="cuda", overwrite=True, progress=False
    )
    gpu_seconds = time.perf_counter() - t
    print(f"whole model on {device_name}: {gpu_seconds:.1f} s", flush=True)
    plan = {m.name: m.k for m in report.plan.modules}
    rows = []
    with Checkpoint(src) as ckpt:
        umap = unit_map(ckpt.config, set(ckpt.where))
        clustered = [s for s in umap.modules if plan[s.name] < s.n_units]
        step = max(len(clustered) // max(args.agree_modules, 1), 1)
        for spec in clustered[::step][: args.agree_modules]:
            x = unit_matrix(ckpt, spec)
            k = plan[spec.name]
            t = time.perf_counter()
            cpu = clusterprune.kmeans(x, k, 0)
            t_cpu = time.perf_counter() - t
            t = time.perf_counter()
            gpu = kmeans_xp(x, k, 0, xp=cupy)
            cupy.cuda.Device().synchronize()
            t_gpu = time.perf_counter() - t
            rel = abs(cpu.inertia - gpu.inertia) / max(cpu.inertia, 1e-30)
            same = bool(np.array_equal(cpu.assignments, gpu.assignments))
            rows.append(
                {
                    "module": spec.name,
                    "n": x.shape[0],
                    "d": x.shape[1],
                    "k": k,
                    "cpu_s": t_cpu,
                    "gpu_s": t_gpu,
                    "same_assignments": same,
                    "inertia_rel_diff": rel,
                    "agree": same or rel <= 1e-4,
                }
            )
            print(f"  {spec.name}: same assignments {same}, inertia rel diff {rel:.2e}", flush=True)
    result = {
        "device": device_name,
        "host": platform.node(),
        "layers": args.layers,
        "whole_model_seconds": gpu_seconds,
        "agreement": rows,
    }
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "bench_gpu.json").write_text(json.dumps(result, indent=2))
    print(f"\n| device | whole model, 10 % | goal |\n|---|---|---|\n| {device_name} | {gpu_seconds:.1f} s | < 30 s |")
    print("\n| module | N x d | K | CPU engine (s) | CuPy (s) | same assignments | inertia rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['module']} | {r['n']} x {r['d']} | {r['k']} | {r['cpu_s']:.2f} | {r['gpu_s']:.2f} | "
            f"{r['same_assignments']} | {r['inertia_rel_diff']:.1e} |"
        )
    sys.exit(0 if all(r["agree"] for r in rows) else 1)


if __name__ == "__main__":
    main()
