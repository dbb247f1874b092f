"""The per-epoch top-k search behind S(t) (architecture.md §4), exact or approximate, sharded.

Every worker holds the same full Z (the all-gathered output of layer-wise inference), searches
the neighbours of its own block of items, and the neighbour blocks are all-gathered so every
worker builds the same S(t+1). In one process the block is every item and the gather does nothing.

    exact   chunked matmul + topk: the same result as `slifmr.data.graphs.knn`
    approx  faiss HNSW over the normalised rows (inner product = cosine), for large N; after
            each search `recall` holds its recall@k against exact search on sampled rows
"""

from __future__ import annotations

import torch
from torch import Tensor

from slifmr.config import CHOICES
from slifmr.data.graphs import knn
from slifmr.distributed.collectives import Comm
from slifmr.errors import SlifmrError
from slifmr.rng import derive_seed

KNN_METHODS = CHOICES["model.knn"]


def approx_knn(x: Tensor, k: int, rows: Tensor | None = None, links: int = 16, ef_build: int = 40,
               ef_search: int = 64) -> tuple[Tensor, Tensor]:
    """Approximate cosine top-k (self excluded) of `rows` among all x (N, d) with faiss HNSW;
    the same input gives the same neighbours on every process."""
    try:
        import faiss
    except ImportError:
        raise SlifmrError("model.knn=approx needs faiss: pip install faiss-cpu") from None
    xn = torch.nn.functional.normalize(x.detach().float().cpu(), dim=1).numpy()
    rows = torch.arange(x.shape[0]) if rows is None else rows.cpu()
    k = min(k, x.shape[0] - 1)
    # faiss's HNSW defaults trade a little recall for a search far below the exact O(N^2): the
    # kNN recall each approximate epoch reports is the check that the trade holds
    index = faiss.IndexHNSWFlat(xn.shape[1], links, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_build
    index.hnsw.efSearch = max(ef_search, 2 * k)
    faiss.omp_set_num_threads(1)  # a parallel build links nodes in a racy order: one thread is reproducible
    index.add(xn)
    faiss.omp_set_num_threads(torch.get_num_threads())  # searches are independent per query
    sims, nbrs = (torch.from_numpy(a) for a in index.search(xn[rows.numpy()], k + 1))
    # drop the row itself (usually the first hit); rows whose k+1 hits miss themselves drop the last
    not_self = nbrs != rows[:, None]
    not_self[not_self.all(1), -1] = False
    keep = not_self & (torch.cumsum(not_self, 1) <= k)
    return nbrs[keep].view(-1, k).long().to(x.device), sims[keep].view(-1, k).to(x.device)


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
        found = (nbrs[pick].to(exact.device)[:, :, None] == exact[:, None, :]).any(2).sum()
        counts = self.comm.all_reduce_sum(torch.tensor([float(found), float(exact.numel())], dtype=torch.float64))
        return float(counts[0] / counts[1].clamp_min(1))
