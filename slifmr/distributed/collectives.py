"""Collectives that do nothing without a process group, so the same code runs in-process
and on every Ray Train worker. The model never imports torch.distributed: these small
functions reach it through `Comm`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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
    # where collectives' tensors must live: the GPU under nccl, the CPU under gloo
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # seconds spent inside collectives since the last reset (the loop reports it per epoch)
    seconds: dict[str, float] = field(default_factory=lambda: {"comm": 0.0}, compare=False, repr=False)
    # bytes of the gradient buffers this rank put into (all-reduce) or got from (all-gather)
    # collectives since the last reset: what a step moves, whatever the transport's overhead
    traffic: dict[str, float] = field(default_factory=lambda: {"bytes": 0.0}, compare=False, repr=False)

    @contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds["comm"] += time.perf_counter() - start

    @staticmethod
    def current(device: torch.device | str = "cpu") -> Comm:
        """This process's Comm; `device` is where the model lives (cuda:<local rank> with nccl)."""
        device = torch.device(device)
        if _active():
            return Comm(dist.get_rank(), dist.get_world_size(), device)
        return Comm(device=device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous block of n rows (last block may be short)."""
        per = -(-n // self.world_size)
        return min(self.rank * per, n), min((self.rank + 1) * per, n)

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum over ranks; the result is on t's device (the reduction runs on self.device)."""
        if _active():
            on = t.to(self.device)
            with self._timed():
                dist.all_reduce(on, op=dist.ReduceOp.SUM)
            return on.to(t.device)
        return t

    def all_gather_rows(self, t: Tensor, n: int) -> Tensor:
        """Concatenate every rank's block of rows (its `shard(n)`) into the full (n, ...)."""
        if not _active():
            return t
        per = -(-n // self.world_size)
        padded = torch.zeros((per, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t
        out = torch.empty((per * self.world_size, *t.shape[1:]), dtype=t.dtype, device=t.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        with self._timed():
            gather(out, padded)
        return out[:n]

    def average_gradients(self, params: Iterable[Tensor], row_sparse: Iterable[Tensor] = (), mode: str = "auto") -> None:
        """Average the gradients where torch's DDP does not (neighbor-sampled steps, whose
        tables have sparse gradients, and grad_sync sparse/auto): one flat all-reduce of every
        present dense gradient, / world. Every rank runs the same graph, so the set of
        parameters holding a gradient is the same. `row_sparse` parameters (embedding tables) whose gradients touch few rows go through
        `average_rows` instead (mode sparse always, auto when it moves fewer bytes); a sparse
        (COO) gradient always does."""
        if not _active():
            return
        sparse_ids = {id(p) for p in row_sparse}
        dense = []
        for p in params:
            if p.grad is None:
                continue
            if id(p) in sparse_ids and (mode != "dense" or p.grad.is_sparse):
                p.grad = self.average_rows(p.grad, force=mode == "sparse", dense=mode == "dense")
            else:
                dense.append(p.grad)
        self._average_dense(dense)

    def average_rows(self, grad: Tensor, force: bool = False, dense: bool = False) -> Tensor:
        """Average a (rows, d) gradient that is zero outside the rows a batch touched (a sparse
        COO gradient, or a dense one): each rank all-gathers only its (row id, row) pairs,
        O(touched rows) instead of O(table). Without `force`, or with `dense`, a dense
        all-reduce is used when it is smaller (or always). Returns the gradient in its input
        layout: sparse gradients come back sparse and coalesced."""
        if grad.is_sparse:
            g = grad.coalesce()
            rows, values = g.indices()[0], g.values()
        else:
            rows = torch.nonzero(grad.abs().sum(1)).flatten()
            values = grad[rows]
        counts = self._gather_padded(torch.tensor([rows.numel()]))  # every rank's touched-row count
        most = int(counts.max())
        row_bytes = grad.shape[1] * grad.element_size() + 8
        table_bytes = grad.shape[0] * grad.shape[1] * grad.element_size()
        if dense or (not force and self.world_size * most * row_bytes >= table_bytes):
            full = grad.to_dense() if grad.is_sparse else grad
            self._average_dense([full])
            if not grad.is_sparse:
                return full
            # back to sparse from the non-zero rows: Tensor.to_sparse(1) scans every entry
            keep = torch.nonzero(full.abs().sum(1)).flatten()
            return torch.sparse_coo_tensor(keep[None], full[keep], grad.shape, is_coalesced=True)
        ids = torch.zeros(most, dtype=torch.long, device=grad.device)
        ids[: rows.numel()] = rows
        vals = torch.zeros((most, grad.shape[1]), dtype=grad.dtype, device=grad.device)
        vals[: rows.numel()] = values
        all_ids, all_vals = self._gather_padded(ids), self._gather_padded(vals)
        self.traffic["bytes"] += self.world_size * most * row_bytes
        real = (torch.arange(most, device=counts.device)[None, :] < counts[:, None]).flatten().to(all_ids.device)
        all_ids, all_vals = all_ids[real], all_vals[real] / self.world_size  # padding dropped
        if grad.is_sparse:
            return torch.sparse_coo_tensor(all_ids[None], all_vals, grad.shape).coalesce()
        return grad.zero_().index_add_(0, all_ids, all_vals)

    def _gather_padded(self, t: Tensor) -> Tensor:
        on = t.to(self.device)
        out = torch.empty((self.world_size * on.shape[0], *on.shape[1:]), dtype=on.dtype, device=on.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        with self._timed():
            gather(out, on)
        return out.to(t.device)

    def _average_dense(self, grads: list[Tensor]) -> None:
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.traffic["bytes"] += flat.numel() * flat.element_size()
        with self._timed():
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_parameters(self, params: Iterable[Tensor]) -> None:
        """Start every replica from rank 0's parameters."""
        if _active():
            for p in params:
                dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if _active():
            dist.barrier()
