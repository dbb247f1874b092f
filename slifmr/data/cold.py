"""The cold-start item protocol (docs/architecture.md §3, beside the warm one): a seeded share
of items is held out entirely. Every interaction of a held-out ("cold") item goes to
validation or test (a seeded coin each), none to training, so only content (the modality
features, the KG, S(t) joining cold items to warm ones by content) can place them. Warm
interactions keep their split. A user left without a training interaction leaves the
dataset (every model needs a history to rank for). The cold items are recorded in the
dataset's provenance (`cold_items`), which the evaluation reads to report Recall/NDCG on the
cold items' interactions alone beside the metrics on all.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa

from slifmr.data.format import TEST, TRAIN, VALID, Dataset
from slifmr.errors import SlifmrError


def hold_out_items(ds: Dataset, share: float, seed: int = 0) -> Dataset:
    """`ds` with round(share * N) items, drawn by `seed`, held out of training (module
    docstring). Raises SlifmrError for a share outside (0, 1) or one that leaves no warm item or
    no training interaction."""
    if not 0.0 < share < 1.0:
        raise SlifmrError(f"the cold-item share must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    n_cold = int(round(share * ds.num_items))
    if not 0 < n_cold < ds.num_items:
        raise SlifmrError(f"a share of {share} of {ds.num_items} items holds out {n_cold}: at least one item must be "
                          "cold and one warm")
    cold = np.zeros(ds.num_items, bool)
    cold[rng.permutation(ds.num_items)[:n_cold]] = True
    split = ds.split.copy()
    on_cold = cold[ds.item]
    split[on_cold] = np.where(rng.random(int(on_cold.sum())) < 0.5, VALID, TEST).astype(split.dtype)
    has_train = np.zeros(ds.num_users, bool)
    has_train[ds.user[split == TRAIN]] = True
    keep = has_train[ds.user]
    new_id = np.cumsum(has_train) - 1  # users keep their order
    ids = dict(ds.ids)
    if "user" in ids:
        raw = ids["user"]
        ids["user"] = raw.filter(pa.array(has_train)) if isinstance(raw, (pa.Array, pa.ChunkedArray)) else np.asarray(raw)[has_train]
    out = replace(ds, num_users=int(has_train.sum()), user=new_id[ds.user[keep]], item=ds.item[keep], split=split[keep],
                  timestamp=None if ds.timestamp is None else ds.timestamp[keep], ids=ids, digest=None,
                  provenance={**ds.provenance, "cold_items": np.flatnonzero(cold).tolist(),
                              "cold_protocol": f"{n_cold} items ({share:g}, seed {seed}) held out of training: "
                                               "their interactions split 50/50 between valid and test; "
                                               f"{int((~has_train).sum())} user(s) left without training "
                                               "interactions removed"})
    for s, name in ((TRAIN, "train"), (VALID, "valid"), (TEST, "test")):
        if not (out.split == s).any():
            raise SlifmrError(f"holding out {n_cold} items leaves the {name} split empty")
    return out


def cold_items(ds: Dataset) -> np.ndarray | None:
    """(N,) bool: the items the cold-start protocol held out (None for a warm dataset)."""
    listed = ds.provenance.get("cold_items")
    if listed is None:
        return None
    mask = np.zeros(ds.num_items, bool)
    mask[np.asarray(listed, np.int64)] = True
    return mask
