"""Which tensors are palettized, and the data-free weight of each of their columns.

A linear layer's output error is (W - Q) x, so E|(W - Q) x|^2 = sum_ij (W - Q)_ij^2 E[x_j^2] when
the inputs are uncorrelated: each column j weighs with its input's second moment, known from the
weights under the Gaussian LayerNorm model (x = gamma * z + beta, z standard normal):

* q / k / v and fc1 read a LayerNorm: E[x_j^2] = gamma_j^2 + beta_j^2 (cross-attention q reads the
  decoder's own LayerNorm, k / v the encoder's final one);
* fc2 reads the activations: E[act(a_i)^2] = Var + mean^2 of the activation of
  a_i ~ N(w_i.beta + b_i, |w_i * gamma|^2) (the ``gauss_ln`` model of neurons);
* out_proj reads the attention-averaged values: E[v_d^2] ~ |W_v,d * gamma|^2 + (W_v,d.beta + b_d)^2;
* the token embedding is both the input table (every column alike) and the output projection
  (read by the decoder's final LayerNorm): the mean of the two normalised weights.

Every other tensor (convolutions, ...) is weighted uniformly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..io.checkpoint import Checkpoint
from ..io.safetensors import FLOAT_DTYPES
from ..models.registry import family_of
from ..models.units import ModuleSpec
from ..recipes.gaussian import activation_moments
from .config import PaletteConfig

EMBEDDING = re.compile(r"(^|\.)(embed_tokens|word_embeddings)\.weight$")


@dataclass(frozen=True)
class Target:
    name: str
    shape: tuple[int, ...]
    rows: int
    cols: int
    embedding: bool


def targets(ckpt: Checkpoint, config: PaletteConfig) -> list[Target]:
    """The tensors the config palettizes, in checkpoint order."""
    include = re.compile(config.include) if config.include else None
    exclude = re.compile(config.exclude) if config.exclude else None
    out = []
    for name in ckpt.names():
        info = ckpt.info(name)
        if info.dtype not in FLOAT_DTYPES or len(info.shape) < 2 or info.numel < max(config.min_size, 1):
            continue
        if (include and not include.search(name)) or (exclude and exclude.search(name)):
            continue
        rows = info.shape[0]
        out.append(Target(name, info.shape, rows, info.numel // rows, bool(EMBEDDING.search(name))))
    return out


def _norm(ckpt: Checkpoint, prefix: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    if prefix is None or f"{prefix}.weight" not in ckpt.where or f"{prefix}.bias" not in ckpt.where:
        return None
    return ckpt.f32(f"{prefix}.weight").astype(np.float64), ckpt.f32(f"{prefix}.bias").astype(np.float64)


def _second_moment(norm: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    gamma, beta = norm
    return gamma * gamma + beta * beta


def _ffn_weights(ckpt: Checkpoint, spec: ModuleSpec, out: dict[str, np.ndarray]) -> None:
    norm = _norm(ckpt, spec.input_norm)
    if norm is None:
        return
    producer = next(p.tensor for p in spec.parts if p.role == "producer")
    consumer = next(p.tensor for p in spec.parts if p.role == "consumer")
    bias = next((p.tensor for p in spec.parts if p.role == "bias"), None)
    out[producer] = _second_moment(norm)
    gamma, beta = norm
    w = ckpt.f32(producer).astype(np.float64)
    b = ckpt.f32(bias).astype(np.float64) if bias else 0.0
    mean, var = activation_moments(w @ beta + b, np.sqrt(((w * gamma) ** 2).sum(axis=1)), spec.activation)
    out[consumer] = var + mean * mean


def _attention_weights(ckpt: Checkpoint, spec: ModuleSpec, out: dict[str, np.ndarray]) -> None:
    norm = _norm(ckpt, spec.input_norm)
    if norm is None:
        return
    by_suffix = {p.tensor.rsplit(".", 2)[-2]: p.tensor for p in spec.parts if p.tensor.endswith(".weight")}
    query_norm = _norm(ckpt, spec.name + "_layer_norm") if spec.module_type == "decoder.cross_attn" else None
    for proj in ("q_proj", "k_proj", "v_proj"):
        if proj in by_suffix:
            out[by_suffix[proj]] = _second_moment(query_norm if proj == "q_proj" and query_norm else norm)
    if "v_proj" in by_suffix and "out_proj" in by_suffix:
        gamma, beta = norm
        wv = ckpt.f32(by_suffix["v_proj"]).astype(np.float64)
        bias_name = by_suffix["v_proj"].rsplit(".", 1)[0] + ".bias"
        bv = ckpt.f32(bias_name).astype(np.float64) if bias_name in ckpt.where else 0.0
        out[by_suffix["out_proj"]] = ((wv * gamma) ** 2).sum(axis=1) + (wv @ beta + bv) ** 2


def column_weights(ckpt: Checkpoint, chosen: list[Target], config: PaletteConfig) -> dict[str, np.ndarray]:
    """Per target: positive column weights with mean 1 (empty when uniform)."""
    if config.weighting == "none":
        return {}
    raw: dict[str, np.ndarray] = {}
    umap = family_of(ckpt.config).unit_map(ckpt.config, set(ckpt.where))
    for spec in umap.modules:
        (_ffn_weights if spec.kind == "ffn" else _attention_weights)(ckpt, spec, raw)
    final = next((p for p in ("model.decoder.layer_norm",) if f"{p}.weight" in ckpt.where), None)
    out: dict[str, np.ndarray] = {}
    for t in chosen:
        w = raw.get(t.name)
        if t.embedding and final is not None:
            norm = _norm(ckpt, final)
            if norm is not None and norm[0].shape == (t.cols,):
                m = _second_moment(norm)
                w = 0.5 * (m / max(float(m.mean()), 1e-30) + 1.0)
        if w is None or w.shape != (t.cols,):
            continue  # uniform (convolutions, shapes the model does not predict)
        mean = float(np.mean(w))
        if not np.all(np.isfinite(w)) or mean <= 0:
            continue
        out[t.name] = np.maximum(w / mean, 1e-6)  # a dead column still weighs a little (no zero weights)
    return out
