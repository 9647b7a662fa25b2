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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    """uint8 indices (< 2^bits) -> the packed little-endian bit stream (uint8)."""
    flat = np.ascontiguousarray(indices, dtype=np.uint8).reshape(-1, 1)
    stream = np.unpackbits(flat, axis=1, bitorder="little")[:, :bits]
    return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_indices`: ``count`` uint8 indices."""
    need = math.ceil(count * bits / 8)
    if packed.size != need:
        raise ValueError(f"{packed.size} packed bytes, expected {need} for {count} indices of {bits} bits")
    stream = np.unpackbits(np.ascontiguousarray(packed, dtype=np.uint8), bitorder="little")[: count * bits]
    return (stream.reshape(count, bits).astype(np.uint8) << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


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


def _entry(where: Path, name: str, raw: Any) -> tuple[tuple[int, ...], str, int, int]:
    try:
        shape = tuple(int(d) for d in raw["shape"])
        dtype, bits, group_rows = str(raw["dtype"]), int(raw["bits"]), int(raw["group_rows"])
    except (KeyError, TypeError, ValueError):
        raise CorruptCheckpointError(f"{where}: palette entry of {name} is malformed") from None
    if not shape or any(d < 0 for d in shape) or not 1 <= bits <= 8 or dtype not in STORAGE:
        raise CorruptCheckpointError(f"{where}: palette entry of {name} is out of range ({raw})")
    if group_rows < 1 or shape[0] % group_rows:
        raise CorruptCheckpointError(f"{where}: {name}: group size {group_rows} does not divide {shape[0]} rows")
    return shape, dtype, bits, group_rows


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


def _decode(ckpt: Checkpoint, name: str, raw: Any, where: Path) -> np.ndarray:
    shape, dtype, bits, group_rows = _entry(where, name, raw)
    rows = shape[0]
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    for part in ("lut", "indices"):
        if name + SUFFIXES[part] not in ckpt.where:
            raise CorruptCheckpointError(f"{where}: palettized tensor {name} has no {name + SUFFIXES[part]}")
    lut_name = name + SUFFIXES["lut"]
    lut_dtype = ckpt.info(lut_name).dtype
    lut = ckpt.f32(lut_name)
    if lut.shape != (rows // group_rows, 2**bits):
        raise CorruptCheckpointError(
            f"{where}: {lut_name} has shape {lut.shape}, expected {(rows // group_rows, 2**bits)}"
        )
    try:
        indices = unpack_indices(ckpt.raw(name + SUFFIXES["indices"]), bits, rows * cols).reshape(rows, cols)
    except ValueError as exc:
        raise CorruptCheckpointError(f"{where}: {name + SUFFIXES['indices']}: {exc}") from None
    scales = None
    if name + SUFFIXES["scales"] in ckpt.where:
        scales = ckpt.f32(name + SUFFIXES["scales"])
        if scales.shape != (rows,):
            raise CorruptCheckpointError(f"{where}: {name}{SUFFIXES['scales']} has shape {scales.shape}")
    positions = np.zeros(0, dtype=np.int64)
    values = np.zeros(0, dtype=STORAGE[dtype])
    if name + SUFFIXES["positions"] in ckpt.where:
        positions = np.asarray(ckpt.raw(name + SUFFIXES["positions"]), dtype=np.int64)
        values = np.asarray(ckpt.raw(name + SUFFIXES["values"]))
        inside = positions.size == 0 or (positions.min() >= 0 and positions.max() < rows * cols)
        if positions.size != values.size or not inside:
            raise CorruptCheckpointError(f"{where}: outliers of {name} do not fit its {rows * cols} values")
    p = Palettized(shape, dtype, bits, group_rows, lut, lut_dtype, indices, scales, positions, values)
    return p.dequantize()


def read_state(ckpt: Checkpoint) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of a compact palettized checkpoint, dequantized: {name: (dtype, storage array)}."""
    state: dict[str, tuple[str, np.ndarray]] = {}
    for fname, f in ckpt.files.items():
        where = ckpt.path / fname
        for name, raw in read_entries(f.metadata, where).items():
            shape = _entry(where, name, raw)[0]
            state[name] = (str(raw["dtype"]), _decode(ckpt, name, raw, where).reshape(shape))
    for name in ckpt.names():
        if not is_palette_part(name):
            state[name] = (ckpt.info(name).dtype, ckpt.raw(name))
    return state


def logical_tensors(ckpt: Checkpoint) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} of the model a checkpoint holds (a compact file's palettized tensors
    by their own names, not their parts)."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for fname, f in ckpt.files.items():
        for name, raw in read_entries(f.metadata, ckpt.path / fname).items():
            shape, dtype, _, _ = _entry(ckpt.path / fname, name, raw)
            out[name] = (dtype, shape)
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
