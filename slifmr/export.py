"""Export a trained run for serving, and answer top-K from the export (issue 17, part 1).

`slifmr export RUN --out DIR` writes, atomically (a temporary sibling folder, one rename):

    users.parquet      user (raw id), embedding (d floats)
    items.parquet      item (raw id), embedding (d floats)
    items.faiss        a faiss inner-product index over the item embeddings: exact (IndexFlatIP)
                       up to `exact_limit` items, HNSW beyond, its recall@K measured against
                       the exact top K and written to the manifest
    history.parquet    user, item (raw ids; user_row, item_row: rows of the two tables) of every
                       interaction, `train` true for training ones: what is never recommended,
                       and the ridge head's x_u
    ridge.parquet      (with the ridge head) item, neighbour (raw ids and rows), weight: w_j over N_j
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
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import slifmr
from slifmr.atomic import atomic_folder
from slifmr.config import CLOSED_FORM
from slifmr.errors import SlifmrError

if TYPE_CHECKING:
    from slifmr.data.format import Dataset
    from slifmr.model.slifmr import Representations

MANIFEST = "manifest.json"
EXACT_LIMIT = 1_000_000  # items up to which the index is exact (IndexFlatIP); HNSW beyond
HNSW_M, HNSW_EF_SEARCH = 32, 128


def _vectors(raw: np.ndarray, x: np.ndarray, name: str) -> pa.Table:
    d = x.shape[1]
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    return pa.table({name: pa.array(raw.astype(str)), "embedding": pa.FixedSizeListArray.from_arrays(flat, d)})


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise SlifmrError("export needs faiss for its index: pip install faiss-cpu") from None
    return faiss


def build_index(items: np.ndarray, exact_limit: int = EXACT_LIMIT) -> Any:
    """A faiss inner-product index over `items` (N, d) float32: exact up to `exact_limit` rows."""
    faiss = _faiss()

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
    docstring. Raises SlifmrError for the closed-form variants (an item-item matrix, no embeddings)."""
    if Path(out).exists():
        raise SlifmrError(f"{out} already exists (choose another --out or remove it)")
    if run.config.variant in CLOSED_FORM:
        raise SlifmrError(f"variant {run.config.variant} scores without embeddings (an item-item matrix or item "
                          "counts): there is nothing to index (serve it with slifmr recommend --all)")
    about = {"run": str(run.path.resolve()), "variant": run.config.variant, "best_epoch": run.best_epoch,
             "valid": run.results.get("valid") if (run.path / "results.json").exists() else None}
    return export_representations(run.dataset, run.model, out, about, k, exact_limit)


def export_representations(ds: Dataset, reps: Representations, out: str | Path, about: dict[str, Any],
                           k: int = 20, exact_limit: int = EXACT_LIMIT) -> Path:
    """Write the export of representations `reps` of dataset `ds` to the folder `out` (must not
    exist); `about` joins the manifest (run, variant, best epoch, validation metrics)."""
    from slifmr.data.format import TRAIN
    from slifmr.recommend import raw_ids

    out = Path(out)
    if out.exists():
        raise SlifmrError(f"{out} already exists (choose another --out or remove it)")
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
                          "item_row": j.astype(np.int64), "neighbour_row": i.astype(np.int64),
                          "weight": w.values().numpy().astype(np.float32)})
        centred = items - items.mean(0)
        score.update({"ridge_weight": float(reps.ridge_weight), "item_mean": items.mean(0).tolist(),
                      "item_cov": (centred.T @ centred / max(items.shape[0] - 1, 1)).tolist(),
                      "formula": "standardise(u.z) + ridge_weight * standardise(x_u W), over the user's N scores"})
    manifest = {
        "slifmr_version": slifmr.__version__, "dataset": ds.fingerprint(), **about, "dim": int(items.shape[1]),
        "users": int(users.shape[0]), "items": int(items.shape[0]), "score": score,
        "index": {"kind": type(index).__name__, f"recall@{k}": index_recall(index, users_np, items_np, k),
                  "measured_against": f"the exact top {k} by inner product, 1000 sampled users"},
    }
    with atomic_folder(out) as tmp:
        pq.write_table(_vectors(raw_ids(ds, "users", np.arange(ds.num_users)), users_np, "user"), tmp / "users.parquet")
        pq.write_table(_vectors(raw_ids(ds, "items", np.arange(ds.num_items)), items_np, "item"), tmp / "items.parquet")
        pq.write_table(pa.table({"user": raw_ids(ds, "users", ds.user), "item": raw_ids(ds, "items", ds.item),
                                 "user_row": ds.user, "item_row": ds.item, "train": ds.split == TRAIN}),
                       tmp / "history.parquet")
        if ridge is not None:
            pq.write_table(ridge, tmp / "ridge.parquet")
        _faiss().write_index(index, str(tmp / "items.faiss"))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


@dataclass
class Export:
    """A loaded export: top-K for one raw user id through the index (`recommend`), or exact
    batch scoring (`recommend_batch`, what `slifmr recommend --all --workers N` runs)."""

    manifest: dict[str, Any]
    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    index: Any
    seen: Any  # scipy CSR (M, N): every interaction
    train: Any  # scipy CSR (M, N): training interactions, the ridge head's X
    ridge_t: Any  # scipy CSR W^T (N, N), or None
    _scorers: dict[str, Representations] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {str(u): i for i, u in enumerate(self.user_ids)}

    def row(self, user: str) -> int:
        if user not in self.user_index:
            raise SlifmrError(f"unknown user id {user!r}")
        return self.user_index[user]

    def recommend(self, user: str, k: int = 10) -> list[tuple[str, float]]:
        """The user's top-k unseen items as (raw item id, score), best first, from the index's
        candidates (exact: see the module docstring)."""
        u = self.row(user)
        q = self.users[u]
        seen = self.seen.indices[self.seen.indptr[u] : self.seen.indptr[u + 1]]
        _, found = self.index.search(q[None, :], min(k + seen.size, self.items.shape[0]))
        candidates = found[0][found[0] >= 0]
        if self.ridge_t is not None:
            ridge = np.asarray((self.train[u] @ self.ridge_t.T).todense()).ravel()  # x_u W
            candidates = np.union1d(candidates, np.flatnonzero(ridge))
        candidates = np.setdiff1d(candidates, seen)
        scores = self.items[candidates] @ q
        if self.ridge_t is not None:
            s, n = self.manifest["score"], self.items.shape[0]
            mean1 = float(q @ np.asarray(s["item_mean"], np.float32))
            std1 = float(np.sqrt(max(q @ np.asarray(s["item_cov"], np.float32) @ q, 1e-24)))
            mean2 = float(ridge.sum() / n)
            std2 = float(np.sqrt(max((np.square(ridge, dtype=np.float64).sum() - n * mean2**2) / max(n - 1, 1), 1e-24)))
            scores = (scores - mean1) / std1 + s["ridge_weight"] * (ridge[candidates] - mean2) / std2
        order = np.argsort(-scores, kind="stable")[:k]
        return [(str(self.item_ids[candidates[i]]), float(scores[i])) for i in order]

    def representations(self, device: str = "cpu") -> Representations:
        """The trained model's scorer rebuilt from the export, on `device` (built once per device):
        its `full_scores` is the model's score, ridge head included."""
        if device not in self._scorers:
            from slifmr.model.slifmr import Representations

            def sparse(m: Any, csr: bool) -> torch.Tensor:
                coo = m.tocoo()
                t = torch.sparse_coo_tensor(np.stack([coo.row, coo.col]), coo.data.astype(np.float32), m.shape)
                t = t.coalesce()
                return (t.to_sparse_csr() if csr else t).to(device)

            ridge = self.ridge_t is not None
            self._scorers[device] = Representations(
                torch.from_numpy(self.users).to(device), torch.from_numpy(self.items).to(device),
                item_ridge=sparse(self.ridge_t, csr=True) if ridge else None,
                interactions=sparse(self.train, csr=False) if ridge else None,
                ridge_weight=float(self.manifest["score"]["ridge_weight"]))
        return self._scorers[device]

    def recommend_batch(self, rows: np.ndarray, k: int, device: str = "cpu") -> dict[str, np.ndarray]:
        """Top-k unseen items of user rows (B,): columns user, rank, item, score (raw ids)."""
        from slifmr.recommend import top_unseen

        users = torch.as_tensor(np.asarray(rows, np.int64))
        seen = self.seen[users.numpy()].tocoo()
        recs = top_unseen(self.representations(device).full_scores(users), users,
                          torch.from_numpy(seen.row).long(), torch.from_numpy(seen.col).long(), k)
        return {"user": self.user_ids[recs.user.cpu().numpy()].astype(str), "rank": recs.rank.cpu().numpy(),
                "item": self.item_ids[recs.item.cpu().numpy()].astype(str), "score": recs.score.cpu().numpy()}


def load_export(path: str | Path) -> Export:
    """Read an export folder written by `export_run`."""
    import scipy.sparse as sp

    faiss = _faiss()
    root = Path(path)
    if not (root / MANIFEST).exists():
        raise SlifmrError(f"{root} is not an export folder (no {MANIFEST})")
    manifest = json.loads((root / MANIFEST).read_text())
    users, items = pq.read_table(root / "users.parquet"), pq.read_table(root / "items.parquet")

    def matrix(t: pa.Table) -> np.ndarray:  # a writable copy: torch warns on Arrow's read-only buffers
        return np.array(t.column("embedding").combine_chunks().flatten(), np.float32).reshape(t.num_rows, -1)

    m, n = users.num_rows, items.num_rows
    h = pq.read_table(root / "history.parquet", columns=["user_row", "item_row", "train"])
    hu, hi = (h.column(c).to_numpy() for c in ("user_row", "item_row"))
    tr = h.column("train").to_numpy(zero_copy_only=False)

    def csr(mask: np.ndarray) -> Any:
        return sp.csr_matrix((np.ones(int(mask.sum()), np.float32), (hu[mask], hi[mask])), shape=(m, n))

    ridge_t = None
    if (root / "ridge.parquet").exists():
        r = pq.read_table(root / "ridge.parquet", columns=["item_row", "neighbour_row", "weight"])
        ridge_t = sp.csr_matrix((r.column("weight").to_numpy(), (r.column("item_row").to_numpy(),
                                                                r.column("neighbour_row").to_numpy())), shape=(n, n))
    return Export(manifest, users.column("user").to_numpy(zero_copy_only=False).astype(object),
                  items.column("item").to_numpy(zero_copy_only=False).astype(object), matrix(users), matrix(items),
                  faiss.read_index(str(root / "items.faiss")), csr(np.ones(hu.size, bool)), csr(tr), ridge_t)
