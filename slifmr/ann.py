"""faiss inner-product indexes and their measured recall: the one place slifmr builds an
approximate nearest-neighbour index, for the self-loop's approximate kNN (IVF-Flat,
distributed/knn.py) and the export's serving index (exact, or HNSW beyond exact_limit items)."""

from __future__ import annotations

from typing import Any

import numpy as np

from slifmr.errors import SlifmrError

HNSW_M, HNSW_EF_SEARCH = 32, 128  # the export's HNSW graph degree and search breadth
IVF_SEED = 1234  # k-means seed of the IVF lists: the same lists on every process and run


def faiss_module(purpose: str) -> Any:
    """The faiss module; raises SlifmrError naming `purpose` when it is not installed."""
    try:
        import faiss
    except ImportError:
        raise SlifmrError(f"{purpose} needs faiss: pip install faiss-cpu") from None
    return faiss


def build_index(vectors: np.ndarray, kind: str, purpose: str, lists: int = 1, nprobe: int = 16,
                search_threads: int | None = None) -> Any:
    """An inner-product index over `vectors` (N, d) float32, filled:

        flat  exact (IndexFlatIP)
        hnsw  HNSW (Malkov and Yashunin, TPAMI 2018), M 32, efSearch 128
        ivf   IVF-Flat (Jegou et al., TPAMI 2011): `lists` k-means lists trained on one thread
              (seeded: reproducible), `nprobe` of them scanned per query; faiss then searches
              on `search_threads` threads

    Raises SlifmrError (naming `purpose`) without faiss, ValueError for an unknown kind."""
    faiss = faiss_module(purpose)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = IVF_SEED
        faiss.omp_set_num_threads(1)  # k-means on one thread: the same lists on every process and run
        index.train(x)
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat, hnsw, ivf)")
    index.add(x)
    if kind == "ivf":
        index.nprobe = min(nprobe, lists)
        if search_threads is not None:
            faiss.omp_set_num_threads(search_threads)  # searches are independent per query
    return index


def overlap(found: Any, exact: Any) -> tuple[int, int]:
    """(hits, total): how many of the exact top-k ids `exact` (R, k) appear in the same row of
    `found` (R, k') (numpy arrays or torch tensors; -1 marks an unfilled slot). Recall@k is
    hits / total."""
    hits = (found[:, :, None] == exact[:, None, :]).any(2).sum()
    return int(hits), int(exact.shape[0] * exact.shape[1])
