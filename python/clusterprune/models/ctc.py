"""HuBERT / wav2vec2-style CTC encoders: self-attention and FFN per block (post-LN and
stable-layer-norm blocks share tensor names); CTC argmax decoding; CTC loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..speech import SAMPLE_RATE, Utterance
from .family import Family
from .units import ModuleSpec, UnitMap, attention_spec, ffn_spec, need_int, tensor_prefix

CTC_TOKENS = 500  # 10 s of speech at 50 frames per second


class CtcEncoder(Family):
    name = "ctc"
    model_types = ("hubert", "wav2vec2")

    def unit_map(self, config: dict[str, Any], names: set[str]) -> UnitMap:
        family = str(config.get("model_type"))
        d = need_int(config, "hidden_size", family)
        heads = need_int(config, "num_attention_heads", family)
        ffn = need_int(config, "intermediate_size", family)
        p = tensor_prefix(names, (f"{family}.", ""), "encoder.layers.0.attention.q_proj.weight", family)
        stable = bool(config.get("do_stable_layer_norm"))
        act = str(config.get("hidden_act", "gelu"))
        modules: list[ModuleSpec] = []
        for i in range(need_int(config, "num_hidden_layers", family)):
            base = f"{p}encoder.layers.{i}"
            if stable:
                attn_norm = f"{base}.layer_norm"  # pre-LN: the block's own first LayerNorm
            else:  # post-LN: the block reads the previous block's output (its final LayerNorm)
                attn_norm = f"{p}encoder.layers.{i - 1}.final_layer_norm" if i else f"{p}encoder.layer_norm"
            modules.append(
                attention_spec(f"{base}.attention", "encoder.self_attn", i, heads, d, True, names, attn_norm)
            )
            ff = f"{base}.feed_forward"
            # stable-layer-norm (pre-LN) blocks feed the FFN through final_layer_norm, post-LN blocks
            # through layer_norm (applied after the attention residual)
            norm = f"{base}.final_layer_norm" if stable else f"{base}.layer_norm"
            modules.append(
                ffn_spec(
                    ff, "encoder.ffn", i, ffn, d, f"{ff}.intermediate_dense", f"{ff}.output_dense", names, norm, act
                )
            )
        return UnitMap(family, tuple(modules))

    def required_tensors(self, config: dict[str, Any], names: set[str]) -> dict[str, tuple[int, ...]]:
        """The transformer blocks' biases and LayerNorms and the CTC head (the convolutional
        feature encoder's layout varies with its config and is left to transformers)."""
        family = str(config.get("model_type"))
        d = need_int(config, "hidden_size", family)
        ffn = need_int(config, "intermediate_size", family)
        p = tensor_prefix(names, (f"{family}.", ""), "encoder.layers.0.attention.q_proj.weight", family)
        need: dict[str, tuple[int, ...]] = {f"{p}encoder.layer_norm.weight": (d,), f"{p}encoder.layer_norm.bias": (d,)}
        for i in range(need_int(config, "num_hidden_layers", family)):
            base = f"{p}encoder.layers.{i}"
            for t in ("q_proj", "k_proj", "v_proj", "out_proj"):
                need[f"{base}.attention.{t}.bias"] = (d,)
            for norm in ("layer_norm", "final_layer_norm"):
                need[f"{base}.{norm}.weight"] = need[f"{base}.{norm}.bias"] = (d,)
            need[f"{base}.feed_forward.intermediate_dense.bias"] = (ffn,)
            need[f"{base}.feed_forward.output_dense.bias"] = (d,)
        if any(str(a).endswith("ForCTC") for a in config.get("architectures") or []):
            vocab = need_int(config, "vocab_size", family)
            need["lm_head.weight"], need["lm_head.bias"] = (vocab, d), (vocab,)
        return need

    def attended_tokens(self, config: dict[str, Any], spec: ModuleSpec) -> int:
        return CTC_TOKENS

    def model_class(self) -> Any:
        import transformers

        return transformers.AutoModelForCTC

    def load_processor(self, path: Path) -> Any:
        import transformers

        return transformers.AutoProcessor.from_pretrained(path)

    def transcribe(
        self, model: Any, processor: Any, batch: list[Utterance], language: str | None, task: str
    ) -> tuple[list[str], list[bool]]:
        import torch

        inputs = processor([u.audio for u in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        mask = inputs.get("attention_mask")
        with torch.no_grad():
            logits = model(
                inputs.input_values.to(model.device), attention_mask=None if mask is None else mask.to(model.device)
            ).logits
        ids = torch.argmax(logits, dim=-1).cpu()
        return processor.batch_decode(ids), [False] * len(batch)

    def prepare_training(self, model: Any, freeze_feature_encoder: bool) -> None:
        if freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
            model.freeze_feature_encoder()

    def targets(self, processor: Any, utt: Utterance, max_tokens: int | None) -> list[int]:
        return list(processor.tokenizer(utt.text).input_ids)

    def count_targets(self, processor: Any, utts: list[Utterance], max_tokens: int | None) -> int:
        return sum(len(self.targets(processor, u, max_tokens)) for u in utts)

    def loss_sum(
        self, model: Any, processor: Any, utts: list[Utterance], device: Any, autocast: Any, max_tokens: int | None
    ) -> Any:
        import torch
        import torch.nn.functional as F

        ids = [self.targets(processor, u, max_tokens) for u in utts]
        inputs = processor([u.audio for u in utts], sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        mask = inputs.get("attention_mask")
        with autocast:
            logits = model(
                inputs.input_values.to(device), attention_mask=None if mask is None else mask.to(device)
            ).logits
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        base = model.module if hasattr(model, "module") else model
        if mask is None:
            in_len = torch.full((len(utts),), logits.shape[1], dtype=torch.long)
        else:
            in_len = base._get_feat_extract_output_lengths(mask.sum(-1)).long()
        targets = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)
        tgt_len = torch.tensor([len(t) for t in ids], dtype=torch.long)
        return F.ctc_loss(
            log_probs,
            targets.to(device),
            in_len.to(device),
            tgt_len.to(device),
            blank=base.config.pad_token_id,
            reduction="sum",
            zero_infinity=True,
        )


CTC = CtcEncoder()
