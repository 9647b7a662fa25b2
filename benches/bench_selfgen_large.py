"""Self-generated statistics at the scale users run: `clusterprune selfgen` on a
Whisper-large-v3-shaped checkpoint (d_model 1280, 20 heads, FFN 5120, L + L layers, 128 mel bins;
synthetic fp16 weights, loaded in fp32), with 1 process and under torchrun with more:

* seconds per clip (wall time over the clips; model loading and writing included once),
* peak RSS of the run (the largest process, from wait4) against the fp32 model's size,
* the statistics file's size against its float64 N x N size,
* whether every process count wrote the same file, byte for byte,
* the time the default command (64 clips, one process) would take on this machine.

The processor files (tokenizer, generation config) come from a real Whisper checkpoint (`--processor
DIR`, e.g. whisper tiny.en imported with import-ct2; its vocabulary sets the embedding's size). The
weights are random, so the decoder samples random tokens up to its length bound: the decoder work
per clip is the most a real model would do.

    python benches/bench_selfgen_large.py --processor whisper-tiny.en [--layers 4] [--clips 4]
        [--processes 1,2] [--decoder-samples 8] [--workdir bench-out/selfgen-large]

Writes WORKDIR/bench_selfgen_large.json: {"machine", "layers", "clips", "model_fp32_gib",
"float64_file_gib", "runs": [{"processes", "seconds", "seconds_per_clip", "peak_rss_gib",
"rss_over_model_gib", "file_gib", "identical_to_one_process"}], "default_command_minutes"}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_whisper_large import FFN, MELS, D, make_checkpoint, tensor_table  # noqa: E402

DEFAULT_CLIPS = 64


def add_processor(model: Path, processor: Path) -> int:
    """Copies the tokenizer and generation config of a real Whisper checkpoint; a 128-bin feature
    extractor. Returns the vocabulary size."""
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        if (processor / name).is_file():
            shutil.copy(processor / name, model / name)
    prep = json.loads((processor / "preprocessor_config.json").read_text())
    (model / "preprocessor_config.json").write_text(json.dumps({**prep, "feature_size": MELS}, indent=2))
    return int(json.loads((processor / "config.json").read_text())["vocab_size"])


def run(model: Path, out: Path, processes: int, clips: int, samples: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB, the largest process) of one selfgen run."""
    cli = ["-m", "clusterprune.cli", "selfgen", str(model), str(out), "--clips", str(clips)]
    cli += ["--decoder-samples", str(samples), "--overwrite", "--quiet"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        cmd = [*launcher, "--master_port", "29541", *cli]
    else:
        cmd = [sys.executable, *cli]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"selfgen with {processes} process(es) failed")
    return wall, usage.ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processor", type=Path, required=True, help="a Whisper checkpoint whose tokenizer to use")
    ap.add_argument("--layers", type=int, default=4, help="encoder and decoder layers (default 4; large-v3: 32)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--decoder-samples", type=int, default=8)
    ap.add_argument("--processes", default="1,2", help="process counts, comma-separated (default 1,2)")
    ap.add_argument("--workdir", type=Path, default=Path("bench-out/selfgen-large"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / f"whisper-large-shaped-{args.layers}"
    vocab = int(json.loads((args.processor / "config.json").read_text())["vocab_size"])
    make_checkpoint(model, args.layers, vocab)
    add_processor(model, args.processor)
    params = sum(math.prod(s) for _, s in tensor_table(args.layers, vocab))
    model_gib = params * 4 / 2**30
    modules = 2 * args.layers
    float64_gib = modules * (FFN * FFN + FFN) * 8 / 2**30
    runs = []
    reference: bytes | None = None
    for processes in [int(p) for p in args.processes.split(",") if p.strip()]:
        out = args.workdir / f"stats-{processes}.safetensors"
        seconds, rss = run(model, out, processes, args.clips, args.decoder_samples)
        data = out.read_bytes()
        reference = data if reference is None else reference
        runs.append(
            {
                "processes": processes,
                "seconds": seconds,
                "seconds_per_clip": seconds / args.clips,
                "peak_rss_gib": rss,
                "rss_over_model_gib": rss - model_gib,
                "file_gib": len(data) / 2**30,
                "identical_to_one_process": data == reference,
            }
        )
        print(
            f"{processes} process(es): {seconds:.1f} s ({seconds / args.clips:.1f} s/clip), peak RSS {rss:.2f} GiB "
            f"(fp32 model {model_gib:.2f} GiB), file {len(data) / 2**30:.3f} GiB (float64: {float64_gib:.3f} GiB), "
            f"identical: {data == reference}",
            flush=True,
        )
    one = next((r for r in runs if r["processes"] == 1), runs[0])
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "shape": {"d_model": D, "ffn": FFN, "layers": args.layers, "vocab": vocab, "mel_bins": MELS},
        "clips": args.clips,
        "decoder_samples": args.decoder_samples,
        "model_fp32_gib": model_gib,
        "float64_file_gib": float64_gib,
        "runs": runs,
        "default_command_minutes": one["seconds_per_clip"] * DEFAULT_CLIPS / 60,
    }
    (args.workdir / "bench_selfgen_large.json").write_text(json.dumps(result, indent=2) + "\n")
    if len(runs) > 1:
        print(f"speed-up of {runs[-1]['processes']} processes: {one['seconds'] / runs[-1]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
