"""What clusterprune records in the checkpoints it writes, and the one reader of it.

* Every safetensors file of a compressed checkpoint carries ``__metadata__["clusterprune"]``: a
  JSON object with the record's ``format`` (checked on read: a newer format is refused), the
  package version, the export kind, the recipe (every choice), the sparsity, the seed and
  ``modules`` = {module name: [N, K]}.
* A folded checkpoint's config.json carries ``clusterprune_folded`` = {"modules": {module name: K},
  "version": ...}.

Readers (inspect, eval, fine-tuning, load_folded) go through :func:`read_compression` and
:func:`read_folded`, which check the types and turn corrupt metadata into a one-line error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CorruptCheckpointError, UnsupportedModelError
from .checkpoint import Checkpoint

METADATA_KEY = "clusterprune"
FOLDED_KEY = "clusterprune_folded"
FORMAT = 1  # the record's layout; a record without "format" was written by 0.1.0 (format 1)
PLAN_FILE = "clusterprune_plan.json"
EXPORTS = ("fused", "folded")


@dataclass(frozen=True)
class CompressionRecord:
    """The compression metadata of a checkpoint, checked."""

    version: str
    export: str
    recipe: dict[str, Any]
    sparsity: float
    seed: int
    modules: dict[str, tuple[int, int]]  # name -> (N, K)
    raw: dict[str, Any]  # the stored object, as stored

    @property
    def method(self) -> str:
        return str(self.recipe.get("method", "kmeans"))


def compression_record(
    *, version: str, export: str, recipe: dict[str, Any], sparsity: float, seed: int, modules: dict[str, list[int]]
) -> dict[str, Any]:
    """The object written under :data:`METADATA_KEY`."""
    return {
        "format": FORMAT,
        "version": version,
        "export": export,
        "recipe": recipe,
        "sparsity": sparsity,
        "seed": seed,
        "modules": modules,
    }


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_compression(raw_text: str, where: Path) -> CompressionRecord:
    """Checks one stored metadata string; every defect is one line naming ``where``."""
    bad = f"{where}: metadata '{METADATA_KEY}'"
    try:
        data = json.loads(raw_text)
    except json.JSONDecodeError:
        raise CorruptCheckpointError(f"{bad} is not valid JSON") from None
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{bad} is not a JSON object")
    fmt = data.get("format", 1)
    if not _is_int(fmt) or fmt < 1:
        raise CorruptCheckpointError(f"{bad}: 'format' {fmt!r} is not a positive integer")
    if fmt > FORMAT:
        raise UnsupportedModelError(
            f"{bad} has format {fmt}, newer than this clusterprune reads ({FORMAT}): upgrade clusterprune"
        )
    version, export, recipe = data.get("version"), data.get("export", "fused"), data.get("recipe")
    sparsity, seed, modules = data.get("sparsity", 0.0), data.get("seed", 0), data.get("modules")
    if not isinstance(version, str):
        raise CorruptCheckpointError(f"{bad}: 'version' is not a string")
    if export not in EXPORTS:
        raise CorruptCheckpointError(f"{bad}: 'export' {export!r} is not one of {', '.join(EXPORTS)}")
    if not isinstance(recipe, dict) or not all(isinstance(k, str) for k in recipe):
        raise CorruptCheckpointError(f"{bad}: 'recipe' is not a JSON object")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise CorruptCheckpointError(f"{bad}: 'sparsity' is not a number")
    if not _is_int(seed):
        raise CorruptCheckpointError(f"{bad}: 'seed' is not an integer")
    if not isinstance(modules, dict):
        raise CorruptCheckpointError(f"{bad}: 'modules' is not a JSON object")
    checked: dict[str, tuple[int, int]] = {}
    for name, nk in modules.items():
        if not (isinstance(nk, list) and len(nk) == 2 and all(_is_int(v) for v in nk) and 1 <= nk[1] <= nk[0]):
            raise CorruptCheckpointError(f"{bad}: module {name}: expected [N, K] with 1 <= K <= N, got {nk!r}")
        checked[name] = (nk[0], nk[1])
    return CompressionRecord(version, export, recipe, float(sparsity), seed, checked, data)


def read_compression(ckpt: Checkpoint) -> CompressionRecord | None:
    """The compression metadata of ``ckpt`` (from its first file that has it), or None."""
    for f in ckpt.files.values():
        raw = f.metadata.get(METADATA_KEY)
        if raw is not None:
            return parse_compression(raw, f.path)
    return None


def read_folded(config: dict[str, Any], where: Path) -> dict[str, int] | None:
    """{module name: K} of a folded checkpoint's config.json, or None when it is not folded."""
    if FOLDED_KEY not in config:
        return None
    entry = config[FOLDED_KEY]
    modules = entry.get("modules") if isinstance(entry, dict) else None
    if not isinstance(modules, dict):
        raise CorruptCheckpointError(f"{where}: '{FOLDED_KEY}' has no 'modules' object")
    for name, k in modules.items():
        if not _is_int(k) or k < 1:
            raise CorruptCheckpointError(f"{where}: '{FOLDED_KEY}' module {name}: K {k!r} is not a positive integer")
    return dict(modules)
