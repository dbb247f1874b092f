"""What ranking with a run's best epoch needs, and the checks that it belongs to the run's
dataset and config.

At the end of training (`training.final_results`) the best epoch's user and item representations,
the ridge head's W (sparse) and its blend weight are saved once as RUN_DIR/ranking (an atomic
checkpoint folder, meta as best/'s). Commands that only rank (`recommend`, `evaluate`, `export`,
batch inference, `Run.model`) load it instead of rebuilding the epoch's graphs and propagating
(and without importing the trainer or PyG). A run without it (saved before it existed, a closed
form, or resumed and not yet finished, whose best epoch has moved on) is rebuilt from best/ as
before (`training.load_best`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from slifmr import log
from slifmr.config import RUNTIME_KEYS, Config, saved_config
from slifmr.data.format import Dataset, read_dataset
from slifmr.distributed.checkpoint import META, CheckpointError, load_checkpoint, save_checkpoint
from slifmr.errors import SlifmrError
from slifmr.run_layout import RunLayout


def resolve_dataset(cfg: Config) -> Dataset:
    """The run's dataset: `cfg.data`, or the embedded ml-100k (prepared on first use)."""
    if cfg.data is None:
        from slifmr.data.ml100k import prepare_ml100k

        return read_dataset(prepare_ml100k())
    return read_dataset(cfg.data)


def check_compatible(meta: dict[str, Any], cfg: Config, ds: Dataset, where: Path) -> None:
    """Refuse to resume, evaluate or serve a checkpoint made for another dataset or config."""
    saved, mine = meta.get("dataset", {}), ds.fingerprint()
    if "digest" not in saved:  # checkpoints written before the digest existed
        log.warning(f"checkpoint in {where} predates dataset digests: only the counts of {ds.name} are checked")
        mine = {k: v for k, v in mine.items() if k != "digest"}
    if saved != mine:
        what = "its id maps or split differ" if {k: v for k, v in saved.items() if k != "digest"} == {
            k: v for k, v in mine.items() if k != "digest"} else "its counts differ"
        raise SlifmrError(f"dataset {cfg.data or ds.name} changed since {where} was trained ({what}): "
                          "retrain, or restore the dataset it was trained on")
    saved = saved_config(meta.get("config", {}))
    mine, theirs = cfg.to_dict(), saved.to_dict()
    for key in RUNTIME_KEYS:  # how long and on how many threads, not what is trained
        section, name = key.split(".")
        mine[section].pop(name)
        theirs[section].pop(name)
    if mine != theirs:
        diff = sorted(
            f"{s}.{k}" for s in ("model", "train") for k in mine[s] if mine[s][k] != theirs[s].get(k)
        ) + (["variant"] if mine["variant"] != theirs["variant"] else [])
        raise SlifmrError(f"checkpoint in {where} was made with a different config (differs in: {', '.join(diff) or 'data'})")


def save_ranking(run_dir: Path, reps: Any, meta: dict[str, Any]) -> None:
    """Save `reps` (slifmr.model.slifmr.Representations of the best epoch, `meta` best/'s) as
    RUN_DIR/ranking."""
    head = None
    if reps.item_ridge is not None:
        w = reps.item_ridge.cpu()
        if w.layout == torch.strided:  # the EASE head's dense W (row-major): kept dense, so scores are the same bits
            head = {"dense_w": w.T.contiguous()}
        else:
            head = {"crow": w.crow_indices(), "col": w.col_indices(), "values": w.values(), "size": torch.tensor(w.shape)}
    state = {"users": reps.users.detach().cpu(), "items": reps.items.detach().cpu(), "cosine": bool(reps.cosine),
             "ridge_weight": float(reps.ridge_weight), "item_ridge": head}
    save_checkpoint(RunLayout(run_dir).ranking, state, meta)


def load_ranking(run_dir: Path, cfg: Config, ds: Dataset, device: torch.device | str = "cpu") -> tuple[Any, dict[str, Any]] | None:
    """(Representations, meta) saved for the run's current best epoch, on `device`; None when
    there is none for it. Raises SlifmrError when it was made for another dataset or config."""
    layout = RunLayout(run_dir)
    folder, best_meta = layout.ranking, layout.best / META
    if not folder.exists() or not best_meta.exists():
        return None
    try:
        best_epoch = json.loads(best_meta.read_text())["epoch"]
        state, meta = load_checkpoint(folder)
    except (CheckpointError, ValueError, KeyError):
        return None  # rebuilt from best/ instead
    if meta.get("epoch") != best_epoch:
        return None
    check_compatible(meta, cfg, ds, run_dir)
    from slifmr.data.graphs import training_matrix
    from slifmr.model.slifmr import Representations

    head, item_ridge, interactions = state["item_ridge"], None, None
    if head is not None and "dense_w" in head:
        item_ridge = head["dense_w"].to(device).T
    elif head is not None:
        item_ridge = torch.sparse_csr_tensor(head["crow"], head["col"], head["values"],
                                             tuple(head["size"].tolist())).to(device)
    if head is not None:
        interactions = training_matrix(ds).to(device)
    reps = Representations(state["users"].to(device), state["items"].to(device), cosine=state["cosine"],
                           item_ridge=item_ridge, interactions=interactions, ridge_weight=state["ridge_weight"])
    return reps, meta
