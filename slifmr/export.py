"""Export a trained run for serving, and score from the export.

`slifmr export RUN --out DIR` writes, atomically (a temporary sibling folder, one rename):

    slifmr_scorer.py   the servable scorer (a copy of slifmr/scorer.py): numpy + faiss only,
                       exactly `slifmr recommend`'s lists, a user's fresh history, fold-in of
                       unseen users, popularity fallback, allow-lists
    arrays/            what it reads, one .npy each: users, items (embeddings), user_ids,
                       item_ids (raw ids), seen_* and train_* (CSR: every interaction / the
                       training ones by user), ridge_* (CSR: the head's W by history item),
                       popularity (training interactions per item)
    items.faiss        a faiss inner-product index over the item embeddings: exact (IndexFlatIP)
                       up to `exact_limit` items, HNSW beyond, its recall@K measured against
                       the exact top K and written to the manifest
    users.parquet      user (raw id), embedding (d floats)        } the same, for stacks that
    items.parquet      item (raw id), embedding (d floats)        } read Parquet (Spark, a
    history.parquet    user, item, user_row, item_row, train      } feature store)
    ridge.parquet      (with the ridge head) item, neighbour (raw ids and rows), weight: W^T
    manifest.json      slifmr version, dataset fingerprint, variant, best epoch and its
                       validation metrics, and the score (its formula, ridge weight, and the
                       item embeddings' mean and covariance)

The score and the two-stage candidate guarantee are in slifmr/scorer.py's docstring.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import slifmr
from slifmr import ann
from slifmr.atomic import atomic_folder
from slifmr.closed_forms import CLOSED_FORMS
from slifmr.errors import SlifmrError
from slifmr.run_layout import RunLayout
from slifmr.scorer import ARRAYS, MANIFEST, Scorer

if TYPE_CHECKING:
    from slifmr.data.format import Dataset
    from slifmr.model.slifmr import Representations

EXACT_LIMIT = 1_000_000  # items up to which the index is exact (IndexFlatIP); HNSW beyond


def _vectors(raw: np.ndarray, x: np.ndarray, name: str) -> pa.Table:
    d = x.shape[1]
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    return pa.table({name: pa.array(raw.astype(str)), "embedding": pa.FixedSizeListArray.from_arrays(flat, d)})


def build_index(items: np.ndarray, exact_limit: int = EXACT_LIMIT) -> Any:
    """The serving index over `items` (N, d) float32: exact up to `exact_limit` rows, HNSW beyond."""
    return ann.build_index(items, "flat" if items.shape[0] <= exact_limit else "hnsw", "export")


def index_recall(index: Any, users: np.ndarray, items: np.ndarray, k: int, sample: int = 1000, seed: int = 0) -> float:
    """Recall@k of the index's top k against the exact top k by inner product, over a seeded
    sample of users."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(users.shape[0], min(sample, users.shape[0]), replace=False)
    q = np.ascontiguousarray(users[rows], dtype=np.float32)
    k = min(k, items.shape[0])
    _, found = index.search(q, k)
    exact = torch.topk(torch.from_numpy(q) @ torch.from_numpy(items).T, k, dim=1).indices.numpy()
    hits, total = ann.overlap(found, exact)
    return hits / total


def export_run(run: slifmr.Run, out: str | Path, k: int = 20, exact_limit: int = EXACT_LIMIT) -> Path:
    """Write the export of `run`'s best epoch to the folder `out` (must not exist); see the module
    docstring. Raises SlifmrError for the closed-form variants (an item-item matrix, no embeddings)."""
    if Path(out).exists():
        raise SlifmrError(f"{out} already exists (choose another --out or remove it)")
    about = {"run": str(run.path.resolve()), "variant": run.config.variant, "best_epoch": run.best_epoch,
             "valid": run.results.get("valid") if RunLayout(run.path).results.exists() else None}
    if run.config.variant in CLOSED_FORMS:
        kind, part = run.model.export_scores()  # the closed form's own: "dot", "item_item" or "popularity"
        if kind != "dot":
            return export_item_scores(run.dataset, kind, part, out, about)
        return export_representations(run.dataset, part, out, about, k, exact_limit)
    model = run.model
    if hasattr(model, "base"):  # a held-out dataset's run: the scorer serves the trained ranking
        about["cold_placement"] = ("not exported: the export ranks with the trained representations; "
                                   "`slifmr recommend` on the run places the held-out items by content")
        model = model.base
    return export_representations(run.dataset, model, out, about, k, exact_limit)


def export_item_scores(ds: Dataset, kind: str, part: Any, out: str | Path, about: dict[str, Any]) -> Path:
    """The export of a closed form scored without embeddings (its `export_scores()`): "item_item"
    (W^T, served as s = x_u W) or "popularity" (counts): the same folder as an embedding export
    without the embeddings and the index (arrays/ with users and items of width 0)."""

    out = Path(out)
    if out.exists():
        raise SlifmrError(f"{out} already exists (choose another --out or remove it)")
    w_t = None
    if kind == "item_item":
        w_t = (part.to_sparse_coo() if part.layout != torch.strided else part.to_sparse()).coalesce()
    manifest = {"slifmr_version": slifmr.__version__, "dataset": ds.fingerprint(), **about, "dim": 0,
                "users": ds.num_users, "items": ds.num_items,
                "score": {"type": kind, "ridge_weight": 1.0 if kind == "item_item" else 0.0,
                          "formula": "x_u W (the training history times the item-item weights)" if kind == "item_item"
                          else "training interactions of the item, the same for every user"},
                "index": None}
    empty_users, empty_items = np.zeros((ds.num_users, 0), np.float32), np.zeros((ds.num_items, 0), np.float32)
    with atomic_folder(out) as tmp:
        _write_history(tmp, ds)
        if w_t is not None:
            pq.write_table(_ridge_table(ds, w_t), tmp / "ridge.parquet")
        _write_arrays(tmp / ARRAYS, ds, empty_users, empty_items, w_t)
        shutil.copyfile(Path(__file__).with_name("scorer.py"), tmp / "slifmr_scorer.py")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def _ridge_table(ds: Dataset, item_ridge: torch.Tensor) -> pa.Table:
    """ridge.parquet: W^T's entries (scored item, history item as its neighbour, weight), raw ids and rows."""
    from slifmr.recommend import raw_ids

    w = item_ridge.to_sparse_coo().coalesce()
    i, j = w.indices().numpy()
    return pa.table({"item": raw_ids(ds, "items", i), "neighbour": raw_ids(ds, "items", j),
                     "item_row": i.astype(np.int64), "neighbour_row": j.astype(np.int64),
                     "weight": w.values().numpy().astype(np.float32)})


def _write_history(folder: Path, ds: Dataset) -> None:
    from slifmr.data.format import TRAIN
    from slifmr.recommend import raw_ids

    pq.write_table(pa.table({"user": raw_ids(ds, "users", ds.user), "item": raw_ids(ds, "items", ds.item),
                             "user_row": ds.user, "item_row": ds.item, "train": ds.split == TRAIN}),
                   folder / "history.parquet")


def export_representations(ds: Dataset, reps: Representations, out: str | Path, about: dict[str, Any],
                           k: int = 20, exact_limit: int = EXACT_LIMIT) -> Path:
    """Write the export of representations `reps` of dataset `ds` to the folder `out` (must not
    exist); `about` joins the manifest (run, variant, best epoch, validation metrics)."""
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
        ridge = _ridge_table(ds, reps.item_ridge)
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
        _write_history(tmp, ds)
        if ridge is not None:
            pq.write_table(ridge, tmp / "ridge.parquet")
        ann.faiss_module("export").write_index(index, str(tmp / "items.faiss"))
        _write_arrays(tmp / ARRAYS, ds, users_np, items_np, reps.item_ridge if ridge is not None else None)
        shutil.copyfile(Path(__file__).with_name("scorer.py"), tmp / "slifmr_scorer.py")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int, data: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Row pointers and column indices (sorted within each row) of the entries (rows, cols)."""
    order = np.lexsort((cols, rows))
    out = {"indptr": np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))]).astype(np.int64),
           "indices": cols[order].astype(np.int64)}
    if data is not None:
        out["data"] = data[order].astype(np.float32)
    return out


def _write_arrays(folder: Path, ds: Dataset, users: np.ndarray, items: np.ndarray,
                  item_ridge: torch.Tensor | None) -> None:
    """What the numpy + faiss scorer reads (slifmr/scorer.py), one .npy per array: embeddings,
    raw ids, every user's history (seen: any split; train), the head's W by history item, and
    training popularity."""
    from slifmr.data.format import TRAIN
    from slifmr.recommend import raw_ids

    folder.mkdir()
    train = ds.split == TRAIN
    arrays: dict[str, np.ndarray] = {
        "users": users, "items": items, "popularity": np.bincount(ds.item[train], minlength=ds.num_items),
        "user_ids": raw_ids(ds, "users", np.arange(ds.num_users)).astype(str),
        "item_ids": raw_ids(ds, "items", np.arange(ds.num_items)).astype(str)}
    for name, mask in (("seen", slice(None)), ("train", train)):
        arrays.update({f"{name}_{k}": v for k, v in _csr(ds.user[mask], ds.item[mask], ds.num_users).items()})
    if item_ridge is not None:  # W^T: (scored item i, history item j) -> W[j, i], stored by j
        w = item_ridge.to_sparse_coo().coalesce()
        i, j = w.indices().numpy()
        arrays.update({f"ridge_{k}": v for k, v in _csr(j, i, ds.num_items, w.values().numpy()).items()})
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)


@dataclass
class ItemItemScores:
    """s = x_u W for users (B,) -> (B, N): X (M, N) sparse COO training interactions, W^T CSR."""

    interactions: torch.Tensor
    weights_t: torch.Tensor

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        from slifmr.model.ridge import ridge_scores

        return ridge_scores(self.interactions, self.weights_t, users)


@dataclass
class PopularityScores:
    """s = the item's training interactions (N,), the same for every user -> (B, N)."""

    counts: torch.Tensor

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(users.numel(), -1).clone()


@dataclass
class Export:
    """A loaded export: `scorer` answers one user at a time with numpy + faiss (slifmr/scorer.py,
    what a serving host runs); `recommend_batch` scores many users exactly with torch (what
    `slifmr recommend --all --workers N` runs)."""

    scorer: Scorer
    _scorers: dict[str, Representations] = field(default_factory=dict, repr=False, compare=False)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.scorer.manifest

    @property
    def users(self) -> np.ndarray:
        return self.scorer.users

    @property
    def user_ids(self) -> np.ndarray:
        return self.scorer.user_ids

    @property
    def item_ids(self) -> np.ndarray:
        return self.scorer.item_ids

    def recommend(self, user: str, k: int = 10, **options: Any) -> list[tuple[str, float]]:
        """The user's top-k unseen items as (raw item id, score), best first (`Scorer.recommend`;
        `options` are its keyword arguments). Raises SlifmrError for an unknown id."""
        try:
            return self.scorer.recommend(user, k, **{"strict_user": True, **options})
        except ValueError as e:
            raise SlifmrError(str(e)) from None

    @cached_property
    def seen(self) -> Any:
        return _scipy(self.scorer.seen, self.scorer.items.shape[0])

    def representations(self, device: str = "cpu") -> Representations | ItemItemScores | PopularityScores:
        """The trained model's scorer rebuilt from the export, on `device` (built once per device):
        its `full_scores` is the model's score, ridge head included (a closed form's: x_u W, or
        the popularity counts)."""
        if device not in self._scorers:
            from slifmr.model.slifmr import Representations

            def sparse(m: Any, csr: bool) -> torch.Tensor:
                coo = m.tocoo()
                t = torch.sparse_coo_tensor(np.stack([coo.row, coo.col]), coo.data.astype(np.float32), m.shape)
                t = t.coalesce()
                return (t.to_sparse_csr() if csr else t).to(device)

            s, n = self.scorer, self.scorer.items.shape[0]
            head = s.ridge is not None
            kind = s.manifest["score"]["type"]
            if kind == "popularity":
                self._scorers[device] = PopularityScores(torch.from_numpy(np.array(s.popularity)).float().to(device))
                return self._scorers[device]
            if kind == "item_item":
                self._scorers[device] = ItemItemScores(sparse(_scipy(s.train, n), csr=False),
                                                       sparse(_scipy(s.ridge, n).T, csr=True))
                return self._scorers[device]
            self._scorers[device] = Representations(
                torch.from_numpy(np.array(s.users)).to(device), torch.from_numpy(np.array(s.items)).to(device),
                item_ridge=sparse(_scipy(s.ridge, n).T, csr=True) if head else None,  # W^T
                interactions=sparse(_scipy(s.train, n), csr=False) if head else None,
                ridge_weight=s.ridge_weight)
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


def _scipy(m: Any, columns: int) -> Any:
    """A scipy CSR matrix of the scorer's `Csr` rows."""
    import scipy.sparse as sp

    data = np.ones(m.indices.size, np.float32) if m.data is None else np.asarray(m.data)
    return sp.csr_matrix((data, np.asarray(m.indices), np.asarray(m.indptr)), shape=(m.indptr.size - 1, columns))


def load_export(path: str | Path) -> Export:
    """Read an export folder written by `export_run`. Raises SlifmrError when it is not one."""
    ann.faiss_module("export")
    root = Path(path)
    if not (root / MANIFEST).exists() or not (root / ARRAYS).is_dir():
        raise SlifmrError(f"{root} is not an export folder (no {MANIFEST} or {ARRAYS}/; an export from an "
                          "older slifmr: export the run again)")
    return Export(Scorer.load(root))
