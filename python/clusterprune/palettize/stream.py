"""How much of the residual stream each palettized tensor's block writes: the weight the error
allocator gives a tensor's relative output error when statistics are given (``--avg-bits`` with
``--stats``).

A block (an attention module, an FFN module) adds its writer's output (out_proj's, fc2's) to the
residual stream. A relative error rho in any of the block's tensors becomes roughly a relative
error rho of what the block writes, so it adds noise of energy rho * E_writer to a stream of
total variance S: the allocator minimises the summed rho_t * E_writer / S over the tensors, the
noise every tensor adds to the stream relative to the stream, instead of the summed rho_t, which
weighs a block that writes little into a loud stream as much as one that writes most of it.
E_writer = tr(W H W^T) from the writer's input moment; S is the statistics' stream variance of the
FFN module of the same layer (the stream entering its LayerNorm). Tensors outside the blocks (the
convolutions, the token embedding) and blocks without these statistics keep weight 1.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..io.checkpoint import Checkpoint
from ..io.stats import ActivationStats
from ..models.registry import family_of


class MomentSource(Protocol):
    def get(self, name: str) -> np.ndarray | None: ...


def stream_shares(ckpt: Checkpoint, stats: ActivationStats, moments: MomentSource) -> dict[str, float]:
    """Per weight tensor of a block: E_writer / S (see the module's docstring)."""
    umap = family_of(ckpt.config).unit_map(ckpt.config, set(ckpt.where))
    streams = {
        spec.name.rsplit(".", 1)[0]: info.stream_variance
        for spec in umap.modules
        if spec.kind == "ffn" and (info := stats.infos().get(spec.name)) is not None
    }
    out: dict[str, float] = {}
    for spec in umap.modules:
        stream = streams.get(spec.name.rsplit(".", 1)[0], 0.0)
        writer = next((p.tensor for p in spec.parts if p.role == "consumer"), None)
        h = moments.get(writer) if writer is not None and stream > 0 else None
        if h is None:
            continue
        w = ckpt.f32(writer).reshape(ckpt.info(writer).shape[0], -1).astype(np.float64)
        written = float(np.sum((w @ h) * w))
        if not (np.isfinite(written) and written > 0):
            continue
        for p in spec.parts:
            if p.role != "bias":
                out[p.tensor] = written / stream
    return out
