"""How close compressed Whisper models stay to their dense source on self-generated speech: no
recorded speech, no reference transcripts (a data-free yardstick for choices that the layer-wise
output error cannot rank, such as how bits are shared between layers).

Each clip is made as `clusterprune selfgen --audio espeak` makes its clips (a synthetic clip, the
dense model's own transcripts of it read aloud by espeak-ng), with a seed of its own (default 2:
neither the statistics of `selfgen`'s default seed 0 nor a `--seed 1` held-out file). The dense
model transcribes the clip greedily; then every model reads that transcript (teacher forcing) and
the script measures, over every text position, the KL divergence of the model's next-token
distribution from the dense model's (nats per token) and how often their most likely next tokens
agree.

    python scripts/selfgen_agreement.py DENSE_DIR MODEL_DIR [MODEL_DIR ...] [--clips 16] [--seed 2] [--json OUT]

MODEL_DIR: any checkpoint `clusterprune eval` reads (dense, folded, palettized compact or
dequantized). Prints one markdown row per model; `--json` writes the same rows.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from clusterprune.activations.collect import SelfGenConfig, clip_inputs, decoder_prompt
from clusterprune.activations.synth import clip_lengths
from clusterprune.io.jsontext import dumps
from clusterprune.models.hf import load_model
from clusterprune.models.whisper import max_new_tokens, quiet_transformers


def clip_transcripts(dense: Any, processor: Any, clips: int, seed: int) -> list[tuple[Any, Any, int]]:
    """(input features, the decoder's prompt + the dense model's greedy transcript + <|endoftext|>,
    the prompt's length) per clip."""
    import torch

    config = SelfGenConfig(clips=clips, seed=seed, audio="espeak")
    gen = copy.deepcopy(dense.generation_config)
    gen.max_length, gen.do_sample, gen.num_beams = None, False, 1
    eot = int(gen.eos_token_id)
    out = []
    with torch.no_grad():
        for index, seconds in enumerate(clip_lengths(clips, seed)):
            inputs, seconds = clip_inputs(torch, dense, processor, config, index, seconds)
            gen.max_new_tokens = max_new_tokens(seconds, dense.config.max_target_positions - 4)
            with quiet_transformers():
                generated = dense.generate(inputs.input_features, generation_config=gen)
            generated = generated.sequences if hasattr(generated, "sequences") else generated
            prompt = decoder_prompt(dense)
            text = [int(t) for t in generated[0] if int(t) < eot]  # generate returns the text tokens
            out.append((inputs.input_features, torch.tensor([prompt + text + [eot]]), len(prompt)))
    return out


def next_token_log_probs(model: Any, feats: Any, sequence: Any) -> Any:
    """log p(next token) at every position of ``sequence`` but the last (teacher forcing)."""
    import torch

    with torch.no_grad():
        logits = model(input_features=feats, decoder_input_ids=sequence[:, :-1]).logits
    return torch.log_softmax(logits.double(), dim=-1)[0]


def agreement(dense: Any, model: Any, clips: list[tuple[Any, Any, int]]) -> dict[str, float]:
    """Mean KL(dense || model) per text position, the share of positions whose most likely next
    token agrees, and the positions counted (every position from the last prompt token on: each
    predicts a text token or the end)."""
    kl, agree, positions = 0.0, 0, 0
    for feats, sequence, prompt in clips:
        p = next_token_log_probs(dense, feats, sequence)[prompt - 1 :]
        q = next_token_log_probs(model, feats, sequence)[prompt - 1 :]
        kl += float((p.exp() * (p - q)).sum())
        agree += int((p.argmax(dim=-1) == q.argmax(dim=-1)).sum())
        positions += int(p.shape[0])
    return {"kl_nats_per_token": kl / positions, "top1_agreement": agree / positions, "positions": positions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dense_dir", type=Path, help="the dense source (a Whisper checkpoint)")
    ap.add_argument("model_dirs", type=Path, nargs="+", help="the compressed models to compare with it")
    ap.add_argument("--clips", type=int, default=16, help="self-generated clips (default 16)")
    ap.add_argument("--seed", type=int, default=2, help="seed of the clips (default 2)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    dense, processor, _ = load_model(args.dense_dir, progress=False)
    clips = clip_transcripts(dense, processor, args.clips, args.seed)
    rows = []
    for model_dir in args.model_dirs:
        model, _, _ = load_model(model_dir, progress=False)
        rows.append({"model": str(model_dir), **agreement(dense, model, clips)})
        del model
    print(f"{len(clips)} self-generated clips (seed {args.seed}), against {args.dense_dir}")
    print("| model | KL from dense, nats / token | top-1 agreement | positions |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['kl_nats_per_token']:.4f} | {100 * r['top1_agreement']:.2f} % | {r['positions']} |")
    if args.json:
        args.json.write_text(dumps(rows, str(args.json), indent=2) + "\n")


if __name__ == "__main__":
    main()
