"""Collectives that do nothing without a process group, so the same code runs in-process
and on every Ray Train worker. The model never imports torch.distributed: these small
functions reach it through `Comm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass(frozen=True)
class Comm:
    """This process's place in the group: rank and world size (0 and 1 in-process)."""

    rank: int = 0
    world_size: int = 1

    @staticmethod
    def current() -> Comm:
        if _active():
            return Comm(dist.get_rank(), dist.get_world_size())
        return Comm()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous block of n rows (last block may be short)."""
        per = -(-n // self.world_size)
        return min(self.rank * per, n), min((self.rank + 1) * per, n)

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        if _active():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_gather_rows(self, t: Tensor, n: int) -> Tensor:
        """Concatenate every rank's block of rows (its `shard(n)`) into the full (n, ...)."""
        if not _active():
            return t
        per = -(-n // self.world_size)
        padded = torch.zeros((per, *t.shape[1:]), dtype=t.dtype)
        padded[: t.shape[0]] = t
        out = torch.empty((per * self.world_size, *t.shape[1:]), dtype=t.dtype)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, padded)
        return out[:n]

    def barrier(self) -> None:
        if _active():
            dist.barrier()
