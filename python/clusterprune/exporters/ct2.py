"""Export a Whisper checkpoint (dense, fused or folded) as a CTranslate2 model directory that
``ctranslate2.models.Whisper(OUT)`` and ``faster_whisper.WhisperModel(OUT)`` load offline.

The CTranslate2 model spec is filled from the safetensors with numpy (no torch): ctranslate2's
own ``WhisperSpec`` describes the layout, quantizes (``--quantization``) and writes model.bin.

* FFN widths: CTranslate2 reads each layer's width from its weight shapes, so a folded model's
  per-layer widths carry over as they are (the FFN work shrinks).
* Heads: CTranslate2 has one head count per encoder or decoder stack. A folded attention module
  that kept K < N heads is padded back to N: zero rows in q/k/v (weights and biases) and zero
  columns in out_proj for the removed heads. A zero head has uniform attention over zero values
  and a zero output projection, so it adds exactly nothing: the function is unchanged, but the
  attention work is that of N heads.
* dtypes: tensors stay in the checkpoint's dtype unless ``--quantization`` converts them (int8
  quantizes the linear weights, one absmax scale per output row, and keeps every other tensor in
  the stored dtype). A bfloat16 checkpoint is handed over as float32 (numpy has no bfloat16).
* Non-weight files: tokenizer.json (required: without it faster-whisper tries to download one),
  the other tokenizer files, preprocessor_config.json and generation_config.json are copied;
  ``clusterprune_export.json`` records the export and the source's compression plan (read by
  ``clusterprune inspect``).
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedModelError
from ..io.checkpoint import Checkpoint, read_json
from ..io.jsontext import dumps
from ..io.metadata import read_compression, read_folded
from ..io.output import atomic_directory, check_destination
from ..io.palette import refuse_palettized
from ..io.resolve import resolve_model
from ..io.safetensors import to_f32
from ..models.checks import validate_checkpoint
from ..models.registry import family_of
from ..models.whisper import WHISPER

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
EXPORT_FILE = "clusterprune_export.json"
CARRIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "preprocessor_config.json",
    "generation_config.json",
)


def _ctranslate2() -> Any:
    try:
        import ctranslate2.specs.whisper_spec as whisper_spec
    except ImportError:
        raise UnsupportedModelError(
            "export-ct2 needs the ctranslate2 package: pip install 'clusterprune[ct2]'"
        ) from None
    return whisper_spec


def is_ct2_dir(path: str | os.PathLike[str]) -> bool:
    """A CTranslate2 model directory (model.bin, no safetensors weights)."""
    p = Path(path)
    return (
        (p / "model.bin").is_file()
        and not (p / "model.safetensors").exists()
        and not (p / "model.safetensors.index.json").exists()
    )


class _Arrays:
    """Tensors of the checkpoint as numpy arrays in the dtype the export keeps."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt

    def __call__(self, name: str) -> np.ndarray:
        dtype = self.ckpt.info(name).dtype
        if dtype == "F16":
            return np.array(self.ckpt.raw(name))
        if dtype == "F32":
            return np.array(self.ckpt.raw(name), dtype=np.float32)
        return to_f32(self.ckpt.raw(name), dtype)  # BF16, F64: float32


def _padded(rows: np.ndarray, width: int, axis: int) -> np.ndarray:
    """``rows`` with zeros appended along ``axis`` up to ``width``."""
    missing = width - rows.shape[axis]
    if missing <= 0:
        return rows
    shape = list(rows.shape)
    shape[axis] = missing
    return np.concatenate([rows, np.zeros(shape, dtype=rows.dtype)], axis=axis)


SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")


def _vocabulary(tokenizer: dict[str, Any], size: int, config: dict[str, Any], where: Path) -> list[str]:
    """Token of every id 0..size-1: the tokenizer's, then Whisper's timestamp tokens for the
    tail it lacks (as CTranslate2's own converter does). Refused when it cannot drive the model:
    Whisper's special tokens missing or past the model's embedding, or not at the ids the model's
    config names (an export that could never transcribe)."""
    by_id: dict[int, str] = {}
    vocab = (tokenizer.get("model") or {}).get("vocab") if isinstance(tokenizer.get("model"), dict) else None
    if not isinstance(vocab, dict):
        raise CorruptCheckpointError(f"{where}: tokenizer.json has no model.vocab object")
    try:
        for token, i in vocab.items():
            by_id[_token_id(i)] = token
        for added in tokenizer.get("added_tokens") or []:
            by_id[_token_id(added["id"])] = str(added["content"])
    except (KeyError, TypeError, ValueError):
        raise CorruptCheckpointError(f"{where}: tokenizer.json has a token without a valid integer id") from None
    known = 0
    while known in by_id:
        known += 1
    if any(i >= known for i in by_id if i < size):
        raise CorruptCheckpointError(f"{where}: tokenizer.json has no token with id {known}")
    tokens = [by_id[i] for i in range(min(known, size))] + ["<|%.2f|>" % (i * 0.02) for i in range(size - known)]
    ids = {token: i for i, token in reversed(list(enumerate(tokens)))}
    for token in SPECIAL_TOKENS:
        if token not in ids:
            raise CorruptCheckpointError(
                f"{where}: the vocabulary has no {token} among the model's {size} token ids: not this Whisper "
                "model's tokenizer (the export could not transcribe)"
            )
    for key, token in (("decoder_start_token_id", "<|startoftranscript|>"), ("eos_token_id", "<|endoftext|>")):
        if isinstance(config.get(key), int) and config[key] != ids[token]:
            raise CorruptCheckpointError(
                f"{where}: {token} has id {ids[token]}, but config.json's {key} is {config[key]}: "
                "not this model's tokenizer"
            )
    return tokens


def _token_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


def _config(src: Path, config: dict[str, Any], layers: int, heads: int) -> dict[str, Any]:
    gen = read_json(src / "generation_config.json") if (src / "generation_config.json").is_file() else {}
    if not isinstance(gen, dict):
        raise CorruptCheckpointError(f"{src / 'generation_config.json'}: not a JSON object")
    alignment = gen.get("alignment_heads") or list(itertools.product(range(layers // 2, layers), range(heads)))
    return {
        "suppress_ids": list(gen.get("suppress_tokens", config.get("suppress_tokens")) or []),
        "suppress_ids_begin": list(gen.get("begin_suppress_tokens", config.get("begin_suppress_tokens")) or []),
        "lang_ids": sorted((gen.get("lang_to_id") or {}).values()),
        "alignment_heads": [list(h) for h in alignment],
    }


def require_whisper(ckpt: Checkpoint) -> None:
    if family_of(ckpt.config, str(ckpt.path / "config.json")) is not WHISPER:
        raise UnsupportedModelError(
            f"{ckpt.path}: CTranslate2 export supports Whisper only (model_type "
            f"{ckpt.config.get('model_type')!r}): CTranslate2 has no HuBERT loader"
        )


def build_spec(ckpt: Checkpoint) -> tuple[Any, dict[str, Any]]:
    """(the filled ctranslate2 WhisperSpec, what the export did: padded heads, FFN widths)."""
    whisper_spec = _ctranslate2()
    config = ckpt.config
    require_whisper(ckpt)
    refuse_palettized(
        config, ckpt.path, "exported in the compact format (CTranslate2 has no tables)", compact_only=True
    )
    folded = read_folded(config, ckpt.path / "config.json") or {}
    umap = WHISPER.unit_map(config, set(ckpt.where))
    specs = {s.name: s for s in umap.modules}
    validate_checkpoint(ckpt, umap, folded)
    get = _Arrays(ckpt)
    p = "model." if "model.encoder.conv1.weight" in ckpt.where else ""
    enc_layers, dec_layers = int(config["encoder_layers"]), int(config["decoder_layers"])
    enc_heads, dec_heads = int(config["encoder_attention_heads"]), int(config["decoder_attention_heads"])
    spec = whisper_spec.WhisperSpec(enc_layers, enc_heads, dec_layers, dec_heads)
    padded: dict[str, list[int]] = {}
    widths: dict[str, int] = {}

    def linear(target: Any, name: str) -> None:
        target.weight = get(f"{name}.weight")
        if f"{name}.bias" in ckpt.where:
            target.bias = get(f"{name}.bias")

    def norm(target: Any, name: str) -> None:
        target.gamma, target.beta = get(f"{name}.weight"), get(f"{name}.bias")

    def heads(module: str, projections: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(weight, bias) of q/k/v and out_proj, padded to the stack's head count."""
        s = specs[module]
        full = s.n_units * s.unit_rows
        kept = folded.get(module, s.n_units)
        if kept < s.n_units:
            padded[module] = [kept, s.n_units]
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for proj in projections:
            w = get(f"{module}.{proj}.weight")
            bias_name = f"{module}.{proj}.bias"
            if proj == "out_proj":
                out[proj] = (_padded(w, full, axis=1), get(bias_name))
                continue
            b = get(bias_name) if bias_name in ckpt.where else np.zeros(w.shape[0], dtype=w.dtype)
            out[proj] = (_padded(w, full, axis=0), _padded(b, full, axis=0))
        return out

    def fused(target: Any, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        target.weight = np.concatenate([w for w, _ in parts])
        target.bias = np.concatenate([b for _, b in parts])

    def self_attention(target: Any, base: str) -> None:
        h = heads(f"{base}.self_attn", ["q_proj", "k_proj", "v_proj", "out_proj"])
        fused(target.linear[0], [h["q_proj"], h["k_proj"], h["v_proj"]])
        target.linear[1].weight, target.linear[1].bias = h["out_proj"]
        norm(target.layer_norm, f"{base}.self_attn_layer_norm")

    def ffn(target: Any, base: str) -> None:
        linear(target.linear_0, f"{base}.fc1")
        linear(target.linear_1, f"{base}.fc2")
        norm(target.layer_norm, f"{base}.final_layer_norm")
        widths[f"{base}.ffn"] = int(ckpt.info(f"{base}.fc1.weight").shape[0])

    enc = spec.encoder
    linear(enc.conv1, f"{p}encoder.conv1")
    linear(enc.conv2, f"{p}encoder.conv2")
    enc.position_encodings.encodings = get(f"{p}encoder.embed_positions.weight")
    norm(enc.layer_norm, f"{p}encoder.layer_norm")
    for i, layer in enumerate(enc.layer):
        base = f"{p}encoder.layers.{i}"
        self_attention(layer.self_attention, base)
        ffn(layer.ffn, base)
    dec = spec.decoder
    embed = get(f"{p}decoder.embed_tokens.weight")
    dec.embeddings.weight = embed
    dec.position_encodings.encodings = get(f"{p}decoder.embed_positions.weight")
    norm(dec.layer_norm, f"{p}decoder.layer_norm")
    # Whisper ties the output projection to the token embedding (an untied proj_out is used as stored)
    dec.projection.weight = get("proj_out.weight") if "proj_out.weight" in ckpt.where else embed
    for i, layer in enumerate(dec.layer):
        base = f"{p}decoder.layers.{i}"
        self_attention(layer.self_attention, base)
        h = heads(f"{base}.encoder_attn", ["q_proj", "k_proj", "v_proj", "out_proj"])
        layer.attention.linear[0].weight, layer.attention.linear[0].bias = h["q_proj"]
        fused(layer.attention.linear[1], [h["k_proj"], h["v_proj"]])
        layer.attention.linear[2].weight, layer.attention.linear[2].bias = h["out_proj"]
        norm(layer.attention.layer_norm, f"{base}.encoder_attn_layer_norm")
        ffn(layer.ffn, base)
    return spec, {"padded_heads": padded, "ffn_widths": widths}


def export_ct2(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    quantization: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes the CTranslate2 model directory ``out`` (atomically); returns the export record."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise UnsupportedModelError(
            f"unknown quantization {quantization!r} (expected one of: {', '.join(QUANTIZATIONS)})"
        )
    src = resolve_model(model_dir)
    check_destination(out, sources=[src], overwrite=overwrite)
    with Checkpoint(src) as ckpt:
        require_whisper(ckpt)
        refuse_palettized(
            ckpt.config, src, "exported in the compact format (CTranslate2 has no tables)", compact_only=True
        )
        if not (src / "tokenizer.json").is_file():
            raise CheckpointNotFoundError(
                f"{src / 'tokenizer.json'}: file not found (faster-whisper would try to download one; "
                "export a checkpoint that has its tokenizer)"
            )
        tokenizer = read_json(src / "tokenizer.json")
        if not isinstance(tokenizer, dict):
            raise CorruptCheckpointError(f"{src / 'tokenizer.json'}: not a JSON object")
        spec, done = build_spec(ckpt)
        config = ckpt.config
        vocab_size = int(ckpt.info(next(n for n in ckpt.names() if n.endswith("decoder.embed_tokens.weight"))).shape[0])
        spec.register_vocabulary(_vocabulary(tokenizer, vocab_size, config, src / "tokenizer.json"))
        for key, value in _config(
            src, config, int(config["decoder_layers"]), int(config["decoder_attention_heads"])
        ).items():
            setattr(spec.config, key, value)
        record = read_compression(ckpt)
        try:
            spec.validate()
            spec.optimize(quantization=quantization)
        except (ValueError, TypeError) as exc:
            raise CorruptCheckpointError(f"{src}: CTranslate2 refused the model: {exc}") from None
        export = {
            "clusterprune_version": __version__,
            "format": "ctranslate2",
            "source": str(src),
            "quantization": quantization,
            "folded": read_folded(config, src / "config.json") is not None,
            "max_target_positions": int(config.get("max_target_positions", 448)),
            **done,
            "compression": record.raw if record is not None else None,
        }
        with atomic_directory(out, overwrite=overwrite, sources=[src]) as tmp:
            spec.save(str(tmp))
            for name in CARRIED:
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            export["model_bin_bytes"] = (tmp / "model.bin").stat().st_size
            (tmp / EXPORT_FILE).write_text(dumps(export, EXPORT_FILE, indent=2) + "\n")
    return export
