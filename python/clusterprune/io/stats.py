"""Activation statistics of a model's FFN modules, as a file (numpy only: compress reads it
without torch). One safetensors file: per module ``{name}.mean`` (N,), ``{name}.cov`` (N, N),
float64, and in the metadata the sample counts, the residual-stream variances, the source
model's digest and the settings that made it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, InvalidArgumentError
from .output import atomic_file
from .safetensors import SafetensorsFile, SafetensorsWriter

STATS_KEY = "clusterprune_activation_stats"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModuleStats:
    mean: np.ndarray  # (N,) E[act]
    cov: np.ndarray  # (N, N) covariance of the activations
    count: int  # positions seen
    stream_variance: float  # total variance of the residual stream entering the module's LayerNorm


@dataclass(frozen=True)
class ActivationStats:
    modules: dict[str, ModuleStats]
    source: str = ""
    digest: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    file: str = "the statistics file"  # where it was read from (for messages)

    def provenance(self) -> dict[str, Any]:
        """What the output's record keeps of the statistics: where from, which weights, how made."""
        return {"source": self.source, "digest": self.digest, "settings": self.settings}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Written atomically (a temporary file and one rename)."""
        entries = []
        for name, m in self.modules.items():
            entries += [(f"{name}.mean", "F64", m.mean.shape), (f"{name}.cov", "F64", m.cov.shape)]
        meta = {
            "modules": {n: {"count": m.count, "stream_variance": m.stream_variance} for n, m in self.modules.items()},
            "source": self.source,
            "digest": self.digest,
            "settings": self.settings,
            "version": FORMAT_VERSION,
        }
        with atomic_file(path, what="the statistics file") as tmp:
            writer = SafetensorsWriter(tmp, entries, {STATS_KEY: json.dumps(meta, sort_keys=True)})
            try:
                for name, m in self.modules.items():
                    writer.write(f"{name}.mean", m.mean)
                    writer.write(f"{name}.cov", m.cov)
            except BaseException:
                writer.abort()
                raise
            writer.close()


def model_digest(path: str | os.PathLike[str]) -> str:
    """sha256 over a checkpoint's safetensors files in name order (statistics belong to weights)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def load_stats(path: str | os.PathLike[str]) -> ActivationStats:
    """Reads and checks a statistics file (one-line errors naming the file and the tensor)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: no such statistics file (make one with `clusterprune selfgen`)")
    with SafetensorsFile(path) as f:
        raw = f.metadata.get(STATS_KEY)
        if raw is None:
            raise CorruptCheckpointError(f"{path}: not a clusterprune statistics file (no {STATS_KEY} metadata)")
        try:
            meta = json.loads(raw)
            entries = meta["modules"]
        except (ValueError, KeyError, TypeError):
            raise CorruptCheckpointError(f"{path}: {STATS_KEY} metadata is not valid JSON with 'modules'") from None
        modules = {}
        for name, info in entries.items():
            arrays = {}
            for what in ("mean", "cov"):
                tensor = f"{name}.{what}"
                if tensor not in f.tensors:
                    raise CorruptCheckpointError(f"{path}: tensor {tensor} is missing")
                if f.tensors[tensor].dtype != "F64":
                    raise CorruptCheckpointError(f"{path}: tensor {tensor} is {f.tensors[tensor].dtype}, expected F64")
                arrays[what] = np.array(f.raw(tensor), dtype=np.float64)
                if not np.all(np.isfinite(arrays[what])):
                    raise CorruptCheckpointError(f"{path}: tensor {tensor} holds NaN or infinite values")
            n = arrays["mean"].shape[0]
            if arrays["mean"].ndim != 1 or arrays["cov"].shape != (n, n):
                raise CorruptCheckpointError(
                    f"{path}: {name}: mean {arrays['mean'].shape} and covariance {arrays['cov'].shape} do not match"
                )
            # files of earlier releases may also hold measured damage curves ("fractions", "damage"): unused
            modules[name] = ModuleStats(
                arrays["mean"], arrays["cov"], int(info["count"]), float(info["stream_variance"])
            )
    return ActivationStats(
        modules, str(meta.get("source", "")), str(meta.get("digest", "")), meta.get("settings", {}), str(path)
    )
