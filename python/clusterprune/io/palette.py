"""The palettized formats, and the one dequantization both of them use.

A palettized tensor W (rows x cols, any trailing dims flattened into cols) is stored as

* ``NAME.palette_lut``      (groups, 2^b) table entries (float16, or bfloat16 for a bf16 source,
  or float32 when asked), ascending within each table; ``group_rows = rows / groups`` consecutive
  rows share one table;
* ``NAME.palette_indices``  uint8, ceil(rows * cols * b / 8) bytes: index i (row-major) takes bits
  [i b, (i + 1) b) of the byte stream, least significant bit first;
* ``NAME.palette_scales``   (rows,) table dtype, only with per-row scales: W[r] = lut[...] * scale[r];
* ``NAME.palette_outlier_positions`` int64 (n,) ascending row-major positions, and
  ``NAME.palette_outlier_values`` (n,) source dtype: values kept exactly (only when there are any).

The file's ``__metadata__`` holds ``clusterprune_palette``: JSON {NAME: {"shape", "dtype", "bits",
"group_rows"}}. Tensors that are not palettized are stored as they are. config.json carries
:data:`PALETTE_KEY` = {"format": "compact" | "dequantized", "version"}; the per-tensor plan is
``clusterprune_palette.json``.

Dequantized value = ``from_f32(lut[g, idx] * scale[r], dtype)`` computed in float32 (no scale:
the entry itself), then outliers written back: the dequantized format stores exactly these values,
so both formats give the same model, bit for bit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._core import pack_indices as _pack
from .._core import unpack_indices as _unpack
from ..errors import CorruptCheckpointError, InvalidArgumentError
from .checkpoint import Checkpoint
from .safetensors import STORAGE, from_f32

PALETTE_KEY = "clusterprune_palettized"
PALETTE_PLAN = "clusterprune_palette.json"
HEADER_KEY = "clusterprune_palette"
FORMATS = ("dequantized", "compact")
SUFFIXES = {
    "lut": ".palette_lut",
    "indices": ".palette_indices",
    "scales": ".palette_scales",
    "positions": ".palette_outlier_positions",
    "values": ".palette_outlier_values",
}


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """uint8 indices (< 2^bits) -> the packed little-endian bit stream (uint8): index i fills bits
    i * bits .. (i + 1) * bits - 1, bit 0 being the lowest of byte 0."""
    return _pack(np.ascontiguousarray(indices, dtype=np.uint8).reshape(-1), int(bits))


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_indices`: ``count`` uint8 indices (InvalidArgumentError, a
    ValueError, when ``packed`` does not hold exactly their bytes)."""
    return _unpack(np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1), int(bits), int(count))


@dataclass(frozen=True)
class Palettized:
    """One palettized tensor in memory (storage arrays as the compact format holds them)."""

    shape: tuple[int, ...]
    dtype: str  # source safetensors dtype
    bits: int
    group_rows: int
    lut: np.ndarray  # (groups, 2^bits) float32 values (already rounded to lut_dtype)
    lut_dtype: str  # F16 / BF16 / F32
    indices: np.ndarray  # (rows, cols) uint8
    scales: np.ndarray | None  # (rows,) float32 values (already rounded)
    positions: np.ndarray  # int64 (n,)
    values: np.ndarray  # (n,) source storage dtype

    @property
    def rows(self) -> int:
        return self.shape[0]

    def dequantize(self) -> np.ndarray:
        """The tensor in its source storage dtype (see the module docstring)."""
        groups = np.arange(self.rows) // self.group_rows
        out = np.take_along_axis(self.lut[groups], self.indices.astype(np.intp), axis=1).astype(np.float32)
        if self.scales is not None:
            out = out * self.scales.astype(np.float32)[:, None]
        stored = from_f32(out, self.dtype).reshape(-1)
        if self.positions.size:
            stored[self.positions] = self.values
        return stored.reshape(self.shape)


def encode(name: str, p: Palettized) -> dict[str, tuple[str, np.ndarray]]:
    """The compact tensors of one palettized tensor: {name: (safetensors dtype, storage array)}."""
    out = {
        name + SUFFIXES["lut"]: (p.lut_dtype, from_f32(p.lut, p.lut_dtype)),
        name + SUFFIXES["indices"]: ("U8", pack_indices(p.indices, p.bits)),
    }
    if p.scales is not None:
        out[name + SUFFIXES["scales"]] = (p.lut_dtype, from_f32(p.scales, p.lut_dtype))
    if p.positions.size:
        out[name + SUFFIXES["positions"]] = ("I64", p.positions.astype(np.int64))
        out[name + SUFFIXES["values"]] = (p.dtype, p.values)
    return out


def header_entry(p: Palettized) -> dict[str, Any]:
    return {"shape": list(p.shape), "dtype": p.dtype, "bits": p.bits, "group_rows": p.group_rows}


LUT_DTYPES = ("F16", "BF16", "F32")
MAX_ELEMENTS = 1 << 40  # no model tensor comes near: a larger shape is a damaged entry


@dataclass(frozen=True)
class Layout:
    """One palettized tensor as a compact file declares it, checked against the file's tensor
    table: every part present with the dtype and shape (byte count) the entry implies."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bits: int
    group_rows: int
    scales: bool
    outliers: int

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1


def _entry(where: Path, name: str, raw: Any) -> tuple[tuple[int, ...], str, int, int]:
    if not isinstance(raw, dict):
        raise CorruptCheckpointError(f"{where}: palette entry of {name} is not a JSON object")
    try:
        shape = tuple(_integer(d) for d in raw["shape"])
        dtype, bits, group_rows = raw["dtype"], _integer(raw["bits"]), _integer(raw["group_rows"])
    except (KeyError, TypeError, ValueError):
        raise CorruptCheckpointError(
            f"{where}: palette entry of {name} is malformed: {json.dumps(raw)[:200]}"
        ) from None
    if not isinstance(dtype, str) or dtype not in STORAGE or dtype not in LUT_DTYPES + ("F64",):
        raise CorruptCheckpointError(f"{where}: palette entry of {name} has unknown dtype {dtype!r}")
    if not shape or any(d < 1 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise CorruptCheckpointError(f"{where}: palette entry of {name} has an impossible shape {list(shape)}")
    if not 1 <= bits <= 8:
        raise CorruptCheckpointError(f"{where}: palette entry of {name} has {bits} bits (1 to 8)")
    if group_rows < 1 or shape[0] % group_rows:
        raise CorruptCheckpointError(f"{where}: {name}: group size {group_rows} does not divide {shape[0]} rows")
    return shape, dtype, bits, group_rows


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def read_entries(metadata: dict[str, str], where: Path) -> dict[str, Any]:
    """The palette entries of one compact file's header (empty when it has none)."""
    text = metadata.get(HEADER_KEY)
    if text is None:
        return {}
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        raise CorruptCheckpointError(f"{where}: metadata '{HEADER_KEY}' is not valid JSON") from None
    if not isinstance(entries, dict):
        raise CorruptCheckpointError(f"{where}: metadata '{HEADER_KEY}' is not a JSON object")
    return entries


def _check_part(ckpt: Checkpoint, where: Path, part: str, dtypes: tuple[str, ...], shape: tuple[int, ...]) -> None:
    info = ckpt.info(part)
    if info.dtype not in dtypes:
        raise CorruptCheckpointError(f"{where}: {part} is {info.dtype}, expected {' or '.join(dtypes)}")
    if tuple(info.shape) != shape:
        raise CorruptCheckpointError(f"{where}: {part} has shape {list(info.shape)}, expected {list(shape)}")


def layouts(ckpt: Checkpoint) -> dict[str, Layout]:
    """Every palettized tensor of a compact checkpoint, its entry checked against its parts: the
    one reader of the format's structure (inspect, eval and load_palettized go through it). A
    part without an entry, an entry without its parts, a plain tensor of the same name, a part in
    another file or of a wrong dtype, shape or byte count: one line naming the file and tensor."""
    out: dict[str, Layout] = {}
    for fname, f in ckpt.files.items():
        where = ckpt.path / fname
        f.verify_digest()  # a compact file carries one (files written before it did are read unchecked)
        for name, raw in read_entries(f.metadata, where).items():
            if name in out:
                raise CorruptCheckpointError(f"{where}: palettized tensor {name} is declared in two files")
            out[name] = _layout(ckpt, name, raw, where)
    for part in ckpt.names():
        if is_palette_part(part):
            owner = next(part[: -len(s)] for s in SUFFIXES.values() if part.endswith(s))
            if owner not in out:
                raise CorruptCheckpointError(
                    f"{ckpt.file_of(part)}: tensor {part} belongs to no palette entry (the '{HEADER_KEY}' metadata "
                    "lost it)"
                )
    return out


def _layout(ckpt: Checkpoint, name: str, raw: Any, where: Path) -> Layout:
    shape, dtype, bits, group_rows = _entry(where, name, raw)
    if name in ckpt.where:
        raise CorruptCheckpointError(f"{where}: tensor {name} is stored both plain and palettized")
    for part in ("lut", "indices"):
        if name + SUFFIXES[part] not in ckpt.where:
            raise CorruptCheckpointError(f"{where}: palettized tensor {name} has no {name + SUFFIXES[part]}")
    for part in SUFFIXES.values():
        if name + part in ckpt.where and ckpt.file_of(name + part) != where:
            raise CorruptCheckpointError(f"{ckpt.file_of(name + part)}: {name + part} is not in {where.name}")
    lay = Layout(name, shape, dtype, bits, group_rows, name + SUFFIXES["scales"] in ckpt.where, 0)
    lut_name = name + SUFFIXES["lut"]
    _check_part(ckpt, where, lut_name, LUT_DTYPES, (lay.rows // group_rows, 2**bits))
    lut_dtype = ckpt.info(lut_name).dtype
    _check_part(ckpt, where, name + SUFFIXES["indices"], ("U8",), (math.ceil(lay.rows * lay.cols * bits / 8),))
    if lay.scales:
        _check_part(ckpt, where, name + SUFFIXES["scales"], (lut_dtype,), (lay.rows,))
    pos, val = name + SUFFIXES["positions"], name + SUFFIXES["values"]
    if (pos in ckpt.where) != (val in ckpt.where):
        missing = val if pos in ckpt.where else pos
        raise CorruptCheckpointError(f"{where}: palettized tensor {name} has outliers without {missing}")
    if pos in ckpt.where:
        n = ckpt.info(pos).shape[0] if len(ckpt.info(pos).shape) == 1 else -1
        if not 1 <= n <= lay.rows * lay.cols:
            raise CorruptCheckpointError(f"{where}: {pos} has shape {list(ckpt.info(pos).shape)}")
        _check_part(ckpt, where, pos, ("I64",), (n,))
        _check_part(ckpt, where, val, (dtype,), (n,))
        lay = replace(lay, outliers=n)
    return lay


def _finite(where: Path, part: str, values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise CorruptCheckpointError(f"{where}: tensor {part} holds NaN or infinite values")
    return values


def _decode(ckpt: Checkpoint, lay: Layout) -> np.ndarray:
    """One palettized tensor, dequantized, its values checked: finite tables, scales and outlier
    values, outlier positions strictly ascending and inside the tensor."""
    name, where = lay.name, ckpt.file_of(lay.name + SUFFIXES["lut"])
    lut_name = name + SUFFIXES["lut"]
    lut = _finite(where, lut_name, ckpt.f32(lut_name))
    indices = unpack_indices(ckpt.raw(name + SUFFIXES["indices"]), lay.bits, lay.rows * lay.cols)
    scales = None
    if lay.scales:
        scales = _finite(where, name + SUFFIXES["scales"], ckpt.f32(name + SUFFIXES["scales"]))
    positions = np.zeros(0, dtype=np.int64)
    values = np.zeros(0, dtype=STORAGE[lay.dtype])
    if lay.outliers:
        pos, val = name + SUFFIXES["positions"], name + SUFFIXES["values"]
        positions = np.array(ckpt.raw(pos), dtype=np.int64)
        if positions[0] < 0 or positions[-1] >= lay.rows * lay.cols or np.any(np.diff(positions) <= 0):
            raise CorruptCheckpointError(
                f"{where}: {pos}: positions must ascend strictly inside the {lay.rows * lay.cols} values of {name}"
            )
        values = np.array(ckpt.raw(val))
        _finite(where, val, ckpt.f32(val))
    lut_dtype = ckpt.info(lut_name).dtype
    p = Palettized(
        lay.shape, lay.dtype, lay.bits, lay.group_rows, lut, lut_dtype, indices.reshape(lay.rows, lay.cols),
        scales, positions, values,
    )  # fmt: skip
    return p.dequantize()


def read_state(ckpt: Checkpoint) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of a compact palettized checkpoint, dequantized: {name: (dtype, storage array)}."""
    state: dict[str, tuple[str, np.ndarray]] = {}
    for name, lay in layouts(ckpt).items():
        state[name] = (lay.dtype, _decode(ckpt, lay).reshape(lay.shape))
    for name in ckpt.names():
        if not is_palette_part(name):
            state[name] = (ckpt.info(name).dtype, ckpt.raw(name))
    return state


def logical_tensors(ckpt: Checkpoint) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} of the model a checkpoint holds (a compact file's palettized tensors
    by their own names, not their parts), the compact structure checked (:func:`layouts`)."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {n: (lay.dtype, lay.shape) for n, lay in layouts(ckpt).items()}
    for name in ckpt.names():
        if not is_palette_part(name):
            out[name] = (ckpt.info(name).dtype, ckpt.info(name).shape)
    return out


def read_marker(config: dict[str, Any], where: Path) -> dict[str, Any] | None:
    """The palettization marker of config.json (checked), or None."""
    marker = config.get(PALETTE_KEY)
    if marker is None:
        return None
    if not isinstance(marker, dict) or marker.get("format") not in FORMATS:
        raise CorruptCheckpointError(f"{where}: '{PALETTE_KEY}' must be an object with format one of {FORMATS}")
    return marker


def refuse_palettized(config: dict[str, Any], where: Path, step: str, *, compact_only: bool = False) -> None:
    """One line when a palettized checkpoint is given to a step that would lose or break it."""
    marker = read_marker(config, where / "config.json")
    if marker is None or (compact_only and marker["format"] != "compact"):
        return
    raise InvalidArgumentError(
        f"{where}: a palettized checkpoint ({marker['format']}) cannot be {step}; use its source, and palettize last"
    )


def is_palette_part(name: str) -> bool:
    return any(name.endswith(s) for s in SUFFIXES.values())
