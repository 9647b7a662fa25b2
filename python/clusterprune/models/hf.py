"""Hugging Face loading (needs the ``hf`` extra: torch + transformers): dense and fused checkpoints
through ``from_pretrained``, folded ones through :func:`load_folded`, palettized ones through
:func:`load_palettized`.

A folded checkpoint is the genuinely smaller model: config.json is the original one plus
``clusterprune_folded`` = {module name: units kept}. We build the model from its config, shrink
the listed modules' nn.Linear layers (and the head counts of attention modules), then load the
weights.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, InvalidArgumentError, UnsupportedModelError, path_argument
from ..io.checkpoint import Checkpoint, read_json
from ..io.metadata import FOLDED_KEY, read_folded
from ..io.palette import PALETTE_KEY, read_marker, read_state
from ..memory import release_freed_memory
from ..progress import Progress
from .family import Family
from .registry import family_of
from .units import ModuleSpec


def _torch_modules() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise UnsupportedModelError(
            f"loading a model needs torch and transformers (pip install 'clusterprune[hf]'): {exc}"
        ) from None
    return torch, transformers


def torch_device(device: str) -> Any:
    """A torch device, with a clear error when it is unknown or not available here."""
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"--device {device}: torch sees no CUDA GPU on this machine")
    return target


def load_folded(path: str | os.PathLike[str], *, dtype: Any = None) -> Any:
    """A working transformers model (eval mode) from a folded clusterprune checkpoint."""
    path_argument(path, "the checkpoint")
    path = Path(path)
    with Checkpoint(path) as ckpt:
        if read_folded(ckpt.config, path / "config.json") is None:
            raise CorruptCheckpointError(
                f"{path / 'config.json'}: no '{FOLDED_KEY}' entry: not a folded clusterprune checkpoint"
            )
        return model_from_checkpoint(ckpt, dtype=dtype)


def model_from_checkpoint(ckpt: Checkpoint, *, dtype: Any = None) -> Any:
    """The model of a dense, fused or folded checkpoint, its weights copied in one tensor at a time
    (the file's pages released after each: resident memory stays the model and one tensor)."""

    def read(name: str) -> tuple[str, np.ndarray]:
        return ckpt.info(name).dtype, ckpt.raw(name)

    return model_from_state(ckpt.path, ckpt.config, set(ckpt.where), read, ckpt.drop_pages, dtype=dtype)


def load_palettized(path: str | os.PathLike[str], *, dtype: Any = None, progress: bool | None = None) -> Any:
    """A working transformers model (eval mode) from a palettized clusterprune checkpoint: the
    compact format (packed indices + tables) is dequantized in memory; the dequantized format
    loads as it is. A folded source gives the folded architecture. A progress bar on a terminal
    (``progress``: force it on or off)."""
    path_argument(path, "the checkpoint")
    path = Path(path)
    bar = Progress(2, "loading palettized model", progress)
    with Checkpoint(path) as ckpt:
        marker = read_marker(ckpt.config, path / "config.json")
        if marker is None:
            raise CorruptCheckpointError(f"{path / 'config.json'}: no '{PALETTE_KEY}' entry: not palettized")
        if marker["format"] != "compact":
            bar.update("weights in the dequantized format")
            model = model_from_checkpoint(ckpt, dtype=dtype)
            bar.update("model ready")
            return model
        bar.show("decoding tables and indices")
        state = read_state(ckpt)
        bar.update("weights read")
        bar.show("torch + transformers: building the model")
        model = model_from_state(path, ckpt.config, set(state), state.__getitem__, dtype=dtype)
        bar.update("model ready")
        return model


def model_from_state(
    path: Path,
    config_dict: dict[str, Any],
    names: set[str],
    read: Callable[[str], tuple[str, np.ndarray]],
    release: Callable[[str], None] | None = None,
    *,
    dtype: Any = None,
) -> Any:
    """The model of ``config.json`` (shrunk where the folded plan says) with the weights ``names``,
    each read as (safetensors dtype, storage array) by ``read`` and handed to ``release`` once
    copied. Strict: a tensor the architecture needs and the checkpoint lacks, one it does not
    know, or one of another shape is refused with one line (transformers would fill a missing one
    with random weights)."""
    torch, transformers = _torch_modules()
    folded = read_folded(config_dict, path / "config.json") or {}
    # the unit map of the *original* shapes comes from config.json alone
    family = family_of(config_dict, str(path / "config.json"))
    umap = family.unit_map(config_dict, names)
    config = transformers.AutoConfig.from_pretrained(path)
    arch = (config.architectures or [None])[0]
    model_cls = getattr(transformers, arch, None) if arch else family.model_class()
    if model_cls is None:
        raise UnsupportedModelError(f"{path / 'config.json'}: unknown architecture {arch!r}")
    with _no_init(transformers):  # every weight is overwritten below: no random initialisation
        model = model_cls.from_config(config) if model_cls.__name__.startswith("Auto") else model_cls(config)
    arch = type(model).__name__
    specs = {s.name: s for s in umap.modules}
    for name, k in folded.items():
        spec = specs.get(name)
        if spec is None:
            raise CorruptCheckpointError(f"{path / 'config.json'}: folded module {name} is not in the model")
        _shrink(torch, model, spec, int(k))
    targets = model.state_dict(keep_vars=True)
    found = _match_names(path, model, names, targets, arch)
    for key, name in found.items():
        stored, raw = read(name)
        target = targets[key]
        if tuple(raw.shape) != tuple(target.shape):
            raise CorruptCheckpointError(
                f"{path}: tensor {name} has shape {list(raw.shape)}, the {arch} model needs {list(target.shape)}"
            )
        with torch.no_grad():
            target.data.copy_(_as_torch(torch, raw, stored))  # converted in the copy: no temporary
        if release is not None:
            release(name)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    release_freed_memory()
    if (path / "generation_config.json").is_file() and hasattr(model, "generation_config"):
        model.generation_config = transformers.GenerationConfig.from_pretrained(path)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _as_torch(torch: Any, raw: np.ndarray, stored: str) -> Any:
    """A torch view of a storage array (bf16 stored as uint16), read-only in spirit: only copied from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        view = torch.from_numpy(np.ascontiguousarray(raw))
    return view.view(torch.bfloat16) if stored == "BF16" else view


def _no_init(transformers: Any) -> Any:
    """transformers' context that skips weight initialisation (a no-op context where it has none)."""
    for module in ("initialization", "modeling_utils"):
        try:
            skip = getattr(importlib.import_module(f"transformers.{module}"), "no_init_weights", None)
        except ImportError:
            continue
        if skip is not None:
            return skip()
    return contextlib.nullcontext()


def _tied_keys(model: Any) -> set[str]:
    """Weights tied to another (Whisper's proj_out to the token embedding): a checkpoint may omit them."""
    tied: set[str] = set()
    for sub_name, sub in model.named_modules():
        keys = getattr(sub, "_tied_weights_keys", None) or []
        tied.update(f"{sub_name}.{k}" if sub_name else str(k) for k in keys)
    return tied


def _match_names(path: Path, model: Any, names: set[str], targets: dict[str, Any], arch: str) -> dict[str, str]:
    """{model key: checkpoint name} for every tensor; refuses a missing or an unknown one."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    found: dict[str, str] = {}
    unknown: list[str] = []
    for name in sorted(names):
        candidates = [name, *_legacy_names(name)]
        if prefix:
            candidates += [f"{prefix}.{c}" for c in list(candidates)]
        key = next((c for c in candidates if c in targets and c not in found), None)
        if key is None:
            unknown.append(name)
        else:
            found[key] = name
    ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    unknown = [n for n in unknown if not any(p.search(n) for p in ignore)]
    if unknown:
        raise CorruptCheckpointError(
            f"{path}: {len(unknown)} tensor(s) are not part of the {arch} model, e.g. {unknown[0]} "
            "(a checkpoint of another architecture or a damaged one; refused)"
        )
    tied = _tied_keys(model)
    missing = [k for k in targets if k not in found and k not in tied]
    if missing:
        raise CorruptCheckpointError(
            f"{path}: the checkpoint lacks {len(missing)} tensor(s) the {arch} model needs, e.g. {missing[0]} "
            "(transformers would fill them with random weights; refused)"
        )
    return found


def _legacy_names(name: str) -> list[str]:
    """Names transformers also reads a tensor under: weight-norm's weight_g / weight_v (the
    positional convolution of wav2vec2 and HuBERT), LayerNorm's gamma / beta."""
    out = []
    for old, new in (
        (".weight_g", ".parametrizations.weight.original0"),
        (".weight_v", ".parametrizations.weight.original1"),
    ):
        if name.endswith(old):
            out.append(name[: -len(old)] + new)
    for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
        if name.endswith(old):
            out.append(name[: -len(old)] + new)
    return out


def _shrink(torch: Any, model: Any, spec: ModuleSpec, k: int) -> None:
    """Replaces the nn.Linear layers of one folded module by their smaller versions."""
    width = k * spec.unit_rows
    for part in spec.parts:
        if part.role == "bias":
            continue
        parent_path, attr = spec.linear_of(part).rsplit(".", 1)
        parent = model.get_submodule(parent_path)
        old = getattr(parent, attr)
        if part.role == "producer":
            new = torch.nn.Linear(old.in_features, width, bias=old.bias is not None, dtype=old.weight.dtype)
        else:
            new = torch.nn.Linear(width, old.out_features, bias=old.bias is not None, dtype=old.weight.dtype)
        setattr(parent, attr, new)
    if spec.kind == "attention":
        attn = model.get_submodule(spec.name)
        attn.num_heads = k
        if hasattr(attn, "embed_dim"):
            attn.embed_dim = width


def _read_config(path: Path) -> dict[str, Any]:
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise CorruptCheckpointError(f"{path / 'config.json'}: not a JSON object")
    return config


def load_weights(model_dir: str | os.PathLike[str]) -> Any:
    """The model (fp32, eval mode) of a dense, fused or folded checkpoint, without its processor;
    the weights are checked (format, shards, NaN/Inf) before transformers reads them."""
    path_argument(model_dir, "the checkpoint")
    return _load_weights(Path(model_dir))[0]


def _load_weights(path: Path, progress: bool | None = None) -> tuple[Any, Family]:
    _torch_modules()
    from transformers.utils import logging as hf_logging

    config = _read_config(path)
    family = family_of(config, str(path / "config.json"))
    with Checkpoint(path) as ckpt:
        ckpt.check_finite()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for a small local checkpoint
    try:
        if PALETTE_KEY in config:
            model = load_palettized(path, progress=progress)
        elif FOLDED_KEY in config:
            model = load_folded(path)
        else:
            with Checkpoint(path) as ckpt:
                model = model_from_checkpoint(ckpt)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.float().eval(), family


def load_model(model_dir: str | os.PathLike[str], progress: bool | None = None) -> tuple[Any, Any, Family]:
    """(model in fp32 eval mode, processor, family) for a dense, fused, folded or palettized
    checkpoint (``progress``: the palettized loader's bar, default on a terminal)."""
    path_argument(model_dir, "the checkpoint")
    path = Path(model_dir)
    model, family = _load_weights(path, progress)
    try:
        processor = family.load_processor(path)
    except (OSError, ValueError, TypeError) as exc:
        raise CorruptCheckpointError(
            f"{path}: cannot load the {family.name} processor (tokenizer / feature extractor files): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    return model, processor, family
