"""What a compressed checkpoint promises to keep, recovered from its weights and metadata, and the
torch projections that keep that promise during training.

* folded: the model is simply smaller; nothing to keep.
* fused (k-means): every cluster's members are identical units (all parts bitwise equal);
  training keeps them tied: gradients are averaged over the members, and after every optimizer
  step the members are set to their cluster's first member.
* fused (magnitude): removed units are all-zero; their gradients and weights stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, InvalidArgumentError
from ..io.checkpoint import Checkpoint
from ..io.metadata import FOLDED_KEY, METADATA_KEY, read_compression, read_folded
from ..models.registry import unit_map
from ..models.units import ModuleSpec, to_units


@dataclass
class ModuleGroups:
    spec: ModuleSpec
    group: np.ndarray  # (N,) cluster id per unit, -1 for a removed unit
    first: np.ndarray  # (N,) index of the unit's cluster's first member (itself when removed)

    @property
    def n_kept(self) -> int:
        return int(len(np.unique(self.group[self.group >= 0])))


@dataclass
class Structure:
    kind: str  # "folded", "fused" or "dense"
    method: str | None = None  # the compression method of a fused checkpoint
    modules: list[ModuleGroups] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind != "fused":
            return self.kind
        tied = sum(int(np.sum(m.group >= 0)) - m.n_kept for m in self.modules)
        removed = sum(int(np.sum(m.group < 0)) for m in self.modules)
        return (
            f"fused ({self.method}): {tied} units tied to a cluster, {removed} removed, in {len(self.modules)} modules"
        )


def _unit_keys(ckpt: Checkpoint, spec: ModuleSpec) -> tuple[list[bytes], np.ndarray]:
    """Per unit: the bytes of all its parts (as stored), and whether the unit is all zero."""
    blocks = [to_units(ckpt.f32(p.tensor), spec, p) for p in spec.parts]
    n = spec.n_units
    keys = [b"".join(np.ascontiguousarray(b[i]).tobytes() for b in blocks) for i in range(n)]
    zero = np.all([np.all(b == 0, axis=1) for b in blocks], axis=0)
    return keys, zero


def read_structure(ckpt: Checkpoint) -> Structure:
    """The structure of ``ckpt`` (see the module docstring); errors when a fused checkpoint's
    weights no longer match its recorded plan."""
    if read_folded(ckpt.config, ckpt.path / "config.json") is not None:
        return Structure("folded")
    record = read_compression(ckpt)
    if record is None:
        return Structure("dense")
    method = record.method
    recorded = record.modules
    specs = {s.name: s for s in unit_map(ckpt.config, set(ckpt.where)).modules}
    modules = []
    for name, (n, k) in sorted(recorded.items()):
        spec = specs.get(name)
        if spec is None or spec.n_units != n:
            raise CorruptCheckpointError(f"{ckpt.path}: recorded module {name} does not match the model")
        keys, zero = _unit_keys(ckpt, spec)
        first = np.arange(n, dtype=np.int64)
        if method == "magnitude":  # removed units are zero; kept units are never tied
            group = np.where(zero, -1, first)
        else:  # members of a cluster are bitwise identical units
            seen: dict[bytes, int] = {}
            first = np.array([seen.setdefault(key, i) for i, key in enumerate(keys)], dtype=np.int64)
            group = first.copy()
        mg = ModuleGroups(spec, group, first)
        kept = mg.n_kept
        # at most K distinct units: clusters whose centroids coincide (duplicate or all-zero units)
        # read back as one, which computes the same function and stays tied in training
        if kept > k:
            raise CorruptCheckpointError(
                f"{ckpt.file_of(spec.parts[0].tensor)}: module {name} has {kept} distinct units but its recorded "
                f"plan keeps K = {k}: the weights were changed after compression"
            )
        modules.append(mg)
    return Structure("fused", method, modules, record.raw)


def require_structure(structure: Structure, preserve: bool, path: str) -> None:
    if preserve and structure.kind == "dense":
        raise InvalidArgumentError(
            f"{path}: not compressed by clusterprune (no '{METADATA_KEY}' metadata and no '{FOLDED_KEY}' in "
            "config.json), so there is no structure to preserve; pass --no-preserve to fine-tune it as a dense model"
        )


class Projector:
    """Torch-side projections for a fused structure (no-ops for folded and dense)."""

    def __init__(self, structure: Structure, model: Any) -> None:
        import torch

        self.items: list[tuple[Any, int, int, Any, Any, Any]] = []
        params = dict(model.named_parameters())
        for mg in structure.modules:
            if np.all(mg.first == np.arange(len(mg.first))) and np.all(mg.group >= 0):
                continue  # nothing tied, nothing removed
            spec = mg.spec
            # removed units form one extra group of their own; the keep mask zeroes it
            groups, inverse = np.unique(np.where(mg.group >= 0, mg.first, -1), return_inverse=True)
            counts = np.bincount(inverse, minlength=len(groups)).astype(np.float32)
            keep = (mg.group >= 0).astype(np.float32)
            for part in spec.parts:
                p = params.get(part.tensor)
                if p is None:
                    raise CorruptCheckpointError(f"the model has no parameter {part.tensor}")
                axis = 1 if part.role == "consumer" else 0
                dev = p.device
                self.items.append(
                    (
                        p,
                        axis,
                        spec.unit_rows,
                        torch.as_tensor(inverse, device=dev),
                        torch.as_tensor(counts, device=dev),
                        (torch.as_tensor(mg.first, device=dev), torch.as_tensor(keep, device=dev)),
                    )
                )

    @staticmethod
    def _unit_view(t: Any, axis: int, rows: int) -> Any:
        if axis == 0:
            return t.view(-1, rows, *t.shape[1:])  # (N, rows[, hidden])
        return t.view(t.shape[0], -1, rows)  # (hidden, N, rows)

    def _mask_shape(self, view: Any, axis: int) -> list[int]:
        shape = [1] * view.dim()
        shape[axis] = view.shape[axis]
        return shape

    def project_grads(self) -> None:
        """Gradients -> cluster means for tied members, zero for removed units."""
        for p, axis, rows, inverse, counts, (_, keep) in self.items:
            if p.grad is None:
                continue
            g = self._unit_view(p.grad, axis, rows)
            sums = g.new_zeros(g.shape[:axis] + (len(counts),) + g.shape[axis + 1 :]).index_add_(axis, inverse, g)
            shape = self._mask_shape(sums, axis)
            means = sums / counts.to(g.dtype).view(shape)
            g.copy_(means.index_select(axis, inverse) * keep.to(g.dtype).view(self._mask_shape(g, axis)))

    def project_weights(self) -> None:
        """Weights -> every member equal to its cluster's first member, removed units zero."""
        for p, axis, rows, _, _, (first, keep) in self.items:
            w = self._unit_view(p.data, axis, rows)
            w.copy_(w.index_select(axis, first) * keep.to(w.dtype).view(self._mask_shape(w, axis)))
