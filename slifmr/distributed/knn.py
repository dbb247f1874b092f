"""Sharded exact kNN for the per-epoch fusion (DESIGN.md §4).

Each worker contributes the fused representations of its block of items, an all-gather
assembles Z(t), each worker finds the top-k neighbours of its own block (chunked matmul +
topk), and the neighbour blocks are gathered so every worker builds the same S(t+1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from slifmr.data.graphs import knn
from slifmr.distributed.collectives import Comm
from slifmr.model.graphs import KnnFn


def sharded_knn(comm: Comm, chunk_size: int = 2048) -> KnnFn:
    """A `knn_fn` for SLIFMR: same result as `slifmr.data.graphs.knn` on every worker."""

    def search(z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        n = z.shape[0]
        start, stop = comm.shard(n)
        full = comm.all_gather_rows(z[start:stop].contiguous(), n)
        nbrs, sims = knn(full, k, chunk_size, rows=torch.arange(start, stop))
        return comm.all_gather_rows(nbrs, n), comm.all_gather_rows(sims.contiguous(), n)

    return search
