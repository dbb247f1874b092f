"""The end of a run: the best validation epoch's scorer rebuilt from best/, and the test
metrics read once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from slifmr import log
from slifmr.closed_forms import CLOSED_FORMS
from slifmr.config import Config
from slifmr.data.cold import cold_items
from slifmr.data.format import TEST, VALID, Dataset
from slifmr.distributed.checkpoint import load_checkpoint
from slifmr.distributed.collectives import Comm
from slifmr.evaluation import Evaluator, Scorer
from slifmr.model.graphs import StaticGraphs, epoch_graphs
from slifmr.model.propagate import layerwise_spmm
from slifmr.model.slifmr import Representations
from slifmr.ranking import check_compatible, save_ranking
from slifmr.report import read_run
from slifmr.run_layout import RunLayout
from slifmr.training.build import (
    build_evaluator,
    build_model,
    cold_placement,
    places_cold_items,
)
from slifmr.training.cold_placement import applies as cold_placement_applies
from slifmr.training.cold_placement import choose as choose_cold_placement
from slifmr.training.records import SeedStreams
from slifmr.training.ridge_head import RidgeHead, row_sharding
from slifmr.training.run_folder import RunFolder


def load_best(cfg: Config, ds: Dataset, run_dir: Path, device: torch.device | str = "cpu",
              comm: Comm | None = None, static: StaticGraphs | None = None) -> tuple[Scorer, dict[str, Any]]:
    """What the best validation epoch ranks with, on `device`: its representations over that
    epoch's graphs (the layer-wise inference split over `comm`'s workers, who must then all call
    this together), or a closed form's solved weights. Returns it and the checkpoint's meta."""
    ckpt, meta = load_checkpoint(RunLayout(run_dir).best)
    check_compatible(meta, cfg, ds, run_dir)
    if cfg.variant in CLOSED_FORMS:
        solved = CLOSED_FORMS[cfg.variant].build(cfg, ds).to(device)
        solved.load_state_dict(ckpt["model"])
        return solved, meta
    model, static = build_model(cfg, ds, comm=comm, static=static)
    model.to(device)
    model.load_state_dict(ckpt["model"])
    corr = None if ckpt.get("corr") is None else (ckpt["corr"]["edge_index"], ckpt["corr"]["weight"])
    epoch = int(meta["epoch"])
    comm = comm or Comm()
    graphs = epoch_graphs(static, corr, cfg.model, SeedStreams.of(cfg.train.seed).epoch_generator(epoch), device)
    reps = model.representations(model.attend(graphs), layerwise_spmm(sharding=row_sharding(comm)))
    head = RidgeHead.build(cfg.model.head, static, comm, cold_placement(cfg, ds))
    if head is not None:  # the head and blend validation chose at that epoch, solved again
        head.load_state_dict(ckpt)
        reps = head.attach(reps)
        if head.spec is not None:
            meta = {**meta, "head": {**head.summary(), "choice": head.choice}}
    return reps, meta


def final_results(cfg: Config, ds: Dataset, run: RunFolder, evaluator: Evaluator, comm: Comm,
                  evaluate_test: bool = True, static: StaticGraphs | None = None) -> dict[str, Any]:
    """Test metrics, read once, at the best validation epoch (`static`: the run's static
    graphs, reused); written to results.json and returned."""
    model, meta = load_best(cfg, ds, run.path, comm.device, comm, static)
    if run.writer and isinstance(model, Representations):  # what `recommend` and co. load (ranking.py)
        save_ranking(run.path, model, meta)
    placement = None
    if evaluate_test and cold_placement_applies(cfg, ds):  # items without training interactions placed by content
        model, placement = choose_cold_placement(model, cfg, ds, comm)
    valid = evaluator.evaluate(model.full_scores, VALID, comm.all_reduce_sum)
    test = evaluator.evaluate(model.full_scores, TEST, comm.all_reduce_sum) if evaluate_test else None
    cold, cold_fields = cold_items(ds), {}  # the cold-start protocol's held-out items
    if cold is not None and not evaluate_test:
        cold_fields = {"cold": None}
    elif cold is not None and places_cold_items(cfg, ds):
        cold_fields = {"cold": build_evaluator(cfg.train, ds, comm, items=cold).evaluate(model.full_scores, TEST, comm.all_reduce_sum),
                       "cold_placement": placement}
    elif cold is not None:
        cold_fields = {"cold": None, "cold_note": f"variant {cfg.variant} scores an item from its training interactions "
                                                  "(or ID embedding) alone: it cannot place an item held out of training"}
    records = read_run(run.path)["records"]
    results = {
        "variant": cfg.variant,
        "seed": cfg.train.seed,
        "dataset": ds.name,
        "best_epoch": int(meta["epoch"]),
        # the ridge head validation chose (rule, k, l2, blend) and what it was chosen among; None without one
        "head": meta.get("head"),
        "epochs_run": len(records),
        "eval_users": cfg.train.eval_users,  # 0: valid and test over every user, else over this seeded sample
        "valid": valid,
        "test": test,
        **cold_fields,
        "seconds_per_epoch": sum(r["epoch_seconds"] for r in records) / max(len(records), 1),
        "fusion_seconds_per_epoch": sum(r["fusion_seconds"] for r in records) / max(len(records), 1),
    }
    run.write_results(results)
    if run.writer:
        k = cfg.train.stop_metric.split("@")[1]
        line = f"best epoch {results['best_epoch']}: valid recall@{k} {valid[f'recall@{k}']:.4f}"
        if test is not None:
            line += f" | test recall@{k} {test[f'recall@{k}']:.4f} ndcg@{k} {test[f'ndcg@{k}']:.4f}"
        log.info(line)
    return results
