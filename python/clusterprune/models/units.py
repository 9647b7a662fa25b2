"""Structured units: which tensors form which units, and the unit-matrix view of a tensor.

* attention module (one unit per head): the head's rows of W_q, W_k, W_v (producers), its q/k/v
  bias slices (biases) and its columns of W_out (consumer);
* FFN module (one unit per intermediate neuron): row i of fc1 (producer), fc1 bias i (bias) and
  column i of fc2 (consumer).

The families (:mod:`.whisper`, :mod:`.ctc`) build their unit maps from these pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import CorruptCheckpointError, ShapeMismatchError, UnsupportedModelError

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


UnitParts = Sequence[tuple[Part, np.ndarray]]  # (part, (N, width) unit matrix)


def blocks(parts: UnitParts, roles: tuple[str, ...]) -> list[np.ndarray]:
    """The unit matrices of the parts whose role is one of ``roles``, in part order."""
    return [m for p, m in parts if p.role in roles]


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


def need_int(config: dict[str, Any], key: str, family: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or value <= 0:
        raise UnsupportedModelError(f"config.json: {family} config needs a positive integer '{key}' (got {value!r})")
    return value


def tensor_prefix(names: set[str], candidates: tuple[str, ...], probe: str, family: str) -> str:
    """The first candidate name prefix under which ``probe`` is a tensor of the checkpoint."""
    for p in candidates:
        if p + probe in names:
            return p
    raise CorruptCheckpointError(f"{family} checkpoint: tensor {candidates[0]}{probe} not found")


def attention_spec(
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


def ffn_spec(
    name: str, mtype: str, layer: int, width: int, hidden: int, fc1: str, fc2: str, names: set[str], norm: str, act: str
) -> ModuleSpec:
    parts = [Part(f"{fc1}.weight", "producer")]
    if f"{fc1}.bias" in names:
        parts.append(Part(f"{fc1}.bias", "bias"))
    parts.append(Part(f"{fc2}.weight", "consumer"))
    out_bias = f"{fc2}.bias" if f"{fc2}.bias" in names else None
    return ModuleSpec(name, "ffn", mtype, layer, width, 1, hidden, tuple(parts), norm, act, out_bias)
