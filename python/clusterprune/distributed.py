"""This process's place in a (possibly one-process) PyTorch DDP run, and the collective helpers
fine-tuning needs: joining the group, barriers, sums, and every process's random states."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly one-process) DDP run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[Dist, Any]:
    """Joins the process group when launched by torchrun / accelerate (WORLD_SIZE > 1)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), torch.device(device)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device(device)
    if target.type == "cuda":
        target = torch.device("cuda", local)
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Dist(rank, world, local), target


def shutdown(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def no_sync(wrapped: Any, d: Dist, sync: bool) -> Any:
    """DDP's no_sync() for a micro-batch that must not all-reduce yet; a no-op otherwise."""
    return wrapped.no_sync() if (d.world > 1 and not sync) else contextlib.nullcontext()


def all_sum(value: float, device: Any) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def rng_state() -> dict[str, Any]:
    """This process's CPU and (when used) CUDA random states: dropout draws from them."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng(d: Dist) -> list[Any]:
    """Every rank's random states (rank 0 receives them all)."""
    import torch.distributed as dist

    states: list[Any] = [None] * d.world
    dist.all_gather_object(states, rng_state())
    return states
