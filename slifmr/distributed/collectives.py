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

    def take_counters(self) -> tuple[float, float]:
        """(seconds inside collectives, gradient bytes moved) since the last call; both restart at 0."""
        taken = self.seconds["comm"], self.traffic["bytes"]
        self.seconds["comm"], self.traffic["bytes"] = 0.0, 0.0
        return taken

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
        """Concatenate every rank's block of rows (its `shard(n)`) into the full (n, ...), on t's
        device (the gather runs on self.device: nccl gathers GPU tensors only)."""
        if not _active():
            return t
        per = -(-n // self.world_size)
        padded = torch.zeros((per, *t.shape[1:]), dtype=t.dtype, device=self.device)
        padded[: t.shape[0]] = t.to(self.device)
        out = torch.empty((per * self.world_size, *t.shape[1:]), dtype=t.dtype, device=self.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        with self._timed():
            gather(out, padded)
        return out[:n].to(t.device)

    def average_gradients(self, params: Iterable[Tensor], row_sparse: Iterable[Tensor] = (), mode: str = "auto") -> None:
        """Average the gradients where torch's DDP does not (sampled steps, whose tables have
        sparse gradients, and grad_sync sparse/auto): one flat all-reduce of every present dense
        gradient, / world. Every rank runs the same graph, so the set of parameters holding a
        gradient is the same. `row_sparse` parameters (embedding tables) whose gradients touch
        few rows go through `average_rows` instead (mode sparse always, auto when it moves fewer
        bytes); a sparse (COO) gradient always does. All tables' rows travel together."""
        if not _active():
            return
        sparse_ids = {id(p) for p in row_sparse}
        dense, tables = [], []
        for p in params:
            if p.grad is None:
                continue
            if id(p) in sparse_ids and (mode != "dense" or p.grad.is_sparse):
                tables.append(p)
            else:
                dense.append(p.grad)
        averaged = self.average_rows([p.grad for p in tables], force=mode == "sparse", dense=mode == "dense",
                                     also_dense=dense)
        for p, g in zip(tables, averaged):
            p.grad = g

    def average_rows(self, grads: list[Tensor], force: bool = False, dense: bool = False,
                     also_dense: list[Tensor] | None = None) -> list[Tensor]:
        """Average (rows, d) gradients that are zero outside the rows a batch touched (sparse
        COO gradients, or dense ones): each rank all-gathers only its (row id, row) pairs,
        O(touched rows) instead of O(table). Without `force`, or with `dense`, a table whose
        dense all-reduce is smaller (or every table) is all-reduced instead, together with
        `also_dense` (averaged in place). Three collectives for every table together (counts,
        row ids, rows) and one all-reduce. Returns the gradients in their input layout; sparse
        ones come back sparse (uncoalesced: the row-wise optimizer coalesces once)."""
        touched = []
        for grad in grads:
            if grad.is_sparse:
                g = grad.coalesce()
                touched.append((g.indices()[0], g.values()))
            else:
                rows = torch.nonzero(grad.abs().sum(1)).flatten()
                touched.append((rows, grad[rows]))
        # every rank's touched-row count of every table: (world, tables)
        counts = self._gather_padded(torch.tensor([r.numel() for r, _ in touched], dtype=torch.long)).view(
            self.world_size, -1) if grads else torch.zeros(self.world_size, 0, dtype=torch.long)
        out = list(grads)  # each entry replaced by its average below
        to_reduce = list(also_dense or [])
        sparse_tables = []
        for t, grad in enumerate(grads):
            most = int(counts[:, t].max())
            row_bytes = grad.shape[1] * grad.element_size() + 8
            table_bytes = grad.shape[0] * grad.shape[1] * grad.element_size()
            if dense or (not force and self.world_size * most * row_bytes >= table_bytes):
                full = grad.to_dense() if grad.is_sparse else grad
                to_reduce.append(full)
                out[t] = full
            else:
                sparse_tables.append(t)
        self._average_dense(to_reduce)
        for t, grad in enumerate(grads):
            if grad.is_sparse and t not in sparse_tables:
                # back to sparse from the non-zero rows: Tensor.to_sparse(1) scans every entry
                full = out[t]
                keep = torch.nonzero(full.abs().sum(1)).flatten()
                out[t] = torch.sparse_coo_tensor(keep[None], full[keep], grad.shape, is_coalesced=True)
        if sparse_tables:
            # one padded block per table, every table in one tensor of ids and one of values
            most = [int(counts[:, t].max()) for t in sparse_tables]
            ids = torch.zeros(sum(most), dtype=torch.long, device=grads[0].device)
            vals = torch.zeros(sum(m * grads[t].shape[1] for m, t in zip(most, sparse_tables)),
                               dtype=grads[sparse_tables[0]].dtype, device=grads[0].device)
            id_at, val_at = 0, 0
            for m, t in zip(most, sparse_tables):
                rows, values = touched[t]
                ids[id_at : id_at + rows.numel()] = rows
                vals[val_at : val_at + values.numel()] = values.reshape(-1)
                id_at, val_at = id_at + m, val_at + m * grads[t].shape[1]
            all_ids = self._gather_padded(ids).view(self.world_size, -1)
            all_vals = self._gather_padded(vals).view(self.world_size, -1)
            id_at, val_at = 0, 0
            for m, t in zip(most, sparse_tables):
                grad, d = grads[t], grads[t].shape[1]
                self.traffic["bytes"] += self.world_size * m * (d * grad.element_size() + 8)
                real = torch.arange(m, device=counts.device)[None, :] < counts[:, t, None]  # (world, m): padding off
                t_ids = all_ids[:, id_at : id_at + m][real.to(all_ids.device)]
                t_vals = all_vals[:, val_at : val_at + m * d].reshape(self.world_size, m, d)[real.to(all_vals.device)]
                t_vals = t_vals / self.world_size
                id_at, val_at = id_at + m, val_at + m * d
                if grad.is_sparse:
                    out[t] = torch.sparse_coo_tensor(t_ids[None], t_vals, grad.shape)
                else:
                    out[t] = grad.zero_().index_add_(0, t_ids, t_vals)
        return out

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
