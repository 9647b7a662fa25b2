"""Compression speed of the k-means engine on a Whisper-large-v3-shaped checkpoint (real module
shapes, 32 + 32 layers, synthetic fp16 weights with per-module statistics that vary like a
trained model's), compressed at 10 % sparsity by the `clusterprune` CLI:

* one row per recipe: `--recipe` (default `paper`: k-means over all 160 modules, heads + FFN,
  what this bench exists to time) and `--second-recipe` (default `datafree`, the default recipe;
  `none` skips it), each with its wall time, its own peak RSS, and the GEMM floor: the time of one
  N x d by d x K float32 GEMM (numpy) per clustered module, measured on this machine (per module
  shape at the largest K, scaled linearly in K);
* scikit-learn's KMeans side by side on a sample of the modules the k-means recipe really
  clustered (attention and FFN): speed and inertia ratios.

    python benches/bench_whisper_large.py [--layers 32] [--workdir bench-out] [--sklearn-modules 3]
        [--recipe paper] [--second-recipe datafree]

Prints markdown tables and writes WORKDIR/bench_whisper_large.json: {"machine",
"clusterprune_version", "commit", "layers",
"checkpoint_gib", "runs": [{"recipe", "compress_seconds", "peak_rss_gib", "gemm_floor_seconds",
"modules", "clustered_modules"}], "sklearn": [{"module", "speedup", "inertia_ratio", ...}]}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clusterprune.engine import kmeans
from clusterprune.io.checkpoint import Checkpoint
from clusterprune.io.safetensors import SafetensorsWriter
from clusterprune.models.registry import unit_map
from clusterprune.models.units import to_units
from clusterprune.recipes.registries import FEATURES

D, HEADS, FFN, VOCAB, MELS, SRC_POS, TGT_POS = 1280, 20, 5120, 51866, 128, 1500, 448


def whisper_large_config(layers: int, vocab: int = VOCAB) -> dict:
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "d_model": D,
        "encoder_layers": layers,
        "decoder_layers": layers,
        "encoder_attention_heads": HEADS,
        "decoder_attention_heads": HEADS,
        "encoder_ffn_dim": FFN,
        "decoder_ffn_dim": FFN,
        "num_mel_bins": MELS,
        "vocab_size": vocab,
        "max_source_positions": SRC_POS,
        "max_target_positions": TGT_POS,
    }


def tensor_table(layers: int, vocab: int = VOCAB) -> list[tuple[str, tuple[int, ...]]]:
    t: list[tuple[str, tuple[int, ...]]] = [
        ("model.encoder.conv1.weight", (D, MELS, 3)),
        ("model.encoder.conv1.bias", (D,)),
        ("model.encoder.conv2.weight", (D, D, 3)),
        ("model.encoder.conv2.bias", (D,)),
        ("model.encoder.embed_positions.weight", (SRC_POS, D)),
        ("model.decoder.embed_tokens.weight", (vocab, D)),
        ("model.decoder.embed_positions.weight", (TGT_POS, D)),
    ]

    def attn(p: str, k_bias: bool = False) -> None:
        for name in ("q", "k", "v", "out"):
            t.append((f"{p}.{name}_proj.weight", (D, D)))
            if name != "k" or k_bias:
                t.append((f"{p}.{name}_proj.bias", (D,)))

    for stack in ("encoder", "decoder"):
        for i in range(layers):
            p = f"model.{stack}.layers.{i}"
            attn(f"{p}.self_attn")
            t += [(f"{p}.self_attn_layer_norm.weight", (D,)), (f"{p}.self_attn_layer_norm.bias", (D,))]
            if stack == "decoder":
                attn(f"{p}.encoder_attn")
                t += [(f"{p}.encoder_attn_layer_norm.weight", (D,)), (f"{p}.encoder_attn_layer_norm.bias", (D,))]
            t += [(f"{p}.fc1.weight", (FFN, D)), (f"{p}.fc1.bias", (FFN,)), (f"{p}.fc2.weight", (D, FFN))]
            t += [(f"{p}.fc2.bias", (D,)), (f"{p}.final_layer_norm.weight", (D,)), (f"{p}.final_layer_norm.bias", (D,))]
        t += [(f"model.{stack}.layer_norm.weight", (D,)), (f"model.{stack}.layer_norm.bias", (D,))]
    return t


def synth(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Weights with a low-rank component and a per-tensor scale that drifts with depth, like a
    trained transformer's; layer-norm gains near 1."""
    if name.endswith("layer_norm.weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float16)
    scale = float(rng.uniform(0.01, 0.05))
    if len(shape) == 2 and min(shape) >= 256:
        rank = 32
        low = rng.standard_normal((shape[0], rank), dtype=np.float32) @ rng.standard_normal(
            (rank, shape[1]), dtype=np.float32
        )
        w = scale * (0.5 * low / np.sqrt(rank) + rng.standard_normal(shape, dtype=np.float32))
        return w.astype(np.float16)
    return (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)


def measured_build() -> dict[str, str]:
    """What a bench measured: the package version and the commit of the checkout it ran from
    ("unknown" outside a git checkout; "+changes" when the tracked files differ from it)."""
    import clusterprune

    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=repo, capture_output=True).returncode != 0
        commit = head.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"clusterprune_version": clusterprune.__version__, "commit": commit}


def make_checkpoint(path: Path, layers: int, vocab: int = VOCAB) -> None:
    if (path / "config.json").exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    table = tensor_table(layers, vocab)
    w = SafetensorsWriter(path / "model.safetensors.partial", [(n, "F16", s) for n, s in table], {"format": "pt"})
    for name, shape in table:
        w.write(name, synth(name, shape, rng))
    w.close()
    os.replace(path / "model.safetensors.partial", path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(whisper_large_config(layers, vocab), indent=2))


def run_cli(src: Path, dst: Path, report: Path, recipe: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB, of this run's process alone) of one `clusterprune compress`."""
    cmd = [sys.executable, "-m", "clusterprune.cli", "compress", str(src), str(dst), "--recipe", recipe]
    cmd += ["--sparsity", "0.1", "--overwrite", "--quiet", "--report", str(report)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"compress with recipe {recipe} failed (exit {proc.returncode})")
    return wall, usage.ru_maxrss / 2**20


def gemm_floor(src: Path, report: dict) -> float:
    """Seconds of one N x d @ d x K float32 GEMM per clustered module (k-means's distance step)."""
    with Checkpoint(src) as ckpt:
        specs = {s.name: s for s in unit_map(ckpt.config, set(ckpt.where)).modules}
    method = report["recipe"]["method"]
    clustered = [m for m in report["modules"] if m["k"] < m["n_units"]] if method == "kmeans" else []
    by_shape: dict[tuple[int, int], list[int]] = {}
    for m in clustered:
        spec = specs[m["name"]]
        d = sum(spec.part_width(p) for p in spec.parts if p.role in ("producer", "consumer"))
        by_shape.setdefault((m["n_units"], d), []).append(m["k"])
    rng = np.random.default_rng(0)
    total = 0.0
    for (n, d), ks in sorted(by_shape.items()):
        k_ref = max(ks)
        x = rng.standard_normal((n, d), dtype=np.float32)
        c = rng.standard_normal((k_ref, d), dtype=np.float32)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            x @ c.T
            times.append(time.perf_counter() - t)
        t_ref = sorted(times)[1]
        total += sum(t_ref * k / k_ref for k in ks)
    return total


def inertia(x: np.ndarray, labels: np.ndarray) -> float:
    x = x.astype(np.float64)
    total = 0.0
    for c in np.unique(labels):
        m = x[labels == c]
        total += float(((m - m.mean(axis=0)) ** 2).sum())
    return total


def unit_matrix(ckpt: Checkpoint, spec) -> np.ndarray:
    """The module's unit matrix as the paper recipe clusters it (producer + consumer weights)."""
    parts = [(p, to_units(ckpt.f32(p.tensor), spec, p)) for p in spec.parts]
    return np.ascontiguousarray(np.concatenate(FEATURES["weights"](parts), axis=1), dtype=np.float32)


def sklearn_side_by_side(src: Path, report: dict, count: int) -> list[dict]:
    from sklearn.cluster import KMeans

    rows = []
    plan = {m["name"]: m["k"] for m in report["modules"]}
    with Checkpoint(src) as ckpt:
        umap = unit_map(ckpt.config, set(ckpt.where))
        # compare only modules that are really clustered (the variance plan keeps K = N in some)
        ffn = [s for s in umap.modules if s.kind == "ffn" and plan[s.name] < s.n_units]
        attn = [s for s in umap.modules if s.kind == "attention" and plan[s.name] < s.n_units]
        picks = attn[:1] + ffn[:1] + attn[len(attn) // 2 :][:1] + ffn[-1:]
        sample = [m for i, m in enumerate(picks) if m not in picks[:i]][:count]
        for spec in sample:
            x = unit_matrix(ckpt, spec)
            k = plan[spec.name]
            t = time.perf_counter()
            ours = kmeans(x, k, 0)
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            sk = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x)
            t_sk = time.perf_counter() - t
            i_ours, i_sk = inertia(x, ours.assignments), inertia(x, sk.labels_)
            rows.append(
                {
                    "module": spec.name,
                    "n": x.shape[0],
                    "d": x.shape[1],
                    "k": k,
                    "ours_s": t_ours,
                    "sklearn_s": t_sk,
                    "speedup": t_sk / t_ours,
                    "inertia_ours": i_ours,
                    "inertia_sklearn": i_sk,
                    "inertia_ratio": i_ours / i_sk,
                }
            )
            print(
                f"  {spec.name}: ours {t_ours:.2f}s sklearn {t_sk:.2f}s, inertia ratio {i_ours / i_sk:.4f}", flush=True
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32, help="layers per stack (32 = whisper-large-v3)")
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"))
    ap.add_argument("--sklearn-modules", type=int, default=3, help="modules compared with scikit-learn (0: skip)")
    ap.add_argument("--recipe", default="paper", help="the recipe timed first (default paper: the k-means engine)")
    ap.add_argument("--second-recipe", default="datafree", help="a second row (default datafree; 'none' skips it)")
    args = ap.parse_args()
    src = args.workdir / f"whisper-large-shaped-{args.layers}"
    print(f"building {src} ...", flush=True)
    make_checkpoint(src, args.layers)
    ckpt_gib = (src / "model.safetensors").stat().st_size / 2**30
    runs, reports = [], {}
    for recipe in [args.recipe] + ([] if args.second_recipe == "none" else [args.second_recipe]):
        print(f"compressing at 10 % sparsity, recipe {recipe} ...", flush=True)
        report_path = args.workdir / f"report-{recipe}.json"
        wall, peak = run_cli(src, args.workdir / f"compressed-{recipe}", report_path, recipe)
        report = reports[recipe] = json.loads(report_path.read_text())
        clustered = (
            sum(m["k"] < m["n_units"] for m in report["modules"]) if report["recipe"]["method"] == "kmeans" else 0
        )
        runs.append(
            {
                "recipe": recipe,
                "method": report["recipe"]["method"],
                "compress_seconds": wall,
                "peak_rss_gib": peak,
                "gemm_floor_seconds": gemm_floor(src, report),
                "modules": len(report["modules"]),
                "clustered_modules": clustered,
            }
        )
    kmeans_report = next((reports[r["recipe"]] for r in runs if r["method"] == "kmeans"), None)
    rows = []
    if args.sklearn_modules and kmeans_report is not None:
        rows = sklearn_side_by_side(src, kmeans_report, args.sklearn_modules)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        **measured_build(),
        "layers": args.layers,
        "checkpoint_gib": ckpt_gib,
        "runs": runs,
        "sklearn": rows,
    }
    (args.workdir / "bench_whisper_large.json").write_text(json.dumps(result, indent=2))
    print(f"\nmachine: {result['machine']}; {2 * args.layers} layers, {ckpt_gib:.2f} GiB fp16 checkpoint")
    print("\n| recipe | modules (clustered) | compress (s) | GEMM floor (s) | peak RSS (GiB) |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['recipe']} | {r['modules']} ({r['clustered_modules']}) | {r['compress_seconds']:.1f} | "
            f"{r['gemm_floor_seconds']:.1f} | {r['peak_rss_gib']:.2f} |"
        )
    if rows:
        print("\n| module | N x d | K | ours (s) | scikit-learn (s) | speed-up | inertia ours / sklearn |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['module']} | {r['n']} x {r['d']} | {r['k']} | {r['ours_s']:.2f} | {r['sklearn_s']:.2f} | "
                f"{r['speedup']:.1f}x | {r['inertia_ratio']:.4f} |"
            )


if __name__ == "__main__":
    main()
