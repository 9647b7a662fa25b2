"""`clusterprune inspect`: what a checkpoint holds and, for a compressed one, its plan."""

from __future__ import annotations

import json
import os
from typing import Any

from .checkpoint import Checkpoint
from .pipeline import FOLDED_KEY, METADATA_KEY
from .safetensors_io import STORAGE
from .unitmap import unit_map


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Family, modules (N, unit size, parameters), totals and, if compressed, the stored plan."""
    with Checkpoint(path) as ckpt:
        umap = unit_map(ckpt.config, set(ckpt.where))
        stored: dict[str, Any] | None = None
        for f in ckpt.files.values():
            if METADATA_KEY in f.metadata:
                stored = json.loads(f.metadata[METADATA_KEY])
                break
        kept = (stored or {}).get("modules", {})
        modules = []
        for s in umap.modules:
            n = s.n_units
            if stored and stored.get("export") == "folded" and s.name in kept:
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
        names = ckpt.names()
        return {
            "path": str(ckpt.path),
            "family": umap.family,
            "tensors": len(names),
            "total_params": sum(ckpt.info(n).numel for n in names),
            "bytes": sum(ckpt.info(n).numel * STORAGE[ckpt.info(n).dtype].itemsize for n in names),
            "dtypes": sorted({ckpt.info(n).dtype for n in names}),
            "compressible_params": sum(m["params"] for m in modules),
            "folded": FOLDED_KEY in ckpt.config,
            "compression": stored,
            "modules": modules,
        }
