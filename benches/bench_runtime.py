"""Deployment speed and size: compressed Whisper in CTranslate2 int8 (what faster-whisper runs)
against the dense model, side by side in one run.

    python benches/bench_runtime.py MODEL_DIR --data DATA [--subset S] [--limit N] [--threads 2]
        [--rounds 3] [--large-layers 32] [--large-rounds 3] [--workdir bench-out/runtime]

1. Real model (MODEL_DIR, e.g. whisper tiny.en) on DATA: rows dense transformers fp32, dense
   CTranslate2 fp32, dense CTranslate2 int8, and CTranslate2 int8 of `datafree` at 10 and 20 % of
   FFN neurons and of `paper` at 5 % (folded exports). Columns: file size, parameters, WER, audio
   seconds per wall second (median of the interleaved rounds; each round decodes every
   utterance with every model, greedy, batch 8), speed-up against dense int8, and the share of
   the blocks' linear-layer weights (= multiply-adds per token) removed.
2. A Whisper-large-v3-shaped model with synthetic weights (speed does not depend on the values),
   compressed with the plans of the real rows, exported int8: one encoder forward (30 s window)
   and the decoder per generated token, dense against compressed, median of `--large-rounds`.
   Skipped with `--large-layers 0`.

Writes WORKDIR/bench_runtime.json: a list of rows with `model`, `runtime`, `compute_type`,
`size_bytes`, `params`, `wer`, `audio_s_per_s`, `speedup_vs_dense_int8`, `linear_removed`
(real model), and `large` rows with `encoder_s`, `decoder_step_s` and their speed-ups.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clusterprune  # noqa: E402
from bench_whisper_large import make_checkpoint  # noqa: E402
from clusterprune.evaluation.data import load_utterances  # noqa: E402
from clusterprune.evaluation.evaluate import evaluate  # noqa: E402
from clusterprune.exporters.ct2 import export_ct2  # noqa: E402
from clusterprune.importers.ct2 import parse_model_bin  # noqa: E402
from clusterprune.io.checkpoint import Checkpoint  # noqa: E402

PLANS = [("datafree", 0.1), ("datafree", 0.2), ("paper", 0.05)]  # (recipe, sparsity): FFN neurons / all units
BLOCK_LINEARS = ("self_attention/linear", "attention/linear", "ffn/linear")


def ct2_params(ct2_dir: Path) -> tuple[int, int]:
    """(all values, the blocks' linear-layer weights) of a CTranslate2 model as stored (padded
    heads count), from one read of model.bin."""
    model = parse_model_bin((ct2_dir / "model.bin").read_bytes(), str(ct2_dir))
    linear = sum(
        int(v.size)
        for name, v in model.variables.items()
        if "/layer_" in name and name.endswith("/weight") and any(k in name for k in BLOCK_LINEARS)
    )
    return sum(int(v.size) for v in model.variables.values()), linear


def compressed(model_dir: Path, work: Path, recipe: str, sparsity: float) -> Path:
    out = work / f"{recipe}-{sparsity:g}"
    clusterprune.compress(model_dir, out, recipe, sparsity=sparsity, export="folded", overwrite=True, progress=False)
    return out


def real_rows(args: argparse.Namespace) -> list[dict]:
    work = args.workdir / "real"
    utts = load_utterances(args.data, args.subset, args.limit)
    audio = sum(u.duration for u in utts)
    models = [("dense", "transformers", "float32", args.model_dir)]
    export_ct2(args.model_dir, work / "dense-ct2-f32", quantization="float32", overwrite=True)
    export_ct2(args.model_dir, work / "dense-ct2-int8", quantization="int8", overwrite=True)
    models += [("dense", "ctranslate2", "float32", work / "dense-ct2-f32")]
    models += [("dense", "ctranslate2", "int8", work / "dense-ct2-int8")]
    for recipe, s in PLANS:
        src = compressed(args.model_dir, work, recipe, s)
        out = work / f"{recipe}-{s:g}-ct2-int8"
        export_ct2(src, out, quantization="int8", overwrite=True)
        models.append((f"{recipe} {s:g}", "ctranslate2", "int8", out))
    speeds: dict[int, list[float]] = {i: [] for i in range(len(models))}
    results: dict[int, dict] = {}
    for r in range(args.rounds):
        for i, (name, runtime, compute, path) in enumerate(models):
            res = evaluate(
                path,
                None,
                utterances=utts,
                progress=False,
                compute_type=None if runtime == "transformers" else compute,
                threads=args.threads,
            )
            speeds[i].append(audio / res["decode_seconds"])
            results.setdefault(i, res)
            print(f"  round {r + 1}: {name} {runtime} {compute}: {speeds[i][-1]:.1f} audio s/s", flush=True)
    dense_linear = ct2_params(work / "dense-ct2-int8")[1]
    rows = []
    for i, (name, runtime, compute, path) in enumerate(models):
        path = Path(path)
        if runtime == "transformers":
            with Checkpoint(path) as c:
                size, params = (
                    sum(f.path.stat().st_size for f in c.files.values()),
                    sum(c.info(n).numel for n in c.names()),
                )
            linear = dense_linear
        else:
            size = (path / "model.bin").stat().st_size
            params, linear = ct2_params(path)
        rows.append(
            {
                "model": name,
                "runtime": runtime,
                "compute_type": compute,
                "size_bytes": size,
                "params": params,
                "wer": results[i]["wer"],
                "hit_length_bound": results[i]["hit_length_bound"],
                "audio_s_per_s": statistics.median(speeds[i]),
                "linear_removed": 1 - linear / dense_linear,
            }
        )
    base = next(
        r for r in rows if r["model"] == "dense" and r["compute_type"] == "int8" and r["runtime"] == "ctranslate2"
    )
    for r in rows:
        r["speedup_vs_dense_int8"] = r["audio_s_per_s"] / base["audio_s_per_s"]
    return rows


def synthetic_tokenizer(path: Path, vocab: int) -> None:
    """A tokenizer.json with Whisper's special tokens at large-v3's ids (the rest are placeholders)."""
    special = ["<|endoftext|>", "<|startoftranscript|>"] + [f"<|l{i}|>" for i in range(100)]
    special += [
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]
    tokens = [f"t{i}" for i in range(50257)] + special
    tokens += ["<|%.2f|>" % (i * 0.02) for i in range(vocab - len(tokens))]
    model = {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens[:50257])}, "merges": []}
    added = [{"id": i, "content": t, "special": True} for i, t in enumerate(tokens) if i >= 50257]
    (path / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": model, "added_tokens": added}))


def large_rows(args: argparse.Namespace) -> list[dict]:
    import ctranslate2

    work = args.workdir / "large"
    src = work / f"whisper-large-shaped-{args.large_layers}"
    make_checkpoint(src, args.large_layers)
    vocab = int(json.loads((src / "config.json").read_text())["vocab_size"])
    if not (src / "tokenizer.json").exists():
        synthetic_tokenizer(src, vocab)
    export_ct2(src, work / "dense-int8", quantization="int8", overwrite=True)
    models = [("dense", work / "dense-int8")]
    for recipe, s in PLANS:
        out = work / f"{recipe}-{s:g}-int8"
        export_ct2(compressed(src, work, recipe, s), out, quantization="int8", overwrite=True)
        models.append((f"{recipe} {s:g}", out))
    rng = np.random.default_rng(0)
    feats = ctranslate2.StorageView.from_array(rng.standard_normal((1, 128, 3000), dtype=np.float32))
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _ in models}
    for _ in range(args.large_rounds):
        for name, path in models:
            ct = ctranslate2.models.Whisper(str(path), device="cpu", compute_type="int8", intra_threads=args.threads)
            t = time.perf_counter()
            ct.encode(feats)
            times[name][0].append(time.perf_counter() - t)
            steps = 64
            t = time.perf_counter()
            res = ct.generate(feats, [[50258, 50364]], beam_size=1, max_length=2 * steps, suppress_tokens=[50257])
            generated = max(len(res[0].sequences_ids[0]), 1)
            encode_again = times[name][0][-1]  # generate encodes the features once more
            times[name][1].append(max(time.perf_counter() - t - encode_again, 0.0) / generated)
            print(
                f"  {name}: encoder {times[name][0][-1]:.2f} s, decoder {1000 * times[name][1][-1]:.1f} ms/token",
                flush=True,
            )
    rows = []
    dense_linear = ct2_params(models[0][1])[1]
    for name, path in models:
        enc, dec = statistics.median(times[name][0]), statistics.median(times[name][1])
        rows.append(
            {
                "model": name,
                "size_bytes": (Path(path) / "model.bin").stat().st_size,
                "linear_removed": 1 - ct2_params(Path(path))[1] / dense_linear,
                "encoder_s": enc,
                "decoder_step_s": dec,
            }
        )
    for r in rows:
        r["encoder_speedup"] = rows[0]["encoder_s"] / r["encoder_s"]
        r["decoder_speedup"] = rows[0]["decoder_step_s"] / max(r["decoder_step_s"], 1e-12)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--subset")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--large-layers", type=int, default=32, help="layers per stack of the synthetic model (0: skip)")
    ap.add_argument("--large-rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("bench-out/runtime"))
    args = ap.parse_args()
    rows = real_rows(args)
    large = large_rows(args) if args.large_layers else []
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads"
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "bench_runtime.json").write_text(
        json.dumps({"machine": machine, "rows": rows, "large": large}, indent=2)
    )
    print(f"\nmachine: {machine}")
    print(
        "| model | runtime | compute | size (MB) | parameters | WER % | audio s/s | x dense int8 | block linear removed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['runtime']} | {r['compute_type']} | {r['size_bytes'] / 1e6:.1f} | {r['params'] / 1e6:.1f} M | "
            f"{100 * r['wer']:.2f} | {r['audio_s_per_s']:.1f} | {r['speedup_vs_dense_int8']:.2f}x | {100 * r['linear_removed']:.1f} % |"
        )
    if large:
        print(
            "\n| large-v3-shaped, int8 | size (MB) | block linear removed | encoder (s) | x | decoder (ms/token) | x |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in large:
            print(
                f"| {r['model']} | {r['size_bytes'] / 1e6:.0f} | {100 * r['linear_removed']:.1f} % | {r['encoder_s']:.2f} | "
                f"{r['encoder_speedup']:.2f}x | {1000 * r['decoder_step_s']:.1f} | {r['decoder_speedup']:.2f}x |"
            )


if __name__ == "__main__":
    main()
