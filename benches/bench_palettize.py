"""Palettization against coremltools' post-training k-means palettizer (``--comparator
coremltools``, the default; the bench stops with one line when coremltools cannot be imported) or
scikit-learn's KMeans per row (``--comparator scikit-learn``), in one run, on the same tensors:

* per tensor of MODEL_DIR (its linear layers, the token embedding) and of a Whisper-large-v3-shaped
  checkpoint (one tensor per shape): wall time of ours (the Rust engine, all cores) and theirs
  (``PostTrainingPalettizer``, per_grouped_channel with group_size 1 = per channel, or the given
  group size), and the weight reconstruction error (sum of squares) of each;
* the whole large-v3-shaped model palettized by ``clusterprune palettize --format compact``;
* with ``--wer-data``: WER of MODEL_DIR palettized by each (every linear layer and the token
  embedding, same bits and granularity; ours with its defaults).

Both sides see the same float32 values (the fp16 weights); ours stores its tables in fp16, as the
compact format does, coremltools keeps float32 tables.

    python benches/bench_palettize.py MODEL_DIR --bits 4 [--workdir W] [--granularity per-channel]
        [--group-size G] [--tensors N] [--large-layers 32] [--large-tensors 4] [--wer-data DIR]
        [--comparator coremltools|scikit-learn] [--method exact]

Writes WORKDIR/bench_palettize.json: {"machine", "clusterprune_version", "commit", "method" (our
solver), "comparator", "theirs" (the comparator and its version), "rows": [{"tensor", "model",
"shape", "bits", "ours_s", "theirs_s", "speedup", "error_ours", "error_theirs", "error_ratio"}],
"large_model": {"seconds", "layers", "bytes_fp16", "bytes_compact"}, "wer": {...}}; the printed
table names the comparator in its columns.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_whisper_large import make_checkpoint, measured_build  # noqa: E402
from clusterprune.engine.rust import palettize_rows  # noqa: E402
from clusterprune.io.checkpoint import Checkpoint  # noqa: E402
from clusterprune.palettize.config import PaletteConfig  # noqa: E402
from clusterprune.palettize.targets import targets  # noqa: E402

COMPARATORS = ("coremltools", "scikit-learn")


def coremltools_palettizer() -> Any:
    """coremltools' PostTrainingPalettizer and its config class; one line and exit 2 when it cannot
    be imported (the comparison it was asked for cannot run)."""
    try:
        from coremltools.optimize.torch.palettization import PostTrainingPalettizer, PostTrainingPalettizerConfig
    except Exception as e:  # noqa: BLE001 - any failure to import means: not available here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(
            f"bench_palettize: --comparator coremltools, but coremltools cannot be imported here ({first}): "
            "pip install coremltools torch, or pass --comparator scikit-learn",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    import logging

    logging.getLogger("coremltools").setLevel(logging.WARNING)
    return PostTrainingPalettizer, PostTrainingPalettizerConfig


def theirs_coreml(w: np.ndarray, bits: int, group: int, api: Any) -> np.ndarray:
    import torch

    palettizer, config_cls = api
    module = torch.nn.Sequential(torch.nn.Linear(w.shape[1], w.shape[0], bias=False))
    module[0].weight.data = torch.from_numpy(w.copy())
    cfg = config_cls.from_dict(
        {"global_config": {"n_bits": bits, "granularity": "per_grouped_channel", "group_size": group}}
    )
    with contextlib.redirect_stderr(io.StringIO()):  # its per-tensor progress bars
        out = palettizer(module, cfg).compress()
    return out[0].weight.detach().numpy().astype(np.float64)


def theirs_sklearn(w: np.ndarray, bits: int, group: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    out = np.empty(w.shape, dtype=np.float64)
    for r in range(0, w.shape[0], group):
        block = w[r : r + group].reshape(-1, 1).astype(np.float64)
        k = min(2**bits, len(np.unique(block)))
        km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(block)
        out[r : r + group] = km.cluster_centers_[km.labels_, 0].reshape(w[r : r + group].shape)
    return out


def ours(w: np.ndarray, bits: int, group: int, method: str) -> np.ndarray:
    r = palettize_rows(w, bits, group_rows=group, method=method, lut_dtype="float16")
    g = np.arange(w.shape[0]) // group
    return r.luts[g[:, None], r.indices.astype(np.intp)].astype(np.float64)


def compare(name: str, model: str, w: np.ndarray, args: argparse.Namespace, api: Any) -> dict[str, Any]:
    group = args.group_size if args.granularity == "per-grouped-channel" else 1
    t0 = time.perf_counter()
    mine = ours(w, args.bits, group, args.method)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = theirs_coreml(w, args.bits, group, api) if api is not None else theirs_sklearn(w, args.bits, group)
    theirs_s = time.perf_counter() - t0
    e_ours = float(np.sum((mine - w) ** 2))
    e_theirs = float(np.sum((theirs - w) ** 2))
    return {
        "tensor": name,
        "model": model,
        "shape": list(w.shape),
        "bits": args.bits,
        "granularity": args.granularity,
        "ours_s": ours_s,
        "theirs_s": theirs_s,
        "speedup": theirs_s / ours_s,
        "error_ours": e_ours,
        "error_theirs": e_theirs,
        "error_ratio": e_ours / e_theirs if e_theirs > 0 else float("nan"),
    }


def matrices(path: Path, limit: int) -> list[tuple[str, np.ndarray]]:
    with Checkpoint(path) as ckpt:
        chosen = targets(ckpt, PaletteConfig())
        picked = chosen if limit <= 0 else _one_per_shape(chosen)[:limit]
        return [(t.name, np.ascontiguousarray(ckpt.f32(t.name).reshape(t.rows, t.cols))) for t in picked]


def _one_per_shape(chosen: list[Any]) -> list[Any]:
    """The first tensor of every shape, the blocks' linear layers first (smallest first)."""
    seen: dict[tuple[int, ...], Any] = {}
    for t in chosen:
        seen.setdefault(t.shape, t)
    return sorted(seen.values(), key=lambda t: (".layers." not in t.name, t.rows * t.cols))


def large_model(args: argparse.Namespace) -> dict[str, Any]:
    src = args.workdir / f"whisper-large-shaped-{args.large_layers}"
    make_checkpoint(src, args.large_layers)
    dst = args.workdir / "large-palettized"
    cmd = [sys.executable, "-m", "clusterprune.cli", "palettize", str(src), str(dst), "--bits", str(args.bits)]
    cmd += ["--format", "compact", "--overwrite", "--quiet", "--report", str(args.workdir / "large_report.json")]
    cmd += ["--granularity", args.granularity, "--group-size", str(args.group_size)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    report = json.loads((args.workdir / "large_report.json").read_text())
    return {
        "seconds": seconds,
        "layers": args.large_layers,
        "bytes_fp16": report["bytes_fp16"],
        "bytes_compact": report["bytes_compact"],
        "src": str(src),
    }


def wer(args: argparse.Namespace, api: Any) -> dict[str, Any]:
    import clusterprune
    from clusterprune.evaluation.data import load_utterances
    from clusterprune.evaluation.evaluate import evaluate
    from clusterprune.models.hf import load_weights

    utts = load_utterances(args.wer_data, None, args.wer_limit)
    group = args.group_size if args.granularity == "per-grouped-channel" else 1
    out: dict[str, Any] = {"utterances": len(utts)}
    mine = args.workdir / "tiny-ours"
    clusterprune.palettize(
        args.model_dir, mine, bits=args.bits, granularity=args.granularity, group_size=args.group_size, overwrite=True
    )
    out["ours"] = evaluate(mine, None, utterances=utts)["wer"]
    if api is None:
        out["theirs"] = None
        return out
    import shutil

    palettizer, config_cls = api
    model = load_weights(args.model_dir)
    cfg = config_cls.from_dict(
        {"global_config": {"n_bits": args.bits, "granularity": "per_grouped_channel", "group_size": group}}
    )
    compressed = palettizer(model, cfg).compress()
    theirs_dir = args.workdir / "tiny-coremltools"
    shutil.rmtree(theirs_dir, ignore_errors=True)
    shutil.copytree(args.model_dir, theirs_dir)
    compressed.save_pretrained(theirs_dir, safe_serialization=True)
    out["theirs"] = evaluate(theirs_dir, None, utterances=utts)["wer"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="a Hugging Face checkpoint (e.g. whisper tiny.en from import-ct2)")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--granularity", choices=("per-channel", "per-grouped-channel"), default="per-channel")
    ap.add_argument("--group-size", type=int, default=16)
    ap.add_argument("--method", default="exact", help="our 1-D solver (default exact: the package default)")
    ap.add_argument(
        "--comparator",
        choices=COMPARATORS,
        default="coremltools",
        help="what ours is compared with (default coremltools; scikit-learn: KMeans per row)",
    )
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"))
    ap.add_argument("--tensors", type=int, default=0, help="MODEL_DIR tensors compared (0: all; N: one per shape)")
    ap.add_argument("--large-layers", type=int, default=32, help="layers per stack of the large-shaped model (0: skip)")
    ap.add_argument("--large-tensors", type=int, default=4, help="large-shaped tensors compared (one per shape)")
    ap.add_argument("--wer-data", type=Path, help="LibriSpeech-layout directory: also compare WER on MODEL_DIR")
    ap.add_argument("--wer-limit", type=int, help="at most N utterances for the WER comparison")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    api = coremltools_palettizer() if args.comparator == "coremltools" else None
    if api is not None:
        import coremltools

        theirs = f"coremltools {coremltools.__version__} PostTrainingPalettizer"
    else:
        import sklearn

        theirs = f"scikit-learn {sklearn.__version__} KMeans per row"
    rows = [compare(n, "model_dir", w, args, api) for n, w in matrices(args.model_dir, args.tensors)]
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        **measured_build(),
        "method": args.method,
        "comparator": args.comparator,
        "theirs": theirs,
        "bits": args.bits,
        "granularity": args.granularity,
        "rows": rows,
    }
    if args.large_layers > 0:
        result["large_model"] = large_model(args)
        for n, w in matrices(Path(result["large_model"]["src"]), args.large_tensors):
            rows.append(compare(n, "large-v3-shaped", w, args, api))
    if args.wer_data:
        result["wer"] = wer(args, api)
    (args.workdir / "bench_palettize.json").write_text(json.dumps(result, indent=2) + "\n")
    c = args.comparator
    print(f"ours: clusterprune method {args.method}; {c}: {theirs}; {args.bits} bits {args.granularity}")
    print(f"| model | tensor | shape | ours s | {c} s | speedup | error ours / {c} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"| {r['model']} | {r['tensor']} | {shape} | {r['ours_s']:.3f} | {r['theirs_s']:.2f} | "
            f"{r['speedup']:.0f}x | {r['error_ratio']:.4f} |"
        )
    total_ours, total_theirs = sum(r["ours_s"] for r in rows), sum(r["theirs_s"] for r in rows)
    errs = sum(r["error_ours"] for r in rows) / max(sum(r["error_theirs"] for r in rows), 1e-300)
    print(
        f"total: ours {total_ours:.2f} s, {c} {total_theirs:.1f} s ({total_theirs / total_ours:.0f}x); error {errs:.4f}"
    )
    if "large_model" in result:
        lm = result["large_model"]
        print(
            f"large-v3-shaped ({lm['layers']} + {lm['layers']} layers) palettized at {args.bits} bits in {lm['seconds']:.1f} s: "
            f"{lm['bytes_fp16'] / 1e6:.0f} MB fp16 -> {lm['bytes_compact'] / 1e6:.0f} MB compact"
        )
    if "wer" in result:
        print(f"WER: {json.dumps(result['wer'])}")


if __name__ == "__main__":
    main()
