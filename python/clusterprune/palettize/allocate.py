"""Bits per tensor: uniform, the paper's variance terciles, or the modelled-error allocator.

* ``variance`` (Xu et al.'s rule, applied to the number of clusters): within each tensor type
  (its role in the block, e.g. fc1 or self_attn.q_proj, over both stacks and all layers), the third of highest weight variance gets one bit
  more, the third of lowest one bit less (equal counts, so the average stays --bits).
* ``error`` (ours, data-free): every tensor's modelled relative output error at b bits is
  rho_t(b) = wsse_t(b) / energy_t, the squared error of its palettization over its energy
  (noise-to-signal ratio of the layer's output). The plan minimises sum_t rho_t(b_t) subject to
  sum_t size_t(b_t) <= the compact size of a uniform plan at --avg-bits (interpolated between
  the two neighbouring integers; size = packed indices + tables, so short rows pay for their
  tables): every tensor starts at --min-bits and the upgrade with the largest error reduction
  per added byte is taken while the budget allows (greedy on the marginal rates; exact for
  convex rho_t). rho_t(b) is
  measured (each tensor palettized at every level up to 6 bits); above, every bit quarters it
  (the high-rate law of quantization error, 2^-2b). By the output error (``--stats``), rho_t is
  weighted by what the tensor's block writes into the residual stream relative to the stream
  (:mod:`.stream`): the planner here only sees the weighted values.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable

import numpy as np

from .config import PaletteConfig
from .targets import Target


def tensor_type(name: str) -> str:
    """The tensor's role within its block, across stacks and layers ("self_attn.q_proj.weight",
    "fc1.weight"); tensors outside the layer stacks are their own type."""
    return re.sub(r"^.*\.layers\.\d+\.", "", name)


def variance_plan(chosen: list[Target], variances: dict[str, float], bits: int, lo: int, hi: int) -> dict[str, int]:
    groups: dict[str, list[Target]] = {}
    for t in chosen:
        groups.setdefault(tensor_type(t.name), []).append(t)
    plan = {}
    for members in groups.values():
        order = sorted(members, key=lambda t: (-variances[t.name], t.name))
        third = len(order) // 3
        for rank, t in enumerate(order):
            step = 1 if rank < third else (-1 if rank >= len(order) - third else 0)
            plan[t.name] = int(np.clip(bits + step, lo, hi))
    return plan


def error_plan(
    chosen: list[Target],
    rho: Callable[[str, int], float],
    size: Callable[[str, int], float],
    budget: float,
    levels: list[int],
) -> dict[str, int]:
    """The greedy marginal-rate plan over the allowed ``levels`` (ascending): ``size(name, b)``
    is the tensor's compact size at b bits (indices and tables), ``budget`` the total allowed."""
    plan = {t.name: 0 for t in chosen}  # index into levels
    spent = float(sum(size(t.name, levels[0]) for t in chosen))
    heap: list[tuple[float, str]] = []

    def step(name: str) -> float:
        i = plan[name]
        return size(name, levels[i + 1]) - size(name, levels[i])

    def push(name: str) -> None:
        i = plan[name]
        if i + 1 < len(levels):
            gain = rho(name, levels[i]) - rho(name, levels[i + 1])
            heapq.heappush(heap, (-gain / max(step(name), 1e-9), name))

    for t in chosen:
        push(t.name)
    while heap:
        _, name = heapq.heappop(heap)
        cost = step(name)
        if spent + cost > budget + 1e-9:
            continue  # a smaller upgrade elsewhere may still fit
        plan[name] += 1
        spent += cost
        push(name)
    return {name: levels[i] for name, i in plan.items()}


def fixed_bits(t: Target, config: PaletteConfig) -> int | None:
    """The bits a tensor gets whatever the plan: the token embedding (the input table and the
    tied output projection: the one tensor every token reads twice) keeps --embedding-bits, or
    in a mixed plan the plan's centre (--bits), and is not traded against the layers."""
    if t.embedding and config.embedding_bits:
        return config.embedding_bits
    if t.embedding and config.mixed:
        return config.bits
    return None
