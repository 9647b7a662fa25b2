"""Which single encoder head can go? A diagnostic, not a recipe: it looks at WER per head.

    python scripts/head_diagnostic.py MODEL_DIR DATA --layer 3 [--subset test-clean] [--limit 20]

For every head h of encoder self-attention layer L: remove h alone (mean output compensated into
out_proj's bias, as recipe datafree-heads does), evaluate, print the WER. docs/results/recipes.md
quotes its output for tiny.en's layer 3.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import clusterprune
from clusterprune.evaluation.evaluate import evaluate
from clusterprune.recipes import registries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--subset", default="test-clean")
    ap.add_argument("--limit", type=int, default=20)
    args = ap.parse_args()
    heads = clusterprune.inspect(str(args.model_dir))
    n = next(m["n_units"] for m in heads["modules"] if m["name"].endswith(f"encoder.layers.{args.layer}.self_attn"))
    with tempfile.TemporaryDirectory() as tmp:
        for h in range(n):
            # the score that datafree-heads uses, replaced by one that ranks head h last
            registries.SCORES["gauss_attn"] = lambda parts, ctx, h=h: np.where(np.arange(n) == h, 0.0, 1.0)
            out = Path(tmp) / f"head{h}"
            clusterprune.compress(
                args.model_dir,
                out,
                sparsity=0.0,
                recipe="datafree-heads",
                include=rf"encoder\.layers\.{args.layer}\.self_attn",
                progress=False,
            )
            wer = evaluate(out, args.data, subset=args.subset, limit=args.limit, progress=False)["wer"]
            print(f"layer {args.layer}, head {h} removed: WER {100 * wer:.2f} %", flush=True)


if __name__ == "__main__":
    main()
