"""The parts of a run built from its config: the model and its static graphs, the evaluator,
and the threads a process may use (a closed form is built by its registry entry,
slifmr/closed_forms.py)."""

from __future__ import annotations

import os

import numpy as np
import torch

from slifmr import log
from slifmr.closed_forms import CLOSED_FORMS
from slifmr.config import Config, TrainConfig
from slifmr.data.cold import cold_items
from slifmr.data.format import TRAIN, Dataset
from slifmr.distributed.collectives import Comm
from slifmr.distributed.knn import KnnSearch
from slifmr.evaluation import Evaluator
from slifmr.model.graphs import StaticGraphs
from slifmr.model.slifmr import SLIFMR
from slifmr.training.records import SeedStreams


def set_threads(cfg: Config, comm: Comm) -> None:
    """Each process gets the threads of the cores it owns: oversubscribed cores thrash (each op's threads wait on each other)."""
    n = cfg.train.threads or max(1, (os.cpu_count() or 1) // max(comm.world_size, 1))
    torch.set_num_threads(n)


def build_model(cfg: Config, ds: Dataset, comm: Comm | None = None, sparse_tables: bool = False,
                static: StaticGraphs | None = None) -> tuple[SLIFMR, StaticGraphs]:
    """The model and the static graphs it trains on. The one-time multimodal kNN graph uses
    model.knn (exact: sharded over `comm`'s workers; approx: faiss, reproducible, for large
    catalogues). `sparse_tables`: see SLIFMR. `static`: graphs already built for this config
    and dataset (reused, not rebuilt)."""
    if static is None:
        sharded = comm is not None and comm.world_size > 1
        search = KnnSearch(comm, cfg.model.knn) if sharded or cfg.model.knn != "exact" else None
        static = StaticGraphs.from_dataset(ds, cfg.model, search)
    if cfg.model.use_kg and static.kg is None:
        log.info(f"dataset {ds.name} has no knowledge graph: the KG view is off")
    if cfg.model.use_mm and static.mm is None:
        log.info(f"dataset {ds.name} has no modality features: the multimodal view is off")
    features = {m: torch.tensor(np.asarray(f, dtype=np.float32)) for m, f in ds.features.items()} if static.mm else {}
    kg_shape = (static.kg.num_nodes - ds.num_items, static.kg.num_relations) if static.kg is not None else None
    torch.manual_seed(SeedStreams.of(cfg.train.seed).init)
    return SLIFMR(cfg.model, ds.num_users, ds.num_items, features, kg_shape, sparse_tables), static


def user_shard(ds: Dataset, comm: Comm, eval_users: int = 0, seed: int = 0) -> torch.Tensor:
    """This rank's block of the evaluated users: all, or `eval_users` of them drawn by `seed`."""
    users = torch.arange(ds.num_users)
    if 0 < eval_users < ds.num_users:
        gen = torch.Generator().manual_seed(seed)
        users = torch.sort(torch.randperm(ds.num_users, generator=gen)[:eval_users]).values
    start, stop = comm.shard(users.numel())
    return users[start:stop]


def build_evaluator(t: TrainConfig, ds: Dataset, comm: Comm, items: np.ndarray | None = None) -> Evaluator:
    """Full-ranking evaluation at train.topk over this rank's users (train.eval_users: a seeded
    sample drawn by train.seed); `items` (N,) bool restricts the ground truth to those items
    (cold-start metrics)."""
    return Evaluator(ds, t.topk, t.eval_chunk, users=user_shard(ds, comm, t.eval_users, SeedStreams.of(t.seed).eval_users),
                     items=items)


def cold_placement(cfg: Config, ds: Dataset) -> bool:
    """Whether items without training interactions are placed by content (model.place_cold_items:
    on, off, or auto: on for a dataset made by `slifmr data hold-out`)."""
    mode = cfg.model.place_cold_items
    return mode == "on" or mode == "auto" and cold_items(ds) is not None


def trained_items(ds: Dataset) -> torch.Tensor:
    """(n,) int64: the items with at least one training interaction."""
    return torch.nonzero(torch.bincount(torch.from_numpy(ds.edges(TRAIN)[1]), minlength=ds.num_items) > 0).squeeze(1)


def places_cold_items(cfg: Config, ds: Dataset) -> bool:
    """Whether `cfg.variant` can rank an item that has no training interaction: only through
    content (a closed form registered with places_cold, or a trained model with the MM view over
    features or the KG view over linked items). The other closed forms and ID-only models score
    such an item from nothing."""
    if cfg.variant in CLOSED_FORMS:
        return CLOSED_FORMS[cfg.variant].places_cold
    m = cfg.model
    return bool(m.use_mm and ds.features) or bool(m.use_kg and ds.kg.shape[0] > 0 and ds.item_entity.shape[0] > 0)
