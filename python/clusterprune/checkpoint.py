"""A Hugging Face checkpoint directory read without torch: config.json plus one
``model.safetensors`` or shards listed by ``model.safetensors.index.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointNotFoundError, CorruptCheckpointError
from .safetensors_io import SafetensorsFile, TensorInfo, to_f32

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"{path}: invalid JSON: {exc}") from None


class Checkpoint:
    """Memory-mapped view of a checkpoint directory. Nothing is ever written through it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointNotFoundError(f"{self.path}: no such checkpoint directory")
        if not self.path.is_dir():
            raise CheckpointNotFoundError(f"{self.path}: not a directory (expected a checkpoint directory)")
        self.config: dict[str, Any] = read_json(self.path / "config.json")
        if not isinstance(self.config, dict):
            raise CorruptCheckpointError(f"{self.path / 'config.json'}: not a JSON object")
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}
        self.index: dict[str, Any] | None = None
        try:
            self._open_weights()
        except BaseException:
            self.close()
            raise

    def _open_weights(self) -> None:
        if (self.path / INDEX).is_file():
            self.index = read_json(self.path / INDEX)
            weight_map = self.index.get("weight_map") if isinstance(self.index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CorruptCheckpointError(f"{self.path / INDEX}: no weight_map")
            for shard in sorted(set(weight_map.values())):
                shard_path = self.path / shard
                if not shard_path.is_file():
                    raise CheckpointNotFoundError(f"{shard_path}: shard listed in {INDEX} not found")
                self.files[shard] = SafetensorsFile(shard_path)
            for name, shard in weight_map.items():
                if name not in self.files[shard].tensors:
                    raise CorruptCheckpointError(f"{self.path / shard}: tensor {name} listed in {INDEX} is missing")
                self.where[name] = shard
        elif (self.path / SINGLE).is_file():
            self.files[SINGLE] = SafetensorsFile(self.path / SINGLE)
            self.where = {name: SINGLE for name in self.files[SINGLE].tensors}
        else:
            raise CheckpointNotFoundError(
                f"{self.path}: no {SINGLE} or {INDEX} (only safetensors checkpoints are supported)"
            )

    @property
    def weight_files(self) -> list[str]:
        names = list(self.files)
        if self.index is not None:
            names.append(INDEX)
        return names

    def names(self) -> list[str]:
        """Tensor names, in file order then offset order (a stable, deterministic order)."""
        out: list[str] = []
        for fname, f in self.files.items():
            out.extend(sorted((n for n in f.tensors if self.where.get(n) == fname), key=lambda n: f.tensors[n].begin))
        return out

    def info(self, name: str) -> TensorInfo:
        return self.files[self.where[name]].tensors[name]

    def file_of(self, name: str) -> Path:
        return self.path / self.where[name]

    def raw(self, name: str) -> np.ndarray:
        return self.files[self.where[name]].raw(name)

    def raw_bytes(self, name: str) -> memoryview:
        return self.files[self.where[name]].raw_bytes(name)

    def f32(self, name: str) -> np.ndarray:
        return to_f32(self.raw(name), self.info(name).dtype)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
