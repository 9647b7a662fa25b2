"""Hugging Face loading (needs the ``hf`` extra: torch + transformers): dense and fused checkpoints
through ``from_pretrained``, folded ones through :func:`load_folded`, palettized ones through
:func:`load_palettized`.

A folded checkpoint is the genuinely smaller model: config.json is the original one plus
``clusterprune_folded`` = {module name: units kept}. We build the model from its config, shrink
the listed modules' nn.Linear layers (and the head counts of attention modules), then load the
weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, InvalidArgumentError, UnsupportedModelError
from ..io.checkpoint import Checkpoint, read_json
from ..io.metadata import FOLDED_KEY, read_folded
from ..io.palette import PALETTE_KEY, read_marker, read_state
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


def _torch_state(state: dict[str, tuple[str, np.ndarray]]) -> dict[str, Any]:
    torch, _ = _torch_modules()
    out = {}
    for name, (dtype, arr) in state.items():
        t = torch.from_numpy(np.array(arr))  # a copy: never a view of the memory-mapped source
        out[name] = t.view(torch.bfloat16) if dtype == "BF16" else t
    return out


def load_folded(path: str | os.PathLike[str], *, dtype: Any = None) -> Any:
    """A working transformers model (eval mode) from a folded clusterprune checkpoint."""
    path = Path(path)
    with Checkpoint(path) as ckpt:
        if read_folded(ckpt.config, path / "config.json") is None:
            raise CorruptCheckpointError(
                f"{path / 'config.json'}: no '{FOLDED_KEY}' entry: not a folded clusterprune checkpoint"
            )
        state = {name: (ckpt.info(name).dtype, ckpt.raw(name)) for name in ckpt.names()}
        return model_from_state(path, ckpt.config, set(ckpt.where), state, dtype=dtype)


def load_palettized(path: str | os.PathLike[str], *, dtype: Any = None, progress: bool | None = None) -> Any:
    """A working transformers model (eval mode) from a palettized clusterprune checkpoint: the
    compact format (packed indices + tables) is dequantized in memory; the dequantized format
    loads as it is. A folded source gives the folded architecture. A progress bar on a terminal
    (``progress``: force it on or off)."""
    path = Path(path)
    bar = Progress(2, "loading palettized model", progress)
    with Checkpoint(path) as ckpt:
        marker = read_marker(ckpt.config, path / "config.json")
        if marker is None:
            raise CorruptCheckpointError(f"{path / 'config.json'}: no '{PALETTE_KEY}' entry: not palettized")
        if marker["format"] == "compact":
            bar.show("decoding tables and indices")
            state = read_state(ckpt)
        else:
            state = {name: (ckpt.info(name).dtype, ckpt.raw(name)) for name in ckpt.names()}
        bar.update("weights read")
        bar.show("torch + transformers: building the model")
        model = model_from_state(path, ckpt.config, set(state), state, dtype=dtype)
        bar.update("model ready")
        return model


def model_from_state(
    path: Path,
    config_dict: dict[str, Any],
    names: set[str],
    state: dict[str, tuple[str, np.ndarray]],
    *,
    dtype: Any = None,
) -> Any:
    """The model of ``config.json`` (shrunk where the folded plan says) with the weights ``state``
    ({name: (safetensors dtype, storage array)})."""
    torch, transformers = _torch_modules()
    folded = read_folded(config_dict, path / "config.json") or {}
    # the unit map of the *original* shapes comes from config.json alone
    umap = family_of(config_dict, str(path / "config.json")).unit_map(config_dict, names)
    weights = _torch_state(state)
    config = transformers.AutoConfig.from_pretrained(path)
    arch = (config.architectures or [None])[0]
    model_cls = getattr(transformers, arch, None) if arch else None
    if model_cls is None:
        raise UnsupportedModelError(f"{path / 'config.json'}: unknown architecture {arch!r}")
    model = model_cls(config)
    specs = {s.name: s for s in umap.modules}
    for name, k in folded.items():
        spec = specs.get(name)
        if spec is None:
            raise CorruptCheckpointError(f"{path / 'config.json'}: folded module {name} is not in the model")
        _shrink(torch, model, spec, int(k))
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a shape that disagrees with the folded plan
        raise CorruptCheckpointError(f"{path}: weights do not fit the model: {str(exc).splitlines()[-1]}") from None
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    real_missing = [m for m in missing if m not in tied and not m.endswith("proj_out.weight")]
    if real_missing or unexpected:
        raise CorruptCheckpointError(
            f"{path}: weights do not fit the model (missing {real_missing[:3]}, unexpected {unexpected[:3]})"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if (path / "generation_config.json").is_file() and hasattr(model, "generation_config"):
        model.generation_config = transformers.GenerationConfig.from_pretrained(path)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


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
            model = family.model_class().from_pretrained(path, dtype="float32")
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.float().eval(), family


def load_model(model_dir: str | os.PathLike[str], progress: bool | None = None) -> tuple[Any, Any, Family]:
    """(model in fp32 eval mode, processor, family) for a dense, fused, folded or palettized
    checkpoint (``progress``: the palettized loader's bar, default on a terminal)."""
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
