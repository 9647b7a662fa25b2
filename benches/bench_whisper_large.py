"""Speed benchmark: a Whisper-large-v3-shaped checkpoint (real module shapes, 32 + 32 layers,
synthetic fp16 weights with per-module statistics that vary like a trained model's) compressed
at 10 % sparsity by the `clusterprune` CLI, and scikit-learn's KMeans run side by side on a
sample of the same unit matrices.

    python benches/bench_whisper_large.py [--layers 32] [--workdir bench-out] [--sklearn-modules 3]

Prints a markdown table and writes bench-out/bench_whisper_large.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def whisper_large_config(layers: int) -> dict:
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
        "vocab_size": VOCAB,
        "max_source_positions": SRC_POS,
        "max_target_positions": TGT_POS,
    }


def tensor_table(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    t: list[tuple[str, tuple[int, ...]]] = [
        ("model.encoder.conv1.weight", (D, MELS, 3)),
        ("model.encoder.conv1.bias", (D,)),
        ("model.encoder.conv2.weight", (D, D, 3)),
        ("model.encoder.conv2.bias", (D,)),
        ("model.encoder.embed_positions.weight", (SRC_POS, D)),
        ("model.decoder.embed_tokens.weight", (VOCAB, D)),
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


def make_checkpoint(path: Path, layers: int) -> None:
    if (path / "config.json").exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    table = tensor_table(layers)
    w = SafetensorsWriter(path / "model.safetensors.partial", [(n, "F16", s) for n, s in table], {"format": "pt"})
    for name, shape in table:
        w.write(name, synth(name, shape, rng))
    w.close()
    os.replace(path / "model.safetensors.partial", path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(whisper_large_config(layers), indent=2))


def run_cli(src: Path, dst: Path, report: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one `clusterprune compress` run."""
    cmd = [
        sys.executable,
        "-m",
        "clusterprune.cli",
        "compress",
        str(src),
        str(dst),
        "--sparsity",
        "0.1",
        "--overwrite",
        "--quiet",
        "--report",
        str(report),
    ]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_kib / 2**20


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
        sample = [attn[0], ffn[0], attn[len(attn) // 2], ffn[-1]][:count]
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
    args = ap.parse_args()
    src = args.workdir / f"whisper-large-shaped-{args.layers}"
    print(f"building {src} ...", flush=True)
    make_checkpoint(src, args.layers)
    ckpt_gib = (src / "model.safetensors").stat().st_size / 2**30
    print("compressing at 10 % sparsity (paper recipe) ...", flush=True)
    wall, peak = run_cli(src, args.workdir / "compressed", args.workdir / "report.json")
    report = json.loads((args.workdir / "report.json").read_text())
    rows = sklearn_side_by_side(src, report, args.sklearn_modules) if args.sklearn_modules else []
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "layers": args.layers,
        "checkpoint_gib": ckpt_gib,
        "compress_seconds": wall,
        "peak_rss_gib": peak,
        "modules": len(report["modules"]),
        "sklearn": rows,
    }
    (args.workdir / "bench_whisper_large.json").write_text(json.dumps(result, indent=2))
    print(f"\nmachine: {result['machine']}")
    print(
        f"whole model ({2 * args.layers} layers, {len(report['modules'])} modules, {ckpt_gib:.2f} GiB fp16): "
        f"{wall:.1f} s, peak RSS {peak:.2f} GiB"
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
