"""Activation statistics of a model's FFN modules, as a file (numpy only: compress reads it
without torch, one module at a time).

One safetensors file (format version 3): per module ``{name}.mean`` (N,) float64 and
``{name}.cov_upper`` (N (N + 1) / 2,) float32, the covariance's upper triangle row by row (row i
holds cov[i, i:]); in the metadata the sample counts, the residual-stream variances, the source
model's digest, the settings that made it and a content digest of the whole file (checked on
reading: any damaged byte is refused). Version 2 files (the same without the content digest) and
version 1 files (``{name}.cov``, (N, N) float64) still read. Optional: the same two arrays per
layer input (``selfgen --layer-inputs``) and ``{W}.sensitivity`` (rows,) float64 per weight
tensor W, the output Fisher's diagonal (``selfgen --sensitivity``; small, read and checked when
the file is opened).

:func:`load_stats` checks the header and every module's record at once and reads a module's
arrays only when they are asked for (checked then: shape, dtype, finiteness, variances >= 0 and
no correlation beyond +-1 within tolerance), so the caller holds one module at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, InvalidArgumentError, path_argument
from .jsontext import dumps
from .output import atomic_file
from .safetensors import SafetensorsFile, SafetensorsWriter

STATS_KEY = "clusterprune_activation_stats"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
DIGEST_VERSION = 3  # from this version on the file carries a content digest, checked on reading
SENSITIVITY_KEY = "sensitivity"  # the metadata's record of the output Fisher diagonals (optional)
SENSITIVITY_SUFFIX = ".sensitivity"


@dataclass(frozen=True)
class ModuleStats:
    mean: np.ndarray  # (N,) E[act], float64
    cov: np.ndarray  # (N, N) covariance of the activations, float64, symmetric
    count: int  # positions seen
    stream_variance: float  # total variance of the residual stream entering the module's LayerNorm


@dataclass(frozen=True)
class ModuleInfo:
    """What the file's record says of a module, without its arrays."""

    n: int
    count: int
    stream_variance: float


class LazyModules(Mapping[str, ModuleStats]):
    """{module name: ModuleStats}, each built by ``load(name)`` when it is asked for (not kept)."""

    def __init__(self, infos: dict[str, ModuleInfo], load: Callable[[str], ModuleStats]) -> None:
        self.infos = infos
        self._load = load

    def __getitem__(self, name: str) -> ModuleStats:
        if name not in self.infos:
            raise KeyError(name)
        return self._load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)


def _infos(modules: Mapping[str, ModuleStats]) -> dict[str, ModuleInfo]:
    if isinstance(modules, LazyModules):
        return dict(modules.infos)
    return {n: ModuleInfo(m.mean.shape[0], m.count, m.stream_variance) for n, m in modules.items()}


def upper_triangle(cov: np.ndarray) -> np.ndarray:
    """The upper triangle of a square matrix, row by row (row i: cov[i, i:]), as float32."""
    n = cov.shape[0]
    out = np.empty(n * (n + 1) // 2, dtype=np.float32)
    start = 0
    for i in range(n):
        out[start : start + n - i] = cov[i, i:]
        start += n - i
    return out


def from_upper_triangle(packed: np.ndarray, n: int) -> np.ndarray:
    """The symmetric float64 matrix of :func:`upper_triangle`'s packing."""
    out = np.empty((n, n))
    start = 0
    for i in range(n):
        row = np.asarray(packed[start : start + n - i], dtype=np.float64)
        out[i, i:] = row
        out[i:, i] = row
        start += n - i
    return out


@dataclass(frozen=True)
class ActivationStats:
    modules: Mapping[str, ModuleStats]
    source: str = ""
    digest: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    file: str = "the statistics file"  # where it was read from (for messages)
    # layer inputs (selfgen --layer-inputs): {site: moments of the input some linear layers share}
    # and {site or FFN module: the weight tensors that read it}; E[x x^T] is cov + mean mean^T
    inputs: Mapping[str, ModuleStats] = field(default_factory=dict)
    feeds: dict[str, list[str]] = field(default_factory=dict)
    # selfgen --sensitivity: {weight tensor: the output Fisher's diagonal per output channel}, and
    # the sequences it is the mean over
    sensitivity: dict[str, np.ndarray] = field(default_factory=dict)
    sensitivity_count: int = 0

    def provenance(self) -> dict[str, Any]:
        """What the output's record keeps of the statistics: where from, which weights, how made."""
        return {"source": self.source, "digest": self.digest, "settings": self.settings}

    def infos(self) -> dict[str, ModuleInfo]:
        """Every module's size, count and stream variance, without building its arrays."""
        return _infos(self.modules)

    def input_infos(self) -> dict[str, ModuleInfo]:
        """Every layer input's size and count, without building its arrays."""
        return _infos(self.inputs)

    def check_source(self, model: str | os.PathLike[str]) -> None:
        """Refuses statistics made from other weights than the checkpoint at ``model``."""
        if self.digest != model_digest(model):
            raise InvalidArgumentError(
                f"{self.file}: the statistics were made from other weights ({self.source}) than {model} "
                "(digest differs)"
            )

    def input_site(self, tensor: str) -> str | None:
        """The layer input (or FFN module) whose moments the linear layer with weight ``tensor``
        reads (the fc2 of an FFN module reads its activations), or None when the file has none."""
        return next((s for s, names in self.feeds.items() if tensor in names), None)

    def second_moment(self, tensor: str) -> np.ndarray | None:
        """E[x x^T] (float64) of the input of the linear layer whose weight is ``tensor``, or None."""
        site = self.input_site(tensor)
        if site is None:
            return None
        m = self.inputs[site] if site in self.inputs else self.modules[site]
        return m.cov + np.outer(m.mean, m.mean)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Written atomically (a temporary file and one rename), one module at a time."""
        infos, inputs = self.infos(), self.input_infos()
        entries = []
        for name, info in (infos | inputs).items():
            entries += [(f"{name}.mean", "F64", (info.n,)), (f"{name}.cov_upper", "F32", (info.n * (info.n + 1) // 2,))]
        meta = {
            "modules": {n: {"count": i.count, "stream_variance": i.stream_variance} for n, i in infos.items()},
            "source": self.source,
            "digest": self.digest,
            "settings": self.settings,
            "version": FORMAT_VERSION,
        }
        if inputs:
            meta["inputs"] = {n: {"count": i.count} for n, i in inputs.items()}
            meta["feeds"] = {n: sorted(t) for n, t in self.feeds.items()}
        if self.sensitivity:
            meta[SENSITIVITY_KEY] = {"count": self.sensitivity_count, "tensors": sorted(self.sensitivity)}
            entries += [(f"{t}{SENSITIVITY_SUFFIX}", "F64", (v.shape[0],)) for t, v in sorted(self.sensitivity.items())]
        with atomic_file(path, what="the statistics file") as tmp:
            writer = SafetensorsWriter(tmp, entries, {STATS_KEY: dumps(meta, STATS_KEY, sort_keys=True)}, digest=True)
            try:
                for name in infos | inputs:
                    m = self.modules[name] if name in infos else self.inputs[name]
                    writer.write(f"{name}.mean", np.asarray(m.mean, dtype=np.float64))
                    writer.write(f"{name}.cov_upper", upper_triangle(m.cov))
                for t, v in sorted(self.sensitivity.items()):
                    writer.write(f"{t}{SENSITIVITY_SUFFIX}", np.asarray(v, dtype=np.float64))
            except BaseException:
                writer.abort()
                raise
            writer.close()


SLACK = 1e-2  # of the module's largest variance: what float32 sums over thousands of positions can be off by
ROWS = 512


def check_covariance(cov: np.ndarray, what: str) -> None:
    """Refuses a matrix that cannot be a covariance: a variance below zero, or a covariance larger
    than the product of the standard deviations allows (|cov_ij| <= sd_i sd_j: a correlation
    beyond +-1), beyond the rounding of float32 sums (SLACK of the module's largest variance). A
    necessary condition of positive semi-definiteness, checked in O(N^2) a row block at a time.
    A variance a rounding error below zero (a neuron that barely varies: float32 sums of squares
    less the squared mean) is left as it is: the consumers' ridge absorbs it."""
    diagonal = np.arange(cov.shape[0])
    diag = cov[diagonal, diagonal]
    scale = max(float(np.abs(diag).max()) if diag.size else 0.0, 1e-30)
    if np.any(diag < -SLACK * scale):
        raise CorruptCheckpointError(f"{what}: a variance is negative")
    sd = np.sqrt(np.maximum(diag, 0.0))
    for r0 in range(0, cov.shape[0], ROWS):
        bound = np.outer(sd[r0 : r0 + ROWS], sd) * (1 + SLACK) + SLACK * scale
        rows = np.abs(cov[r0 : r0 + ROWS]) > bound
        if rows.any():
            i, j = (int(v) for v in np.argwhere(rows)[0])
            raise CorruptCheckpointError(
                f"{what}: not a covariance (entry [{r0 + i}, {j}] exceeds the product of the standard deviations)"
            )


def model_digest(path: str | os.PathLike[str]) -> str:
    """sha256 over a checkpoint's safetensors files in name order (statistics belong to weights)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _module_info(path: Path, name: str, info: Any) -> tuple[int, float]:
    if not isinstance(info, dict):
        raise CorruptCheckpointError(f"{path}: {name}: the module's record is not a JSON object")
    count, stream = info.get("count"), info.get("stream_variance")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CorruptCheckpointError(f"{path}: {name}: count {count!r} is not a positive integer")
    if isinstance(stream, bool) or not isinstance(stream, (int, float)) or not np.isfinite(stream) or stream < 0:
        raise CorruptCheckpointError(f"{path}: {name}: stream_variance {stream!r} is not a finite number >= 0")
    return count, float(stream)


def load_stats(path: str | os.PathLike[str]) -> ActivationStats:
    """Opens and checks a statistics file (one-line errors naming the file and the tensor); a
    module's arrays are read when the caller asks for that module."""
    path_argument(path, "the statistics file")
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: no such statistics file (make one with `clusterprune selfgen`)")
    f = SafetensorsFile(path)
    try:
        raw = f.metadata.get(STATS_KEY)
        if raw is None:
            raise CorruptCheckpointError(f"{path}: not a clusterprune statistics file (no {STATS_KEY} metadata)")
        try:
            meta = json.loads(raw)
            entries = meta["modules"]
            version = meta.get("version", 1)
        except (ValueError, KeyError, TypeError):
            raise CorruptCheckpointError(f"{path}: {STATS_KEY} metadata is not valid JSON with 'modules'") from None
        if version not in READABLE_VERSIONS:
            raise CorruptCheckpointError(
                f"{path}: statistics format version {version!r} is not one this release reads "
                f"({', '.join(map(str, READABLE_VERSIONS))}); make the file again with this release's selfgen"
            )
        if not isinstance(entries, dict):
            raise CorruptCheckpointError(f"{path}: {STATS_KEY} 'modules' is not a JSON object")
        f.verify_digest(required=version >= DIGEST_VERSION)
        cov_name, cov_dtype = ("cov", "F64") if version == 1 else ("cov_upper", "F32")
        inputs = meta.get("inputs", {}) if version >= DIGEST_VERSION else {}
        feeds = meta.get("feeds", {}) if version >= DIGEST_VERSION else {}
        if not isinstance(inputs, dict) or not isinstance(feeds, dict):
            raise CorruptCheckpointError(f"{path}: {STATS_KEY} 'inputs' or 'feeds' is not a JSON object")
        for site, names in feeds.items():
            if site not in inputs and site not in entries:
                raise CorruptCheckpointError(f"{path}: 'feeds' names {site}, which the file does not hold")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise CorruptCheckpointError(f"{path}: {site}: 'feeds' is not a list of tensor names")
        if set(inputs) & set(entries):
            raise CorruptCheckpointError(
                f"{path}: {sorted(set(inputs) & set(entries))[0]} is both a module and an input"
            )
        infos: dict[str, ModuleInfo] = {}
        for name, info in list(entries.items()) + [(n, {**i, "stream_variance": 0.0}) for n, i in inputs.items()]:
            count, stream = _module_info(path, name, info)
            mean_t, cov_t = f"{name}.mean", f"{name}.{cov_name}"
            for tensor, dtype in ((mean_t, "F64"), (cov_t, cov_dtype)):
                if tensor not in f.tensors:
                    raise CorruptCheckpointError(f"{path}: tensor {tensor} is missing")
                if f.tensors[tensor].dtype != dtype:
                    raise CorruptCheckpointError(
                        f"{path}: tensor {tensor} is {f.tensors[tensor].dtype}, expected {dtype}"
                    )
            mean_shape, cov_shape = tuple(f.tensors[mean_t].shape), tuple(f.tensors[cov_t].shape)
            n = mean_shape[0] if len(mean_shape) == 1 else -1
            expected = (n, n) if version == 1 else (n * (n + 1) // 2,)
            if n < 1 or cov_shape != expected:
                raise CorruptCheckpointError(
                    f"{path}: {name}: mean {mean_shape} and covariance {cov_shape} do not match"
                )
            infos[name] = ModuleInfo(n, count, stream)
        sensitivity, sequences = _sensitivity(path, f, meta.get(SENSITIVITY_KEY) if version >= DIGEST_VERSION else None)
    except BaseException:
        f.close()
        raise

    def load(name: str) -> ModuleStats:
        info = infos[name]
        mean = np.array(f.raw(f"{name}.mean"), dtype=np.float64)
        stored = f.raw(f"{name}.{cov_name}")
        cov = np.array(stored, dtype=np.float64) if version == 1 else from_upper_triangle(stored, info.n)
        for tensor in (f"{name}.mean", f"{name}.{cov_name}"):
            f.drop_pages(tensor)  # copied: the file's pages need not stay in this process's memory
        for what, arr in ((f"{name}.mean", mean), (f"{name}.{cov_name}", cov)):
            if not np.all(np.isfinite(arr)):
                raise CorruptCheckpointError(f"{path}: tensor {what} holds NaN or infinite values")
        if version == 1:
            cov = (cov + cov.T) / 2
        check_covariance(cov, f"{path}: tensor {name}.{cov_name}")
        return ModuleStats(mean, cov, info.count, info.stream_variance)

    return ActivationStats(
        LazyModules({n: i for n, i in infos.items() if n in entries}, load),
        str(meta.get("source", "")),
        str(meta.get("digest", "")),
        meta.get("settings", {}),
        str(path),
        LazyModules({n: i for n, i in infos.items() if n in inputs}, load),
        feeds,
        sensitivity,
        sequences,
    )


def _sensitivity(path: Path, f: SafetensorsFile, record: Any) -> tuple[dict[str, np.ndarray], int]:
    """The output Fisher diagonals the metadata promises, read and checked (small: one value per
    output channel): present, float64, one axis, finite and >= 0."""
    if record is None:
        return {}, 0
    count = record.get("count") if isinstance(record, dict) else None
    tensors = record.get("tensors") if isinstance(record, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CorruptCheckpointError(f"{path}: {SENSITIVITY_KEY} count {count!r} is not a positive integer")
    if not isinstance(tensors, list) or not all(isinstance(t, str) for t in tensors):
        raise CorruptCheckpointError(f"{path}: {SENSITIVITY_KEY} 'tensors' is not a list of tensor names")
    out: dict[str, np.ndarray] = {}
    for name in tensors:
        stored = f"{name}{SENSITIVITY_SUFFIX}"
        if stored not in f.tensors:
            raise CorruptCheckpointError(f"{path}: tensor {stored} is missing")
        info = f.tensors[stored]
        if info.dtype != "F64" or len(info.shape) != 1 or info.shape[0] < 1:
            raise CorruptCheckpointError(
                f"{path}: tensor {stored} is {info.dtype} {list(info.shape)}, expected F64 with one axis"
            )
        values = np.array(f.raw(stored), dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise CorruptCheckpointError(f"{path}: tensor {stored} holds a negative, NaN or infinite value")
        out[name] = values
    return out, count
