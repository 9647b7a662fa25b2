"""A model named as users name it: a local directory, or a Hugging Face hub id resolved with
huggingface_hub's ``snapshot_download`` (cached; served from the local cache offline with
``HF_HUB_OFFLINE=1``), as ``from_pretrained`` does."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointNotFoundError, path_argument

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "model.bin"]


def resolve_model(name: str | os.PathLike[str]) -> Path:
    """The local directory of ``name``: the path itself when it exists (or is not a hub id),
    else the hub snapshot (safetensors weights and the JSON/text files beside them)."""
    path_argument(name, "the model")
    path = Path(name)
    if path.exists() or not HUB_ID.match(str(name)):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointNotFoundError(
            f"{name}: no such directory, and resolving it as a Hugging Face hub id needs huggingface_hub "
            "(pip install huggingface_hub)"
        ) from None
    try:
        return Path(snapshot_download(repo_id=str(name), allow_patterns=PATTERNS))
    except Exception as exc:  # offline without a cache, unknown repo, network error: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointNotFoundError(f"{name}: no such directory, and not available from the hub: {first}") from None
