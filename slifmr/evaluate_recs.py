"""Scoring another system's recommendations under slifmr's protocol (`slifmr evaluate-recs`).

A recommendations table (Parquet or CSV, a file or a folder: the table importer's readers) has a
`user` and an `item` column holding raw ids as in the dataset's source, and a `rank` (1 = best)
or a `score` (higher = better) column; `slifmr recommend --all --split test` writes one to score
on test (plain `--all` leaves out every item the user has, test included: such lists cannot hit,
and a warning says so). Each user's listed
items become a ranking: the listed items in their order, every other item unranked. Then the
dataset's own split and `slifmr.evaluation.Evaluator` score it exactly as a trained run is
scored: the user's training items (and validation items, for test) are removed from the list
first, unlisted items are never recommended, metrics are averaged over the users with
ground truth in the split (a user with no list scores 0). Scores are compared as written
(float64; Arrow timestamps as seconds), and equal scores keep the order the table lists them in.

Errors name the file, row, column and raw value: an id the dataset does not have, a missing or
non-finite score or rank, a (user, item) pair listed twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from slifmr import log
from slifmr.data.format import TEST, VALID, Dataset
from slifmr.data.ids import ID_FORM
from slifmr.data.table import Table, id_tokens, lookup, numbers, open_table, token_array
from slifmr.errors import DataError, SlifmrError
from slifmr.evaluation import Evaluator


def dataset_ids(ds: Dataset, kind: str) -> pa.Array:
    """The raw ids of `kind` ("users", "items") in contiguous-id order, as strings."""
    n = ds.num_users if kind == "users" else ds.num_items
    if kind not in ds.ids:
        return pa.array([str(i) for i in range(n)], pa.string())
    raw = ds.ids[kind]
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    text = raw.cast(pa.string()) if isinstance(raw, pa.Array) else pa.array(np.asarray(raw).astype(str), pa.string())
    return pc.utf8_normalize(text, ID_FORM)  # datasets imported before ids were normalised


@dataclass
class ListedScores:
    """Each user's listed items as a scorer (slifmr.evaluation.Scorer): listed items keep their
    order (higher is better), every other item is -inf (not recommended)."""

    indptr: Tensor  # (M + 1,) int64, CSR over users
    items: Tensor  # (R,) int64 contiguous item ids, by user
    scores: Tensor  # (R,) float64, higher is better: minus the item's place in its user's list
    num_items: int

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N): the listed items' scores of users (B,), -inf elsewhere."""
        starts = self.indptr[users]
        lengths = self.indptr[users + 1] - starts
        rows = torch.repeat_interleave(torch.arange(users.numel()), lengths)
        first = torch.cumsum(lengths, 0) - lengths  # each user's first position in the chunk
        pos = torch.arange(int(lengths.sum())) - first[rows] + starts[rows]
        out = torch.full((users.numel(), self.num_items), -math.inf, dtype=self.scores.dtype)
        out[rows, self.items[pos]] = self.scores[pos]
        return out


def read_recommendations(path: str | Path, ds: Dataset) -> tuple[ListedScores, dict[str, Any]]:
    """The lists of a recommendations table over `ds`'s contiguous ids, and what was read
    (rows, users with a list, the order column used). Raises DataError (file, row, column, value)."""
    table = open_table(str(path), ["user", "item"])
    table.require("user", "item")
    order = "rank" if "rank" in table.columns else "score" if "score" in table.columns else None
    if order is None:
        raise DataError(table.source, f"needs a rank (1 = best) or a score (higher = better) column "
                                      f"beside user and item (found: {', '.join(table.columns)})")
    known = {kind: dataset_ids(ds, kind) for kind in ("users", "items")}
    users, items, scores = [], [], []
    for offset, batch in table.batches(["user", "item", order]):
        if batch.num_rows == 0:
            continue
        codes = {}
        for kind, column in (("users", "user"), ("items", "item")):
            code = lookup(known[kind], token_array(id_tokens(table, batch.column(column), offset, column)))
            if (code < 0).any():
                i = int(np.flatnonzero(code < 0)[0])
                raise DataError(table.where(offset + i), f"{kind[:-1]} {batch.column(column)[i].as_py()!r} is not in "
                                f"dataset {ds.name}", column=column)
            codes[kind] = code
        value = numbers(table, batch.column(order), offset, order)
        users.append(codes["users"])
        items.append(codes["items"])
        scores.append(-value if order == "rank" else value)
    if not users:
        raise DataError(table.source, "no rows")
    user, item, score = np.concatenate(users), np.concatenate(items), np.concatenate(scores)
    _refuse_repeated_pairs(table, user, item, ds.num_items)
    # each user's list in order: score (float64, as written) descending, then the listed order
    # for equal scores; the place in that order is the score the evaluator ranks (exact, no ties)
    perm = np.lexsort((np.arange(user.size), -score, user))
    indptr = np.zeros(ds.num_users + 1, np.int64)
    np.cumsum(np.bincount(user, minlength=ds.num_users), out=indptr[1:])
    place = np.arange(user.size) - indptr[user[perm]]
    listed = ListedScores(torch.from_numpy(indptr), torch.from_numpy(item[perm].astype(np.int64)),
                          torch.from_numpy(-place.astype(np.float64)), ds.num_items)
    return listed, {"rows": int(user.size), "users_with_a_list": int(np.unique(user).size), "order": order}


def _refuse_repeated_pairs(table: Table, user: np.ndarray, item: np.ndarray, num_items: int) -> None:
    pair = user.astype(np.int64) * num_items + item
    _, first = np.unique(pair, return_index=True)
    if first.size < pair.size:
        seen = np.zeros(pair.size, bool)
        seen[first] = True
        i = int(np.flatnonzero(~seen)[0])
        raise DataError(table.where(i), "this (user, item) pair is listed twice", column="item")


def evaluate_recommendations(path: str | Path, ds: Dataset, ks: list[int], split: str = "test",
                             chunk_size: int = 1024) -> dict[str, Any]:
    """Metrics of the recommendations in `path` on `ds`'s `split` ("valid" or "test") at each K
    of `ks` (slifmr.evaluation: Recall, NDCG, ... as a trained run reports them), with what was read."""
    if split not in ("valid", "test"):
        raise SlifmrError(f"--split must be valid or test, got {split!r}")
    listed, read = read_recommendations(path, ds)
    code = VALID if split == "valid" else TEST
    hits = _rows_in_split(listed, ds, code)
    if hits == 0:
        log.warning(f"0 of the {read['rows']:,} listed rows are {split} items, so every metric is 0: lists that leave "
                    f"out every item a user has (slifmr recommend --all) can never hit; write lists to score with "
                    f"`slifmr recommend RUN --all --split {split}`")
    metrics = Evaluator(ds, ks, chunk_size).evaluate(listed.full_scores, code)
    return {"recommendations": str(path), "dataset": ds.name, "split": split, **read, f"{split}_rows": hits,
            "metrics": metrics}


def _rows_in_split(listed: ListedScores, ds: Dataset, split: int) -> int:
    """How many listed (user, item) rows are interactions of `split`."""
    user = torch.repeat_interleave(torch.arange(ds.num_users), listed.indptr[1:] - listed.indptr[:-1]).numpy()
    listed_pairs = user.astype(np.int64) * ds.num_items + listed.items.numpy()
    mine = ds.split == split
    truth = ds.user[mine].astype(np.int64) * ds.num_items + ds.item[mine]
    return int(np.isin(listed_pairs, truth).sum())
