"""A Hugging Face checkpoint directory read without torch: config.json plus one
``model.safetensors`` or shards listed by ``model.safetensors.index.json``."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, NonFiniteError, path_argument
from .safetensors import FLOAT_DTYPES, SafetensorsFile, TensorInfo, first_non_finite, nbytes, to_f32

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"{path}: invalid JSON: {exc}") from None
    except OSError as exc:
        raise CorruptCheckpointError(f"{path}: cannot read: {exc.strerror}") from None


def shard_path(root: Path, shard: object, index: Path) -> Path:
    """The path of a shard named by an index, which must be a file name inside ``root``: an
    absolute path, a '..' or a link out of the directory is refused (a shard outside the
    checkpoint would be read from, and its name reused for writing, elsewhere)."""
    if not isinstance(shard, str) or not shard:
        raise CorruptCheckpointError(f"{index}: shard name {shard!r} is not a file name")
    rel = Path(shard)
    if rel.is_absolute() or ".." in rel.parts or len(rel.parts) != 1:
        raise CorruptCheckpointError(
            f"{index}: shard {shard!r} is not a file name inside the checkpoint directory (refused)"
        )
    path = root / rel
    if path.resolve().parent != root.resolve():
        raise CorruptCheckpointError(f"{index}: shard {shard!r} links outside the checkpoint directory (refused)")
    return path


class Checkpoint:
    """Memory-mapped view of a checkpoint directory. Nothing is ever written through it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path_argument(path, "the checkpoint")
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
            shards: dict[str, Path] = {}
            for shard in weight_map.values():
                shards.setdefault(shard, shard_path(self.path, shard, self.path / INDEX))
            for shard in sorted(shards):
                if not shards[shard].is_file():
                    raise CheckpointNotFoundError(f"{shards[shard]}: shard listed in {INDEX} not found")
                self.files[shard] = SafetensorsFile(shards[shard])
            for name, shard in weight_map.items():
                if name not in self.files[shard].tensors:
                    raise CorruptCheckpointError(f"{self.path / shard}: tensor {name} listed in {INDEX} is missing")
                self.where[name] = shard
            # a tensor stored in a shard but missing from the weight_map is still part of the
            # checkpoint and is carried over; one stored in two shards is ambiguous: refused
            stored: dict[str, str] = {}
            for shard, f in self.files.items():
                for name in f.tensors:
                    if name in stored:
                        raise CorruptCheckpointError(
                            f"{self.path}: tensor {name} is stored in both {stored[name]} and {shard}"
                        )
                    stored[name] = shard
                    self.where.setdefault(name, shard)
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

    @property
    def unlisted(self) -> list[str]:
        """Tensors stored in a shard but missing from the index's weight_map."""
        if self.index is None:
            return []
        listed = self.index["weight_map"]
        return [n for n in self.names() if n not in listed]

    def copy_aux_files(self, dst: Path, skip: frozenset[str] = frozenset()) -> None:
        """Copies every file and folder of the checkpoint directory but its weights (and ``skip``)
        into ``dst``. Anything that is not a regular file or folder (a FIFO, a socket, a dangling
        link) is refused: it cannot be carried over faithfully."""
        for entry in sorted(self.path.iterdir()):
            if entry.name in self.weight_files or entry.name in skip:
                continue
            try:
                mode = entry.stat().st_mode
            except OSError:
                raise CorruptCheckpointError(f"{entry}: a dangling link in the checkpoint directory") from None
            try:
                if stat.S_ISDIR(mode):
                    shutil.copytree(entry, dst / entry.name, ignore_dangling_symlinks=True)
                elif stat.S_ISREG(mode):
                    shutil.copy2(entry, dst / entry.name)
                else:
                    raise CorruptCheckpointError(
                        f"{entry}: not a regular file or folder (a FIFO, socket or device): remove it from the checkpoint"
                    )
            except (OSError, shutil.Error) as exc:
                raise CorruptCheckpointError(f"{entry}: cannot copy: {exc}") from None

    def names(self) -> list[str]:
        """Tensor names, in file order then offset order (a stable, deterministic order)."""
        out: list[str] = []
        for fname, f in self.files.items():
            out.extend(sorted((n for n in f.tensors if self.where.get(n) == fname), key=lambda n: f.tensors[n].begin))
        return out

    def info(self, name: str) -> TensorInfo:
        return self.files[self.where[name]].tensors[name]

    def check_finite(self) -> None:
        """Refuses a checkpoint with a NaN or Inf in any floating tensor (one line naming it)."""
        for name in self.names():
            info = self.info(name)
            if info.dtype in FLOAT_DTYPES:
                bad = first_non_finite(self.raw(name), info.dtype)
                self.drop_pages(name)
                if bad is not None:
                    where = [int(i) for i in np.unravel_index(bad, info.shape)] if info.shape else []
                    raise NonFiniteError(
                        f"{self.file_of(name)}: tensor {name} has a non-finite value (NaN or Inf) at index {where}"
                    )

    def total_bytes(self, shapes: dict[str, tuple[int, ...]] | None = None) -> int:
        """Bytes of every tensor (with ``shapes`` replacing the stored shapes where given)."""
        return sum(nbytes(self.info(n).dtype, (shapes or {}).get(n, self.info(n).shape)) for n in self.names())

    def file_of(self, name: str) -> Path:
        return self.path / self.where[name]

    def raw(self, name: str) -> np.ndarray:
        return self.files[self.where[name]].raw(name)

    def raw_bytes(self, name: str) -> memoryview:
        return self.files[self.where[name]].raw_bytes(name)

    def drop_pages(self, name: str) -> None:
        """Releases the resident pages reading ``name`` mapped in (see SafetensorsFile.drop_pages)."""
        self.files[self.where[name]].drop_pages(name)

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
