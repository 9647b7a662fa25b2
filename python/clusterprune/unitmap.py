"""Model-family unit maps: which tensors form which structured units.

* attention module (one unit per head): the head's rows of W_q, W_k, W_v (producers), its q/k/v
  bias slices (biases) and its columns of W_out (consumer);
* FFN module (one unit per intermediate neuron): row i of fc1 (producer), fc1 bias i (bias) and
  column i of fc2 (consumer).

Families: Whisper (encoder self-attention, decoder self- and cross-attention, FFNs) and
HuBERT / wav2vec2-style CTC encoders (post-LN and stable-layer-norm blocks share tensor names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import CorruptCheckpointError, ShapeMismatchError, UnsupportedModelError

Role = Literal["producer", "bias", "consumer"]


@dataclass(frozen=True)
class Part:
    """One tensor's share of every unit: rows of a producer weight, entries of a producer bias,
    or columns of a consumer weight."""

    tensor: str
    role: Role


@dataclass(frozen=True)
class ModuleSpec:
    name: str  # e.g. "model.encoder.layers.0.self_attn" or "model.encoder.layers.0.ffn"
    kind: Literal["attention", "ffn"]
    module_type: str  # e.g. "encoder.self_attn", "decoder.cross_attn", "encoder.ffn"
    layer: int
    n_units: int
    unit_rows: int  # head_dim for heads, 1 for neurons
    hidden: int  # model width
    parts: tuple[Part, ...]
    input_norm: str | None = None  # prefix of the LayerNorm whose output feeds the producers (V for heads)
    activation: str = "gelu"  # of FFN neurons
    consumer_bias: str | None = None  # bias of the consumer linear (fc2 / out_proj), if any

    def expected_shape(self, part: Part) -> tuple[int, ...]:
        width = self.n_units * self.unit_rows
        if part.role == "producer":
            return (width, self.hidden)
        if part.role == "bias":
            return (width,)
        return (self.hidden, width)

    def part_width(self, part: Part) -> int:
        return self.unit_rows * (1 if part.role == "bias" else self.hidden)

    @property
    def params_per_unit(self) -> int:
        return sum(self.part_width(p) for p in self.parts)

    def linear_of(self, part: Part) -> str:
        """Module path of the nn.Linear that owns a part."""
        return part.tensor.rsplit(".", 1)[0]


@dataclass(frozen=True)
class UnitMap:
    family: str
    modules: tuple[ModuleSpec, ...]


def to_units(arr: np.ndarray, spec: ModuleSpec, part: Part) -> np.ndarray:
    """Tensor -> (N, width) matrix, one row per unit."""
    n, r = spec.n_units, spec.unit_rows
    if part.role == "consumer":
        out = arr.shape[0]
        return arr.reshape(out, n, r).transpose(1, 2, 0).reshape(n, r * out)
    return arr.reshape(n, -1)


def from_units(units: np.ndarray, spec: ModuleSpec, part: Part) -> np.ndarray:
    """(M, width) unit matrix -> tensor with M units (inverse of :func:`to_units`)."""
    m, r = units.shape[0], spec.unit_rows
    if part.role == "consumer":
        return units.reshape(m, r, spec.hidden).transpose(2, 0, 1).reshape(spec.hidden, m * r)
    if part.role == "bias":
        return units.reshape(m * r)
    return units.reshape(m * r, spec.hidden)


def _need(config: dict[str, Any], key: str, family: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or value <= 0:
        raise UnsupportedModelError(f"config.json: {family} config needs a positive integer '{key}' (got {value!r})")
    return value


def _prefix(names: set[str], candidates: tuple[str, ...], probe: str, family: str) -> str:
    for prefix in candidates:
        if prefix + probe in names:
            return prefix
    raise CorruptCheckpointError(f"{family} checkpoint: tensor {candidates[0]}{probe} not found")


def _attention(
    name: str, mtype: str, layer: int, heads: int, hidden: int, k_bias: bool, names: set[str], norm: str | None
) -> ModuleSpec:
    if hidden % heads:
        raise ShapeMismatchError(f"config.json: hidden size {hidden} is not divisible by {heads} heads ({name})")
    parts = [Part(f"{name}.{p}_proj.weight", "producer") for p in ("q", "k", "v")]
    for p in ("q", "k", "v") if k_bias else ("q", "v"):
        if f"{name}.{p}_proj.bias" in names:
            parts.append(Part(f"{name}.{p}_proj.bias", "bias"))
    parts.append(Part(f"{name}.out_proj.weight", "consumer"))
    out_bias = f"{name}.out_proj.bias"
    return ModuleSpec(
        name,
        "attention",
        mtype,
        layer,
        heads,
        hidden // heads,
        hidden,
        tuple(parts),
        norm,
        consumer_bias=out_bias if out_bias in names else None,
    )


def _ffn(
    name: str, mtype: str, layer: int, width: int, hidden: int, fc1: str, fc2: str, names: set[str], norm: str, act: str
) -> ModuleSpec:
    parts = [Part(f"{fc1}.weight", "producer")]
    if f"{fc1}.bias" in names:
        parts.append(Part(f"{fc1}.bias", "bias"))
    parts.append(Part(f"{fc2}.weight", "consumer"))
    out_bias = f"{fc2}.bias" if f"{fc2}.bias" in names else None
    return ModuleSpec(name, "ffn", mtype, layer, width, 1, hidden, tuple(parts), norm, act, out_bias)


def whisper_map(config: dict[str, Any], names: set[str]) -> UnitMap:
    d = _need(config, "d_model", "whisper")
    p = _prefix(names, ("model.", ""), "encoder.layers.0.fc1.weight", "whisper")
    modules: list[ModuleSpec] = []
    for stack in ("encoder", "decoder"):
        heads = _need(config, f"{stack}_attention_heads", "whisper")
        ffn = _need(config, f"{stack}_ffn_dim", "whisper")
        for i in range(_need(config, f"{stack}_layers", "whisper")):
            base = f"{p}{stack}.layers.{i}"
            sa_norm = f"{base}.self_attn_layer_norm"
            modules.append(_attention(f"{base}.self_attn", f"{stack}.self_attn", i, heads, d, False, names, sa_norm))
            if stack == "decoder":
                # cross-attention keys and values read the encoder's output, after its final LayerNorm
                enc_norm = f"{p}encoder.layer_norm"
                modules.append(
                    _attention(f"{base}.encoder_attn", "decoder.cross_attn", i, heads, d, False, names, enc_norm)
                )
            act = str(config.get("activation_function", "gelu"))
            norm = f"{base}.final_layer_norm"  # pre-LN: the FFN reads final_layer_norm(x)
            modules.append(
                _ffn(f"{base}.ffn", f"{stack}.ffn", i, ffn, d, f"{base}.fc1", f"{base}.fc2", names, norm, act)
            )
    return UnitMap("whisper", tuple(modules))


def ctc_encoder_map(config: dict[str, Any], names: set[str]) -> UnitMap:
    family = str(config.get("model_type"))
    d = _need(config, "hidden_size", family)
    heads = _need(config, "num_attention_heads", family)
    ffn = _need(config, "intermediate_size", family)
    p = _prefix(names, (f"{family}.", ""), "encoder.layers.0.attention.q_proj.weight", family)
    modules: list[ModuleSpec] = []
    for i in range(_need(config, "num_hidden_layers", family)):
        base = f"{p}encoder.layers.{i}"
        if config.get("do_stable_layer_norm"):
            attn_norm = f"{base}.layer_norm"  # pre-LN: the block's own first LayerNorm
        else:  # post-LN: the block reads the previous block's output (its final LayerNorm)
            attn_norm = f"{p}encoder.layers.{i - 1}.final_layer_norm" if i else f"{p}encoder.layer_norm"
        modules.append(_attention(f"{base}.attention", "encoder.self_attn", i, heads, d, True, names, attn_norm))
        ff = f"{base}.feed_forward"
        # stable-layer-norm (pre-LN) blocks feed the FFN through final_layer_norm, post-LN blocks
        # through layer_norm (applied after the attention residual)
        norm = f"{base}.final_layer_norm" if config.get("do_stable_layer_norm") else f"{base}.layer_norm"
        act = str(config.get("hidden_act", "gelu"))
        modules.append(
            _ffn(ff, "encoder.ffn", i, ffn, d, f"{ff}.intermediate_dense", f"{ff}.output_dense", names, norm, act)
        )
    return UnitMap(family, tuple(modules))


FAMILIES = {"whisper": whisper_map, "hubert": ctc_encoder_map, "wav2vec2": ctc_encoder_map}


def unit_map(config: dict[str, Any], names: set[str]) -> UnitMap:
    """The unit map of a checkpoint, from its config.json and tensor names."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"config.json: unsupported model_type {model_type!r} (supported: {', '.join(sorted(FAMILIES))})"
        )
    return FAMILIES[model_type](config, names)
