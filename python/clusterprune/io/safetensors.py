"""Torch-free safetensors reading (memory-mapped) and atomic, streaming writing.

The format: 8-byte little-endian header length, a JSON header mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an optional ``__metadata__`` of
str -> str), then the data buffer. bfloat16 tensors are exposed as uint16 bit patterns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._core import bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, first_non_finite_16
from ..errors import CorruptCheckpointError, UnsupportedModelError

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
# every dtype the format defines -> bytes per element (those without a numpy view are carried
# over as raw bytes)
ITEMSIZE = {
    **{name: dt.itemsize for name, dt in STORAGE.items()},
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
MAX_HEADER = 100 * 1024 * 1024
MAX_BYTES = 2**62  # no real tensor comes near; bigger claims are overflow attempts


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of ``shape`` and safetensors ``dtype`` takes (exact Python integers)."""
    count = 1
    for dim in shape:
        count *= dim
    return count * ITEMSIZE[dtype]


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

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


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
            head = self._fh.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER:
                    head += self._fh.read(n)
            self.tensors, self.metadata, self._data_start = parse_header(self.path, head, size)
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except BaseException:
            self._fh.close()
            raise

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # arrays handed out still view the map: it closes with the last of them
                pass
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
        if self._mm is None:  # a file of zero-size tensors only
            return np.zeros(info.shape, dtype=STORAGE[info.dtype])
        assert self._mm is not None
        arr = np.frombuffer(self._mm, dtype=STORAGE[info.dtype], count=info.numel, offset=self._data_start + info.begin)
        return arr.reshape(info.shape)

    def drop_pages(self, name: str) -> None:
        """Lets the kernel take back the pages of ``name`` that reading it mapped in (they count in
        this process's resident memory until then); arrays viewing them stay valid."""
        if self._mm is None:
            return
        info = self.tensors[name]
        start = (self._data_start + info.begin) // mmap.PAGESIZE * mmap.PAGESIZE
        end = self._data_start + info.end
        if end > start and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def verify_digest(self, required: bool = False) -> None:
        """Checks the content digest a :class:`SafetensorsWriter` with ``digest`` wrote (one line
        naming the file when any byte of a tensor, the tensor table or the metadata changed). A
        file without one passes unless ``required``."""
        expected = self.metadata.get(DIGEST_KEY)
        if expected is None:
            if required:
                raise CorruptCheckpointError(f"{self.path}: no content digest ('{DIGEST_KEY}' metadata)")
            return
        digests = {}
        for name in self.tensors:
            digests[name] = hashlib.blake2b(self.raw_bytes(name), digest_size=DIGEST_SIZE).hexdigest()
            self.drop_pages(name)
        metadata = {k: v for k, v in self.metadata.items() if k != DIGEST_KEY}
        table = {n: (i.dtype, tuple(i.shape)) for n, i in self.tensors.items()}
        if combine_digest(metadata, table, digests) != expected:
            raise CorruptCheckpointError(
                f"{self.path}: the content does not match its digest: the file was damaged after it was written"
            )

    def raw_bytes(self, name: str) -> memoryview | bytes:
        info = self.tensors[name]
        if self._mm is None:
            return b""
        start = self._data_start + info.begin
        return memoryview(self._mm)[start : self._data_start + info.end]


DIGEST_KEY = "clusterprune_digest"
DIGEST_SIZE = 32
PLACEHOLDER = "0" * (2 * DIGEST_SIZE)


def combine_digest(
    metadata: dict[str, str], table: dict[str, tuple[str, tuple[int, ...]]], digests: dict[str, str]
) -> str:
    """blake2b of the metadata (without the digest) and, in name order, every tensor's name, dtype,
    shape and the digest of its bytes."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    h.update(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(table):
        dtype, shape = table[name]
        h.update(json.dumps([name, dtype, list(shape), digests[name]]).encode())
    return h.hexdigest()


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_header(path: Path | str, head: bytes, size: int) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Checks a safetensors header as the format requires; ``head`` = the file's first 8 + N bytes
    (at least the first 8), ``size`` = the file's size. Returns (tensors, metadata, data start).
    Every defect is one :class:`CorruptCheckpointError` line naming the file and the tensor."""
    bad = f"{path}: corrupt safetensors header"
    if size < 8 or len(head) < 8:
        raise CorruptCheckpointError(f"{path}: corrupt safetensors file: only {size} bytes, no header")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER or 8 + n > size or len(head) < 8 + n:
        raise CorruptCheckpointError(f"{bad}: header length {n} exceeds the file size {size}")
    try:
        header = json.loads(head[8 : 8 + n].decode("utf-8"), object_pairs_hook=_unique_object)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and duplicate keys are ValueErrors
        raise CorruptCheckpointError(f"{bad}: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{bad}: not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptCheckpointError(f"{bad}: __metadata__ must be an object of strings")
    tensors: dict[str, TensorInfo] = {}
    data_len = size - 8 - n
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise CorruptCheckpointError(f"{bad}: bad entry for tensor {name}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in ITEMSIZE:
            raise CorruptCheckpointError(f"{bad}: tensor {name} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d < MAX_BYTES for d in shape):
            raise CorruptCheckpointError(f"{bad}: tensor {name} has a bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(v) for v in offsets)):
            raise CorruptCheckpointError(f"{bad}: bad entry for tensor {name}")
        begin, end = offsets
        if begin < 0 or end < begin:
            raise CorruptCheckpointError(f"{bad}: bad offsets for tensor {name}")
        info = TensorInfo(name, dtype, tuple(shape), begin, end)
        expected = nbytes(dtype, info.shape)
        if expected >= MAX_BYTES or end - begin != expected:
            raise CorruptCheckpointError(
                f"{bad}: tensor {name} has {end - begin} bytes for shape {list(shape)} {dtype}"
            )
        if end > data_len:
            raise CorruptCheckpointError(
                f"{path}: truncated file: tensor {name} ends at byte {end} but the data holds {data_len} bytes"
            )
        tensors[name] = info
    # the tensors tile the data buffer exactly: no overlap, no gap, nothing after the last one
    at = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != at:
            what = "overlaps the previous tensor" if info.begin < at else f"leaves a gap of {info.begin - at} bytes"
            raise CorruptCheckpointError(f"{bad}: tensor {info.name} {what} (data_offsets {info.begin}..{info.end})")
        at = info.end
    if at != data_len:
        raise CorruptCheckpointError(f"{bad}: {data_len - at} unexpected bytes after the last tensor")
    return tensors, dict(metadata), 8 + n


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Storage array -> float32 (a new array)."""
    if dtype == "F32":
        return np.array(raw, dtype=np.float32)
    if dtype == "BF16":
        return bf16_to_f32(np.ascontiguousarray(raw))
    if dtype == "F16":
        return f16_to_f32(np.ascontiguousarray(raw).view(np.uint16))
    if dtype == "F64":
        return raw.astype(np.float32)
    raise UnsupportedModelError(f"cannot compute with dtype {dtype}")


def from_f32(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> storage array of ``dtype`` (round to nearest even)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values
    if dtype == "BF16":
        return f32_to_bf16(values)
    if dtype == "F16":
        return f32_to_f16(values).view(np.float16)
    if dtype == "F64":
        return values.astype(np.float64)
    raise UnsupportedModelError(f"cannot store dtype {dtype}")


EXACT_IN_F32 = ("F32", "F16", "BF16")  # storage dtypes float32 holds exactly


def positive_zeros(raw: np.ndarray) -> np.ndarray:
    """A copy of a float storage array with every -0.0 made +0.0, as a sum with +0.0 makes it
    (the bytes of the other values unchanged)."""
    bits = np.array(raw).view(f"<u{raw.dtype.itemsize}")
    bits[bits == 1 << (8 * raw.dtype.itemsize - 1)] = 0
    return bits.view(raw.dtype)


def first_non_finite(raw: np.ndarray, dtype: str) -> int | None:
    """Flat index of the first NaN/Inf in a storage array, or None."""
    flat = raw.reshape(-1)
    if dtype in ("F16", "BF16"):  # exponent bits all set: what np.isfinite refuses, without converting
        bits = np.require(flat.view(np.uint16), requirements=["C", "A"])  # a copy when stored unaligned
        return first_non_finite_16(bits, dtype == "BF16")
    if dtype in FLOAT_DTYPES:
        bad = ~np.isfinite(flat)
    else:
        return None
    idx = np.flatnonzero(bad)
    return int(idx[0]) if idx.size else None


EARLY_WRITEBACK = 1 << 20  # tensors of this many bytes or more are handed to the disk as written


class SafetensorsWriter:
    """Writes one safetensors file whose tensor table is known in advance; tensors may arrive in
    any order, from any thread. Call :meth:`close` once every tensor was written."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        entries: Iterable[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
        *,
        digest: bool = False,
    ) -> None:
        """``digest``: the header's metadata gets :data:`DIGEST_KEY`, a hash of the metadata and of
        every tensor's name, dtype, shape and bytes (:func:`combine_digest`), written at close."""
        self.path = Path(path)
        header: dict[str, object] = {}
        self._metadata = dict(metadata or {})
        self._digests: dict[str, str] | None = {} if digest else None
        if digest:
            metadata = {**self._metadata, DIGEST_KEY: PLACEHOLDER}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        self._layout: dict[str, tuple[int, int, str, tuple[int, ...]]] = {}
        for name, dtype, shape in entries:
            size = nbytes(dtype, shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._layout[name] = (offset, size, dtype, tuple(shape))
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)
        field = f'"{DIGEST_KEY}":"'.encode()
        self._digest_at = 8 + blob.find(field + PLACEHOLDER.encode()) + len(field) if digest else -1
        self._start = 8 + len(blob)
        self._pending = set(self._layout)
        self._lock = threading.Lock()
        self._fh = open(self.path, "wb")
        self._fh.write(struct.pack("<Q", len(blob)) + blob)
        self._fh.truncate(self._start + offset)

    def write(self, name: str, data: np.ndarray | memoryview | bytes) -> None:
        offset, nbytes, dtype, shape = self._layout[name]
        if isinstance(data, np.ndarray):
            if tuple(data.shape) != shape:
                raise AssertionError(f"{name}: writing shape {data.shape}, declared {shape}")
            # the array's own bytes, not a copy of them
            buf = memoryview(np.ascontiguousarray(data, dtype=STORAGE[dtype]).reshape(-1).view(np.uint8))
        else:
            buf = memoryview(data).cast("B")
        if buf.nbytes != nbytes:
            raise AssertionError(f"{name}: {buf.nbytes} bytes, declared {nbytes}")
        digest = hashlib.blake2b(buf, digest_size=DIGEST_SIZE).hexdigest() if self._digests is not None else ""
        with self._lock:
            self._fh.seek(self._start + offset)
            self._fh.write(buf)
            if nbytes >= EARLY_WRITEBACK and hasattr(os, "posix_fadvise"):
                # the disk starts writing these bytes now, not all of them at the closing fsync
                self._fh.flush()
                with contextlib.suppress(OSError):  # a hint: a file system may not take it
                    os.posix_fadvise(self._fh.fileno(), self._start + offset, nbytes, os.POSIX_FADV_DONTNEED)
            self._pending.discard(name)
            if self._digests is not None:
                self._digests[name] = digest

    def close(self) -> None:
        if self._pending:
            self._fh.close()
            raise AssertionError(f"{self.path}: tensors never written: {sorted(self._pending)[:3]}")
        if self._digests is not None:
            table = {n: (dtype, shape) for n, (_, _, dtype, shape) in self._layout.items()}
            self._fh.seek(self._digest_at)
            self._fh.write(combine_digest(self._metadata, table, self._digests).encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()
