"""`clusterprune inspect`: what a checkpoint holds and, for a compressed one, its plan."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import CorruptCheckpointError
from .exporters.ct2 import EXPORT_FILE, is_ct2_dir
from .importers.ct2 import parse_model_bin
from .io.checkpoint import Checkpoint, read_json
from .io.metadata import FOLDED_KEY, read_compression, read_folded
from .io.palette import PALETTE_PLAN, logical_tensors, read_marker
from .io.resolve import resolve_model
from .models.registry import unit_map


def inspect_ct2(path: Path) -> dict[str, Any]:
    """A CTranslate2 directory: its variables and what ``export-ct2`` recorded (the plan)."""
    model = parse_model_bin((path / "model.bin").read_bytes(), str(path / "model.bin"))
    record = read_json(path / EXPORT_FILE) if (path / EXPORT_FILE).is_file() else {}
    if not isinstance(record, dict):
        raise CorruptCheckpointError(f"{path / EXPORT_FILE}: not a JSON object")
    sizes = [int(v.size) for v in model.variables.values()]
    return {
        "path": str(path),
        "format": "ctranslate2",
        "spec": model.spec,
        "variables": len(model.variables),
        "total_params": sum(sizes),
        "bytes": (path / "model.bin").stat().st_size,
        "dtypes": sorted(set(model.dtypes.values())),
        "quantization": record.get("quantization"),
        "ffn_widths": record.get("ffn_widths", {}),
        "padded_heads": record.get("padded_heads", {}),
        "source": record.get("source"),
        "compression": record.get("compression"),
    }


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Family, modules (N, unit size, parameters), totals and, if compressed, the stored plan
    (for a CTranslate2 directory from export-ct2: its variables and the recorded plan)."""
    resolved = resolve_model(path)
    if is_ct2_dir(resolved):
        return inspect_ct2(resolved)
    with Checkpoint(resolved) as ckpt:
        tensors = logical_tensors(ckpt)
        umap = unit_map(ckpt.config, set(tensors))
        record = read_compression(ckpt)
        read_folded(ckpt.config, ckpt.path / "config.json")  # a corrupt folded entry is an error here too
        kept = record.modules if record is not None else {}
        modules = []
        for s in umap.modules:
            n = s.n_units
            if record is not None and record.export == "folded" and s.name in kept:
                n = kept[s.name][0]
            row: dict[str, Any] = {
                "name": s.name,
                "module_type": s.module_type,
                "n_units": n,
                "unit_params": s.params_per_unit,
                "params": n * s.params_per_unit,
            }
            if s.name in kept:
                row["k"] = kept[s.name][1]
            modules.append(row)
        marker = read_marker(ckpt.config, ckpt.path / "config.json")
        palettized = None
        if marker is not None:
            plan = read_json(ckpt.path / PALETTE_PLAN) if (ckpt.path / PALETTE_PLAN).is_file() else {}
            if not isinstance(plan, dict):
                raise CorruptCheckpointError(f"{ckpt.path / PALETTE_PLAN}: not a JSON object")
            palettized = {
                "format": marker["format"],
                "version": marker.get("version"),
                **{k: plan.get(k) for k in ("avg_bits", "palettized_params", "bytes_fp16", "bytes_compact", "config")},
                "tensors": len(plan.get("tensors", [])),
            }
        return {
            "path": str(ckpt.path),
            "family": umap.family,
            "tensors": len(tensors),
            "total_params": sum(math.prod(shape) for _, shape in tensors.values()),
            "bytes": ckpt.total_bytes(),
            "dtypes": sorted({dtype for dtype, _ in tensors.values()}),
            "compressible_params": sum(m["params"] for m in modules),
            "folded": FOLDED_KEY in ckpt.config,
            "compression": record.raw if record is not None else None,
            "palettized": palettized,
            "modules": modules,
        }
