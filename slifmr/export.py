"""Export a trained run for serving, and answer top-K from the export (issue 17, part 1).

`slifmr export RUN --out DIR` writes, atomically (a temporary sibling folder, one rename):

    users.parquet      user (raw id), embedding (d floats)
    items.parquet      item (raw id), embedding (d floats)
    items.faiss        a faiss inner-product index over the item embeddings: exact (IndexFlatIP)
                       up to `exact_limit` items, HNSW beyond, its recall@K measured against
                       the exact top K and written to the manifest
    history.parquet    user, item (raw ids) of every interaction, `train` true for training
                       ones: what is never recommended, and the ridge head's x_u
    ridge.parquet      (with the ridge head) item, neighbour, weight: w_j over N_j
    manifest.json      slifmr version, dataset fingerprint, variant, best epoch and its
                       validation metrics, and the score

The score is u . z_i (cosine when trained with the softmax loss). With SLIF-MR's ridge head it
is standardise(u . z) + eta standardise(x_u W) (slifmr/model/slifmr.py, `Representations`),
each standardised over the user's N scores. Both moments of the first part are closed forms of
the item embeddings' mean and covariance (mean_i u.z_i = u.zbar, var_i u.z_i = u^T C u), which
the manifest stores; the second part is sparse. So the exact top K of the fused score is among
the index's top K + |seen| by u . z and the items where x_u W is non-zero (an item outside both
has x_u W = 0 and a lower u . z than K unseen candidates): `Export.recommend` scores those only.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import slifmr
from slifmr.errors import SlifmrError

MANIFEST = "manifest.json"
EXACT_LIMIT = 1_000_000  # items up to which the index is exact (IndexFlatIP); HNSW beyond
HNSW_M, HNSW_EF_SEARCH = 32, 128


def _vectors(raw: np.ndarray, x: np.ndarray, name: str) -> pa.Table:
    d = x.shape[1]
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    return pa.table({name: pa.array(raw.astype(str)), "embedding": pa.FixedSizeListArray.from_arrays(flat, d)})


def build_index(items: np.ndarray, exact_limit: int = EXACT_LIMIT) -> Any:
    """A faiss inner-product index over `items` (N, d) float32: exact up to `exact_limit` rows."""
    import faiss

    d = items.shape[1]
    if items.shape[0] <= exact_limit:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(np.ascontiguousarray(items, dtype=np.float32))
    return index


def index_recall(index: Any, users: np.ndarray, items: np.ndarray, k: int, sample: int = 1000, seed: int = 0) -> float:
    """Recall@k of the index's top k against the exact top k by inner product, over a seeded
    sample of users."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(users.shape[0], min(sample, users.shape[0]), replace=False)
    q = np.ascontiguousarray(users[rows], dtype=np.float32)
    k = min(k, items.shape[0])
    _, found = index.search(q, k)
    exact = torch.topk(torch.from_numpy(q) @ torch.from_numpy(items).T, k, dim=1).indices.numpy()
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))


def export_run(run: slifmr.Run, out: str | Path, k: int = 20, exact_limit: int = EXACT_LIMIT) -> Path:
    """Write the export of `run`'s best epoch to the folder `out` (must not exist); see the module
    docstring. Raises SlifmrError for variant ease (an item-item matrix, no embeddings)."""
    from slifmr.data.format import TRAIN
    from slifmr.recommend import raw_ids

    out = Path(out)
    if out.exists():
        raise SlifmrError(f"{out} already exists (choose another --out or remove it)")
    if run.config.variant == "ease":
        raise SlifmrError("variant ease scores with an N x N item-item matrix, not embeddings: there is nothing "
                          "to index (serve it with slifmr recommend --all)")
    ds, reps = run.dataset, run.model
    users, items = reps.users.detach().float(), reps.items.detach().float()
    if reps.cosine:
        users, items = (torch.nn.functional.normalize(x, dim=1) for x in (users, items))
    users_np, items_np = users.numpy(), items.numpy()
    index = build_index(items_np, exact_limit)
    score: dict[str, Any] = {"type": "cosine" if reps.cosine else "dot", "ridge_weight": 0.0}
    ridge = None
    if reps.item_ridge is not None and reps.ridge_weight > 0:
        w = reps.item_ridge.to_sparse_coo().coalesce()
        j, i = w.indices().numpy()
        ridge = pa.table({"item": raw_ids(ds, "items", j), "neighbour": raw_ids(ds, "items", i),
                          "weight": w.values().numpy().astype(np.float32)})
        centred = items - items.mean(0)
        score.update({"ridge_weight": float(reps.ridge_weight), "item_mean": items.mean(0).tolist(),
                      "item_cov": (centred.T @ centred / max(items.shape[0] - 1, 1)).tolist(),
                      "formula": "standardise(u.z) + ridge_weight * standardise(x_u W), over the user's N scores"})
    manifest = {
        "slifmr_version": slifmr.__version__, "dataset": ds.fingerprint(), "run": str(run.path.resolve()),
        "variant": run.config.variant, "best_epoch": run.best_epoch,
        "valid": run.results.get("valid") if (run.path / "results.json").exists() else None,
        "dim": int(items.shape[1]), "users": int(users.shape[0]), "items": int(items.shape[0]), "score": score,
        "index": {"kind": type(index).__name__, f"recall@{k}": index_recall(index, users_np, items_np, k),
                  "measured_against": f"the exact top {k} by inner product, 1000 sampled users"},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        pq.write_table(_vectors(raw_ids(ds, "users", np.arange(ds.num_users)), users_np, "user"), tmp / "users.parquet")
        pq.write_table(_vectors(raw_ids(ds, "items", np.arange(ds.num_items)), items_np, "item"), tmp / "items.parquet")
        pq.write_table(pa.table({"user": raw_ids(ds, "users", ds.user), "item": raw_ids(ds, "items", ds.item),
                                 "train": ds.split == TRAIN}), tmp / "history.parquet")
        if ridge is not None:
            pq.write_table(ridge, tmp / "ridge.parquet")
        import faiss

        faiss.write_index(index, str(tmp / "items.faiss"))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class Export:
    """A loaded export: answers top-K for raw user ids (`recommend`)."""

    manifest: dict[str, Any]
    user_index: dict[str, int]
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    index: Any
    seen: dict[int, np.ndarray]
    train: dict[int, np.ndarray]
    ridge_t: Any  # scipy CSR W^T (N, N) or None

    def recommend(self, user: str, k: int = 10) -> list[tuple[str, float]]:
        """The user's top-k unseen items as (raw item id, score), best first."""
        if user not in self.user_index:
            raise SlifmrError(f"unknown user id {user!r}")
        u = self.user_index[user]
        q = self.users[u]
        seen = self.seen.get(u, np.zeros(0, np.int64))
        _, found = self.index.search(q[None, :], min(k + seen.size, self.items.shape[0]))
        candidates = found[0][found[0] >= 0]
        s = self.manifest["score"]
        n = self.items.shape[0]
        if self.ridge_t is not None:
            x = np.zeros(n, np.float32)
            x[self.train.get(u, np.zeros(0, np.int64))] = 1.0
            ridge = np.asarray(self.ridge_t @ x).ravel()  # x_u W, sparse in effect
            candidates = np.union1d(candidates, np.flatnonzero(ridge))
        candidates = np.setdiff1d(candidates, seen)
        scores = self.items[candidates] @ q
        if self.ridge_t is not None:
            mean1 = float(q @ np.asarray(s["item_mean"], np.float32))
            std1 = float(np.sqrt(max(q @ np.asarray(s["item_cov"], np.float32) @ q, 1e-24)))
            mean2 = float(ridge.sum() / n)
            std2 = float(np.sqrt(max((np.square(ridge, dtype=np.float64).sum() - n * mean2**2) / max(n - 1, 1), 1e-24)))
            scores = (scores - mean1) / std1 + s["ridge_weight"] * (ridge[candidates] - mean2) / std2
        order = np.argsort(-scores, kind="stable")[:k]
        return [(str(self.item_ids[candidates[i]]), float(scores[i])) for i in order]


def load_export(path: str | Path) -> Export:
    """Read an export folder written by `export_run`."""
    import faiss
    import scipy.sparse as sp

    root = Path(path)
    if not (root / MANIFEST).exists():
        raise SlifmrError(f"{root} is not an export folder (no {MANIFEST})")
    manifest = json.loads((root / MANIFEST).read_text())
    users, items = pq.read_table(root / "users.parquet"), pq.read_table(root / "items.parquet")

    def matrix(t: pa.Table) -> np.ndarray:
        return np.asarray(t.column("embedding").combine_chunks().flatten(), np.float32).reshape(t.num_rows, -1)

    user_ids = users.column("user").to_pylist()
    item_ids = np.asarray(items.column("item").to_pylist(), dtype=object)
    user_index = {u: i for i, u in enumerate(user_ids)}
    item_index = {t: i for i, t in enumerate(item_ids)}
    history = pq.read_table(root / "history.parquet").to_pydict()
    hu = np.array([user_index[u] for u in history["user"]], np.int64)
    hi = np.array([item_index[t] for t in history["item"]], np.int64)
    tr = np.asarray(history["train"], bool)

    def grouped(mask: np.ndarray) -> dict[int, np.ndarray]:
        order = np.argsort(hu[mask], kind="stable")
        us, its = hu[mask][order], hi[mask][order]
        cuts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]]) if us.size else np.zeros(0, np.int64)
        return {int(us[a]): its[a:b] for a, b in zip(cuts, np.r_[cuts[1:], us.size])}

    ridge_t = None
    if (root / "ridge.parquet").exists():
        r = pq.read_table(root / "ridge.parquet").to_pydict()
        rows = np.array([item_index[t] for t in r["item"]], np.int64)
        cols = np.array([item_index[t] for t in r["neighbour"]], np.int64)
        ridge_t = sp.csr_matrix((np.asarray(r["weight"], np.float32), (rows, cols)), shape=(len(item_ids),) * 2)
    return Export(manifest, user_index, item_ids, matrix(users), matrix(items), faiss.read_index(str(root / "items.faiss")),
                  grouped(np.ones(hu.size, bool)), grouped(tr), ridge_t)
