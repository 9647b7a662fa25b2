"""Torch-free safetensors reading (memory-mapped) and atomic, streaming writing.

The format: 8-byte little-endian header length, a JSON header mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an optional ``__metadata__`` of
str -> str), then the data buffer. bfloat16 tensors are exposed as uint16 bit patterns.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CorruptCheckpointError, UnsupportedModelError

# safetensors dtype -> numpy storage dtype (bf16 as its uint16 bit pattern)
STORAGE = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class SafetensorsFile:
    """A memory-mapped safetensors file. Arrays it returns are read-only views."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            self._fh = open(self.path, "rb")
        except OSError as exc:
            raise CorruptCheckpointError(f"{self.path}: cannot open: {exc.strerror}") from None
        try:
            self.tensors, self.metadata, self._data_start = _parse_header(self.path, self._fh, size)
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except BaseException:
            self._fh.close()
            raise

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self._fh.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def raw(self, name: str) -> np.ndarray:
        """The tensor in its storage dtype (bf16 as uint16), read-only, memory-mapped."""
        info = self.tensors[name]
        if info.dtype not in STORAGE:
            raise UnsupportedModelError(f"{self.path}: tensor {name} has unsupported dtype {info.dtype}")
        assert self._mm is not None
        arr = np.frombuffer(self._mm, dtype=STORAGE[info.dtype], count=info.numel, offset=self._data_start + info.begin)
        return arr.reshape(info.shape)

    def raw_bytes(self, name: str) -> memoryview:
        info = self.tensors[name]
        assert self._mm is not None
        start = self._data_start + info.begin
        return memoryview(self._mm)[start : self._data_start + info.end]


def _parse_header(path: Path, fh, size: int) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    if size < 8:
        raise CorruptCheckpointError(f"{path}: corrupt safetensors file: only {size} bytes, no header")
    (n,) = struct.unpack("<Q", fh.read(8))
    if n > MAX_HEADER or 8 + n > size:
        raise CorruptCheckpointError(
            f"{path}: corrupt safetensors header: header length {n} exceeds the file size {size}"
        )
    try:
        header = json.loads(fh.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: corrupt safetensors header: not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    data_len = size - 8 - n
    for name, entry in header.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptCheckpointError(f"{path}: corrupt safetensors header: bad entry for tensor {name}") from None
        info = TensorInfo(name, dtype, shape, begin, end)
        if dtype in STORAGE and end - begin != info.numel * STORAGE[dtype].itemsize:
            raise CorruptCheckpointError(
                f"{path}: corrupt safetensors header: tensor {name} has {end - begin} bytes for shape {list(shape)} {dtype}"
            )
        if begin < 0 or end < begin:
            raise CorruptCheckpointError(f"{path}: corrupt safetensors header: bad offsets for tensor {name}")
        if end > data_len:
            raise CorruptCheckpointError(
                f"{path}: truncated file: tensor {name} ends at byte {end} but the data holds {data_len} bytes"
            )
        tensors[name] = info
    return tensors, {str(k): str(v) for k, v in metadata.items()}, 8 + n


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Storage array -> float32 (a new array)."""
    from . import _core

    if dtype == "F32":
        return np.array(raw, dtype=np.float32)
    if dtype == "BF16":
        return _core.bf16_to_f32(np.ascontiguousarray(raw))
    if dtype == "F16":
        return _core.f16_to_f32(np.ascontiguousarray(raw).view(np.uint16))
    if dtype == "F64":
        return raw.astype(np.float32)
    raise UnsupportedModelError(f"cannot compute with dtype {dtype}")


def from_f32(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> storage array of ``dtype`` (round to nearest even)."""
    from . import _core

    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values
    if dtype == "BF16":
        return _core.f32_to_bf16(values)
    if dtype == "F16":
        return _core.f32_to_f16(values).view(np.float16)
    if dtype == "F64":
        return values.astype(np.float64)
    raise UnsupportedModelError(f"cannot store dtype {dtype}")


def first_non_finite(raw: np.ndarray, dtype: str) -> int | None:
    """Flat index of the first NaN/Inf in a storage array, or None."""
    flat = raw.reshape(-1)
    if dtype == "BF16":
        bad = (flat & 0x7F80) == 0x7F80
    elif dtype in FLOAT_DTYPES:
        bad = ~np.isfinite(flat)
    else:
        return None
    idx = np.flatnonzero(bad)
    return int(idx[0]) if idx.size else None


class SafetensorsWriter:
    """Writes one safetensors file whose tensor table is known in advance; tensors may arrive in
    any order. Call :meth:`close` once every tensor was written."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        entries: Iterable[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        self._layout: dict[str, tuple[int, int, str, tuple[int, ...]]] = {}
        for name, dtype, shape in entries:
            nbytes = int(np.prod(shape, dtype=np.int64)) * STORAGE[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._layout[name] = (offset, nbytes, dtype, tuple(shape))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        self._start = 8 + len(blob)
        self._pending = set(self._layout)
        self._fh = open(self.path, "wb")
        self._fh.write(struct.pack("<Q", len(blob)) + blob)
        self._fh.truncate(self._start + offset)

    def write(self, name: str, data: np.ndarray | memoryview | bytes) -> None:
        offset, nbytes, dtype, shape = self._layout[name]
        if isinstance(data, np.ndarray):
            if tuple(data.shape) != shape:
                raise AssertionError(f"{name}: writing shape {data.shape}, declared {shape}")
            buf = np.ascontiguousarray(data, dtype=STORAGE[dtype]).tobytes()
        else:
            buf = bytes(data)
        if len(buf) != nbytes:
            raise AssertionError(f"{name}: {len(buf)} bytes, declared {nbytes}")
        self._fh.seek(self._start + offset)
        self._fh.write(buf)
        self._pending.discard(name)

    def close(self) -> None:
        if self._pending:
            self._fh.close()
            raise AssertionError(f"{self.path}: tensors never written: {sorted(self._pending)[:3]}")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()
