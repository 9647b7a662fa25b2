"""Whisper: encoder self-attention, decoder self- and cross-attention and FFNs; greedy decoding
bounded by the audio's duration; cross-entropy with teacher forcing."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..speech import SAMPLE_RATE, Utterance
from .family import Family
from .units import ModuleSpec, UnitMap, attention_spec, ffn_spec, need_int, tensor_prefix

TOKENS_PER_SECOND = 8  # LibriSpeech speech is ~3 words/s, ~4 tokens/s: twice that is a safe bound
TOKEN_MARGIN = 16
DECODER_TOKENS = 32  # decoder self-attention: about half of a 15 s utterance's tokens


def max_new_tokens(duration: float, limit: int) -> int:
    """Generation bound for an utterance of ``duration`` seconds."""
    return max(1, min(limit, int(math.ceil(duration * TOKENS_PER_SECOND)) + TOKEN_MARGIN))


def sentence_case(text: str) -> str:
    """LibriSpeech transcripts are upper case without punctuation; Whisper writes sentence case."""
    text = " ".join(text.split())
    return text.lower().capitalize() if text.isupper() else text


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers warns on every batch that max_new_tokens overrides the config's max_length
    (intended: the duration bound) and that Whisper's 30 s inputs carry no attention mask (none is
    needed); silence its logger during generation only."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class Whisper(Family):
    name = "whisper"
    model_types = ("whisper",)
    can_transcribe_translate = True

    def unit_map(self, config: dict[str, Any], names: set[str]) -> UnitMap:
        d = need_int(config, "d_model", "whisper")
        p = tensor_prefix(names, ("model.", ""), "encoder.layers.0.fc1.weight", "whisper")
        modules: list[ModuleSpec] = []
        for stack in ("encoder", "decoder"):
            heads = need_int(config, f"{stack}_attention_heads", "whisper")
            ffn = need_int(config, f"{stack}_ffn_dim", "whisper")
            for i in range(need_int(config, f"{stack}_layers", "whisper")):
                base = f"{p}{stack}.layers.{i}"
                sa_norm = f"{base}.self_attn_layer_norm"
                modules.append(
                    attention_spec(f"{base}.self_attn", f"{stack}.self_attn", i, heads, d, False, names, sa_norm)
                )
                if stack == "decoder":
                    # cross-attention keys and values read the encoder's output, after its final LayerNorm
                    enc_norm = f"{p}encoder.layer_norm"
                    modules.append(
                        attention_spec(
                            f"{base}.encoder_attn", "decoder.cross_attn", i, heads, d, False, names, enc_norm
                        )
                    )
                act = str(config.get("activation_function", "gelu"))
                norm = f"{base}.final_layer_norm"  # pre-LN: the FFN reads final_layer_norm(x)
                modules.append(
                    ffn_spec(f"{base}.ffn", f"{stack}.ffn", i, ffn, d, f"{base}.fc1", f"{base}.fc2", names, norm, act)
                )
        return UnitMap("whisper", tuple(modules))

    def required_tensors(self, config: dict[str, Any], names: set[str]) -> dict[str, tuple[int, ...]]:
        d = need_int(config, "d_model", "whisper")
        p = tensor_prefix(names, ("model.", ""), "encoder.layers.0.fc1.weight", "whisper")
        mels = int(config.get("num_mel_bins", 80))
        need: dict[str, tuple[int, ...]] = {
            f"{p}encoder.conv1.weight": (d, mels, 3),
            f"{p}encoder.conv1.bias": (d,),
            f"{p}encoder.conv2.weight": (d, d, 3),
            f"{p}encoder.conv2.bias": (d,),
            f"{p}encoder.embed_positions.weight": (int(config.get("max_source_positions", 1500)), d),
            f"{p}decoder.embed_tokens.weight": (int(config.get("vocab_size", 51865)), d),
            f"{p}decoder.embed_positions.weight": (int(config.get("max_target_positions", 448)), d),
        }
        for stack in ("encoder", "decoder"):
            ffn = need_int(config, f"{stack}_ffn_dim", "whisper")
            need[f"{p}{stack}.layer_norm.weight"] = need[f"{p}{stack}.layer_norm.bias"] = (d,)
            for i in range(need_int(config, f"{stack}_layers", "whisper")):
                base = f"{p}{stack}.layers.{i}"
                attns = ("self_attn", "encoder_attn") if stack == "decoder" else ("self_attn",)
                for attn in attns:
                    for t in ("q_proj.bias", "v_proj.bias", "out_proj.bias", "_layer_norm.weight", "_layer_norm.bias"):
                        need[f"{base}.{attn}{'' if t.startswith('_') else '.'}{t}"] = (d,)
                need[f"{base}.fc1.bias"] = (ffn,)
                need[f"{base}.fc2.bias"] = (d,)
                need[f"{base}.final_layer_norm.weight"] = need[f"{base}.final_layer_norm.bias"] = (d,)
        return need

    def attended_tokens(self, config: dict[str, Any], spec: ModuleSpec) -> int:
        """The encoder always sees its full 30 s window (max_source_positions frames), and so do
        the cross-attention heads; decoder self-attention sees the tokens so far."""
        if spec.module_type in ("encoder.self_attn", "decoder.cross_attn"):
            return int(config.get("max_source_positions", 1500))
        return DECODER_TOKENS

    def model_class(self) -> Any:
        import transformers

        return transformers.WhisperForConditionalGeneration

    def load_processor(self, path: Path) -> Any:
        import transformers

        return transformers.WhisperProcessor.from_pretrained(path)

    def transcribe(
        self, model: Any, processor: Any, batch: list[Utterance], language: str | None, task: str
    ) -> tuple[list[str], list[bool]]:
        import torch

        feats = processor.feature_extractor(
            [u.audio for u in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(model.device)
        limit = model.config.max_target_positions - 4
        bound = max(max_new_tokens(u.duration, limit) for u in batch)
        gen = copy.deepcopy(model.generation_config)
        gen.max_length = None  # the bound below is the only length limit (and no warning about two)
        gen.max_new_tokens, gen.do_sample, gen.num_beams = bound, False, 1
        kwargs: dict[str, Any] = {}
        if getattr(gen, "is_multilingual", False):
            kwargs.update(language=language or "en", task=task)
        with torch.no_grad(), quiet_transformers():
            out = model.generate(feats, generation_config=gen, **kwargs)
        sequences = (out.sequences if hasattr(out, "sequences") else out).cpu().tolist()
        eot = model.generation_config.eos_token_id
        # Whisper's text tokens are exactly the ids below <|endoftext|>. Every hypothesis is cut at
        # its own utterance's bound, so results do not depend on which utterances share a batch;
        # an utterance hit its bound when it produced as many text tokens as its duration allows.
        rows, hit = [], []
        for row, u in zip(sequences, batch, strict=True):
            bound_u = max_new_tokens(u.duration, limit)
            text_positions = [i for i, t in enumerate(row) if t < eot]
            if len(text_positions) > bound_u:
                row = row[: text_positions[bound_u]]
            rows.append(row)
            hit.append(len(text_positions) >= bound_u)
        texts = processor.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return texts, hit

    def targets(self, processor: Any, utt: Utterance, max_tokens: int | None) -> list[int]:
        # the decoder's positions bound the transcript
        return list(processor.tokenizer(sentence_case(utt.text)).input_ids)[:max_tokens]

    def count_targets(self, processor: Any, utts: list[Utterance], max_tokens: int | None) -> int:
        return sum(len(self.targets(processor, u, max_tokens)) - 1 for u in utts)

    def loss_sum(
        self, model: Any, processor: Any, utts: list[Utterance], device: Any, autocast: Any, max_tokens: int | None
    ) -> Any:
        import torch
        import torch.nn.functional as F

        ids = [self.targets(processor, u, max_tokens) for u in utts]
        feats = processor.feature_extractor(
            [u.audio for u in utts], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(device)
        width = max(len(t) for t in ids) - 1
        dec = torch.full((len(ids), width), processor.tokenizer.eos_token_id or 0, dtype=torch.long)
        lab = torch.full((len(ids), width), -100, dtype=torch.long)
        for i, t in enumerate(ids):
            dec[i, : len(t) - 1] = torch.tensor(t[:-1])
            lab[i, : len(t) - 1] = torch.tensor(t[1:])
        with autocast:
            logits = model(input_features=feats, decoder_input_ids=dec.to(device)).logits
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            lab.to(device).reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )


WHISPER = Whisper()
