"""`clusterprune inspect`: what a checkpoint holds and, for a compressed one, its plan."""

from __future__ import annotations

import os
from typing import Any

from .io.checkpoint import Checkpoint
from .io.metadata import FOLDED_KEY, read_compression, read_folded
from .models.registry import unit_map


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Family, modules (N, unit size, parameters), totals and, if compressed, the stored plan."""
    with Checkpoint(path) as ckpt:
        umap = unit_map(ckpt.config, set(ckpt.where))
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
        names = ckpt.names()
        return {
            "path": str(ckpt.path),
            "family": umap.family,
            "tensors": len(names),
            "total_params": sum(ckpt.info(n).numel for n in names),
            "bytes": ckpt.total_bytes(),
            "dtypes": sorted({ckpt.info(n).dtype for n in names}),
            "compressible_params": sum(m["params"] for m in modules),
            "folded": FOLDED_KEY in ckpt.config,
            "compression": record.raw if record is not None else None,
            "modules": modules,
        }
