"""torchrun / DistributedDataParallel plumbing shared by pretraining and the transfer harnesses.

A process started by ``torchrun`` sees ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in its environment; a plain process
is a world of one. The backend is nccl when the run uses CUDA and gloo otherwise (CPU tests use gloo).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes files; other ranks only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; any other value is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group when launched by torchrun (idempotent), else return a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and world_size > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op in a world of one) and return it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the joined process group, ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Items ``rank, rank + world_size, ...`` of ``range(n)``: this rank's share of an evaluation pass."""
    return list(range(rank, n, world_size))


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` in a world of one). Uses pickling, so it works
    with gloo and nccl alike; meant for per-rank results (scores, features, detections), not for tensors in a
    training step."""
    world_size = world()[1]
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def gather_rows(rows: np.ndarray, indices: Sequence[int], n: int) -> np.ndarray:
    """Reassemble ``rows [len(indices), ...]`` that each rank computed for its ``indices`` of ``range(n)`` into
    one ``[n, ...]`` array in item order, on every rank."""
    parts = gather_objects((list(indices), np.asarray(rows)))
    first = next(p[1] for p in parts if len(p[0]))
    out = np.zeros((n, *first.shape[1:]), dtype=first.dtype)
    seen = np.zeros(n, dtype=bool)
    for idx, part in parts:
        if len(idx):
            out[np.asarray(idx)] = part
            seen[np.asarray(idx)] = True
    if not seen.all():
        raise RuntimeError(f"gather_rows: {int((~seen).sum())} of {n} items were computed by no rank")
    return out
