"""The per-epoch top-k search behind S(t) (architecture.md §4), exact or approximate, sharded.

Every worker holds the same full Z (the all-gathered output of layer-wise inference), searches
the neighbours of its own block of items, and the neighbour blocks are all-gathered so every
worker builds the same S(t+1). In one process the block is every item and the gather does nothing.

    exact   chunked matmul + topk: the same result as `slifmr.data.graphs.knn`
    approx  faiss IVF-Flat over the normalised rows (inner product = cosine), for large N;
            after each search `recall` holds its recall@k against exact search on sampled rows
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from slifmr.ann import build_index, overlap
from slifmr.config import CHOICES
from slifmr.data.graphs import knn
from slifmr.distributed.collectives import Comm
from slifmr.errors import SlifmrError
from slifmr.rng import derive_seed

KNN_METHODS = CHOICES["model.knn"]


def approx_knn(x: Tensor, k: int, rows: Tensor | None = None, nprobe: int = 16) -> tuple[Tensor, Tensor]:
    """Approximate cosine top-k (self excluded) of `rows` among all x (N, d), with faiss's
    inverted-file index (IVF-Flat; Jegou et al., TPAMI 2011): the normalised rows are clustered
    into sqrt(N) lists by k-means and each query scans its `nprobe` nearest lists exactly
    (inner product = cosine). Returns (neighbours (R, k), similarities (R, k)), the same on every
    process for the same input.

    Built in one k-means pass and searched over a few lists, it is several times cheaper than
    HNSW at the self-loop's k (about 100, for the ridge head) with a recall as high
    (benchmarks/RESULTS.md, "Scale: sampled and history training"); each search's recall is measured (`KnnSearch`)."""
    xn = torch.nn.functional.normalize(x.detach().float().cpu(), dim=1).numpy()
    n = xn.shape[0]
    rows = torch.arange(n) if rows is None else rows.cpu()
    k = min(k, n - 1)
    # faiss wants >= 39 training points per list; one list is the exact search
    lists = max(1, min(int(math.sqrt(n)), n // 39))
    index = build_index(xn, "ivf", "model.knn=approx", lists=lists, nprobe=nprobe,
                        search_threads=torch.get_num_threads())
    sims, nbrs = (torch.from_numpy(a) for a in index.search(xn[rows.numpy()], k + 1))
    # drop the row itself (usually the first hit); rows whose k+1 hits miss themselves drop the
    # last; a hit faiss could not fill (-1, when the lists scanned hold fewer than k + 1 rows)
    # is replaced by the exact search below
    not_self = nbrs != rows[:, None]
    not_self[not_self.all(1), -1] = False
    keep = not_self & (torch.cumsum(not_self, 1) <= k)
    nbrs, sims = nbrs[keep].view(-1, k).long(), sims[keep].view(-1, k)
    short = (nbrs < 0).any(1)
    if bool(short.any()):
        nbrs[short], sims[short] = knn(torch.from_numpy(xn), k, rows=rows[short])
    return nbrs.to(x.device), sims.to(x.device)


class KnnSearch:
    """A `knn_fn` for S(t): (Z (N, d), k) -> (neighbours (N, k), similarities (N, k)),
    identical on every worker. Every worker passes the same full Z (it has it: Z is the
    all-gathered output of layer-wise inference); each searches the neighbours of its shard of
    rows, and the blocks are all-gathered."""

    def __init__(self, comm: Comm | None = None, method: str = "exact", check_rows: int = 1000,
                 chunk_size: int = 2048, seed: int = 0):
        if method not in KNN_METHODS:
            raise SlifmrError(f"unknown kNN method {method!r} (choose from {', '.join(KNN_METHODS)})")
        self.comm = comm or Comm()
        self.method, self.check_rows, self.chunk_size, self.seed = method, check_rows, chunk_size, seed
        self.recall: float | None = None  # of the last approximate search
        self.calls = 0

    def __call__(self, z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        comm, n = self.comm, z.shape[0]
        start, stop = comm.shard(n)
        full = z.to(comm.device)
        rows = torch.arange(start, stop)
        if self.method == "exact":
            nbrs, sims = knn(full, k, self.chunk_size, rows=rows)
        else:
            nbrs, sims = approx_knn(full, k, rows)
            self.recall = self._recall(full, k, rows, nbrs)
        self.calls += 1
        return comm.all_gather_rows(nbrs, n), comm.all_gather_rows(sims.contiguous(), n)

    def _recall(self, full: Tensor, k: int, rows: Tensor, nbrs: Tensor) -> float:
        """Share of the exact top-k found, on up to check_rows of this worker's rows (all
        workers' counts summed)."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.calls, self.comm.rank))
        pick = torch.randperm(rows.numel(), generator=gen)[: self.check_rows]
        exact, _ = knn(full, k, self.chunk_size, rows=rows[pick])
        hits, total = overlap(nbrs[pick].to(exact.device), exact)
        counts = self.comm.all_reduce_sum(torch.tensor([float(hits), float(total)], dtype=torch.float64))
        return float(counts[0] / counts[1].clamp_min(1))
