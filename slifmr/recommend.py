"""Top-K recommendations from a trained model; items the user already interacted with
(in any split) are never recommended."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from slifmr.atomic import atomic_path
from slifmr.data.format import TEST, VALID, Dataset
from slifmr.data.graphs import csr_entries, interactions_csr
from slifmr.data.ids import normal_id
from slifmr.errors import SlifmrError
from slifmr.evaluation import Scorer, top_k


def parse_user_list(spec: str, option: str = "--users") -> list[str]:
    """An id list as written on a command line (`--users`, `--history`, `--allow`): ids separated
    by commas, CSV-quoted where an id holds a comma or a quote ('196,186' or '"Doe, Jane",Roe');
    spaces around an unquoted id are dropped. Raises SlifmrError for unbalanced quotes."""
    import csv

    try:
        rows = list(csv.reader([spec], skipinitialspace=True, strict=True))
    except csv.Error as e:
        raise SlifmrError(f"{option} {spec!r}: {e} (quote an id holding a comma as \"Doe, Jane\")") from None
    return [u.strip() for u in (rows[0] if rows else []) if u.strip()]


def read_user_file(path: str | Path) -> list[str]:
    """`--users-file`: one raw id per line, taken whole (commas and quotes included; blank lines
    skipped). Raises SlifmrError when the file cannot be read."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SlifmrError(f"--users-file {path}: {getattr(e, 'strerror', None) or e}") from None
    return [line for line in lines if line.strip()]


def resolve_users(ds: Dataset, users: Sequence[str]) -> Tensor:
    """Raw user ids (each one whole; stripped and in NFC, as the importers store ids:
    slifmr/data/ids.py) -> contiguous ids, each user once, in order. Raises SlifmrError for an unknown id or an
    empty list."""
    raw = list(dict.fromkeys(normal_id(u) for u in users))
    if not raw:
        raise SlifmrError("no user ids given")
    if "users" in ds.ids:
        index = {normal_id(t): i for i, t in enumerate(ds.ids["users"])}
    else:
        index = {str(i): i for i in range(ds.num_users)}
    missing = [u for u in raw if u not in index]
    if missing:
        raise SlifmrError(f"unknown user id {missing[0]!r} (not in dataset {ds.name})")
    return torch.tensor([index[u] for u in raw])


def seen_items(ds: Dataset, for_split: str | None = None) -> tuple[Tensor, Tensor]:
    """CSR of the interactions a list leaves out. None: every split (a deployed list never
    repeats what the user has); "valid" / "test": what the evaluation of that split masks
    (train; train and valid), so the lists can be scored on it (`slifmr evaluate-recs`)."""
    if for_split is None:
        return interactions_csr(ds.user, ds.item, ds.num_users)
    if for_split not in ("valid", "test"):
        raise SlifmrError(f"split must be 'valid' or 'test', got {for_split!r}")
    keep = ds.split < (VALID if for_split == "valid" else TEST)
    return interactions_csr(ds.user[keep], ds.item[keep], ds.num_users)


@dataclass
class Recommendations:
    """Top-K lists in long form, one row per (user, rank): user (R,) contiguous ids, rank (R,)
    1-based, item (R,) contiguous ids, score (R,) u . z_i. A user with fewer than K unseen items
    has fewer rows: masked (already seen) items are never listed."""

    user: Tensor
    rank: Tensor
    item: Tensor
    score: Tensor

    def counts(self, users: Tensor) -> Tensor:
        """Rows of each of `users` (B,)."""
        return (self.user[None, :] == users[:, None]).sum(1)


@torch.no_grad()
def recommend(model: Scorer, ds: Dataset, users: Tensor, k: int,
              seen: tuple[Tensor, Tensor] | None = None) -> Recommendations:
    """Each of `users` (B,) contiguous ids' top-k unseen items; `seen` from `seen_items`.

    Raises SlifmrError when the model scores a user's items with NaN or inf (a damaged or
    diverged model), rather than ranking them."""
    scores = model.full_scores(users).clone()
    finite = torch.isfinite(scores).all(1)
    if not bool(finite.all()):
        u = int(users[~finite][0])
        raise SlifmrError(f"the model's scores for user {raw_ids(ds, 'users', np.array([u]))[0]} are not finite: "
                          "its checkpoint is damaged or from a diverged run")
    return top_unseen(scores, users, *csr_entries(*(seen or seen_items(ds)), users), k)


def top_unseen(scores: Tensor, users: Tensor, seen_rows: Tensor, seen_items: Tensor, k: int) -> Recommendations:
    """The top-k of each row of finite `scores` (B, N) (modified in place) for `users` (B,),
    leaving out the seen (row, item) pairs `seen_rows`, `seen_items` (S,)."""
    scores[seen_rows.to(scores.device), seen_items.to(scores.device)] = -math.inf
    values, indices = top_k(scores, k)  # equal scores: ascending item index (evaluation.top_k)
    keep = values > -math.inf  # every real score is finite: -inf marks a seen item
    rank = torch.arange(1, indices.shape[1] + 1, device=scores.device).expand_as(indices)
    users = users.to(scores.device)[:, None].expand_as(indices)
    return Recommendations(users[keep], rank[keep], indices[keep], values[keep])


def raw_ids(ds: Dataset, kind: str, ids: np.ndarray) -> np.ndarray:
    """The raw ids (as in the source data, strings) of contiguous ids of `kind` (users, items)."""
    if kind not in ds.ids:
        return ids.astype(str)
    raw = ds.ids[kind]
    if isinstance(raw, pa.Array | pa.ChunkedArray):  # a freshly imported dataset keeps its ids in Arrow
        return np.asarray(raw.take(pa.array(ids)).to_numpy(zero_copy_only=False)).astype(str)
    return raw[ids].astype(str)


def _titles(ds: Dataset) -> dict[int, str]:
    if ds.items is None or "title" not in ds.items.column_names:
        return {}
    return dict(zip(ds.items.column("item").to_pylist(), ds.items.column("title").to_pylist()))


def format_table(ds: Dataset, users: Sequence[str], table: pa.Table) -> str:
    """A recommendations table (user, rank, item, score: raw ids) as `format_recommendations` prints lists."""
    titles = _titles(ds)
    by_raw = {str(raw): i for i, raw in enumerate(raw_ids(ds, "items", np.arange(ds.num_items)))}
    lines = []
    rows = table.to_pylist()
    for u in dict.fromkeys(users):
        lines.append(f"user {u}:")
        mine = [r for r in rows if r["user"] == u]
        for r in mine:
            i = by_raw.get(r["item"])
            title = f"  {titles[i]}" if i in titles and titles[i] else ""
            lines.append(f"  {r['rank']:2d}. item {r['item']:>6}  score {r['score']:7.3f}{title}")
        if not mine:
            lines.append("  (no item left)")
    return "\n".join(lines)


def format_recommendations(ds: Dataset, users: Tensor, recs: Recommendations) -> str:
    titles = _titles(ds)
    lines = []
    for u in users.tolist():
        lines.append(f"user {raw_ids(ds, 'users', np.array([u]))[0]}:")
        mine = recs.user == u
        for rank, i, s in zip(recs.rank[mine].tolist(), recs.item[mine].tolist(), recs.score[mine].tolist()):
            title = f"  {titles[i]}" if i in titles and titles[i] else ""
            lines.append(f"  {rank:2d}. item {raw_ids(ds, 'items', np.array([i]))[0]:>6}  score {s:7.3f}{title}")
        if not mine.any():
            lines.append("  (no unseen item left)")
    return "\n".join(lines)


def shortfall_note(users: int, short: int, k: int) -> str | None:
    """The one note a command prints when some users have fewer than k unseen items."""
    if short == 0:
        return None
    if users == 1:
        return f"note: this user has fewer than {k} unseen items; every unseen item is listed"
    return f"note: {short:,} of {users:,} users have fewer than {k} unseen items and get fewer rows"


# what every writer of recommendations writes, zero rows included
RECOMMENDATION_SCHEMA = pa.schema([("user", pa.string()), ("rank", pa.int64()), ("item", pa.string()),
                                   ("score", pa.float32())])


def recommendation_table(ds: Dataset, recs: Recommendations) -> pa.Table:
    """user, rank, item, score with raw ids (as in the source data): RECOMMENDATION_SCHEMA."""
    return pa.table({
        "user": raw_ids(ds, "users", recs.user.numpy()),
        "rank": recs.rank.numpy(),
        "item": raw_ids(ds, "items", recs.item.numpy()),
        "score": recs.score.numpy(),
    }).cast(RECOMMENDATION_SCHEMA)


def write_recommendations(model: Scorer, ds: Dataset, k: int, out: Path, chunk: int = 1024,
                          for_split: str | None = None) -> tuple[Path, int]:
    """Every user's top-k unseen items as Parquet (user, rank, item, score: raw ids), written
    atomically; returns (the file, how many users got fewer than k rows). `for_split`: leave
    out only what that split's evaluation masks (`seen_items`)."""
    parts = []
    seen = seen_items(ds, for_split)
    short = 0
    for start in range(0, ds.num_users, chunk):
        users = torch.arange(start, min(start + chunk, ds.num_users))
        recs = recommend(model, ds, users, k, seen)
        short += int((torch.bincount(recs.user - start, minlength=users.numel()) < k).sum())
        parts.append(recommendation_table(ds, recs))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(pa.concat_tables(parts), tmp)
    return out, short
