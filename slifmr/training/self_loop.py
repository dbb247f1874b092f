"""SLIF-MR's self-loop (docs/architecture.md §1): the item representations Z(t-1) an epoch ends
with become the next fusion's input. Each fusion epoch searches Z(t-1)'s neighbours once: the
first model.k_corr make the item-item graph S(t), and the ridge head (ridge_head.py) takes the
first `search_k` for its regressors; then the epoch's graphs A(t), A_mm(t), KG(t) and its
attention are built."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from slifmr.config import ModelConfig
from slifmr.distributed.collectives import Comm
from slifmr.distributed.knn import KnnSearch
from slifmr.model.graphs import (
    EpochGraphs,
    Graph,
    KnnFn,
    StaticGraphs,
    correlation_from_neighbours,
    epoch_graphs,
    fusion_due,
    to_device,
)
from slifmr.model.slifmr import SLIFMR, Representations
from slifmr.training.ridge_head import row_sharding

__all__ = ["SelfLoop", "row_sharding"]


class SelfLoop:
    """The self-loop's state and its per-epoch graphs. Owns Z(t-1) (N, d), S(t) (edge index and
    weights), the epoch of the last fusion, the fusion search's neighbours `z_neighbours`
    (N, max(k_corr, search_k)) of the epoch that fused (None otherwise) and the previous epoch's
    graphs (what is not rebuilt is reused). `state_dict` is what a checkpoint keeps of it."""

    def __init__(self, static: StaticGraphs, cfg: ModelConfig, knn: KnnFn, comm: Comm):
        self.static, self.cfg, self.knn, self.comm = static, cfg, knn, comm
        # the epoch's graphs are built where training runs, from static graphs kept there (the
        # same object on the CPU)
        self.static_on_device = static.to(comm.device)
        self.last_z: Tensor | None = None
        self.corr: Graph | None = None
        self.corr_epoch: int | None = None
        self.z_neighbours: Tensor | None = None
        self.graphs: EpochGraphs | None = None

    @classmethod
    def build(cls, cfg: ModelConfig, static: StaticGraphs, comm: Comm, seed: int, knn: KnnFn | None = None) -> SelfLoop:
        """The self-loop of the model section `cfg` (its fusion keys: k_corr, gamma, beta,
        refresh_every, ...), its kNN search model.knn over `comm`'s workers (`knn` replaces it;
        `seed` draws the approximate search's recall check)."""
        return cls(static, cfg, knn or KnnSearch(comm, cfg.knn, seed=seed), comm)

    def graphs_for(self, model: SLIFMR, epoch: int, generator: torch.Generator,
                   search_k: int = 0) -> tuple[EpochGraphs, dict[str, float]]:
        """Epoch `epoch`'s graphs with their KG attention, and the seconds of the kNN search
        ({"knn": s}). A fusion is due every model.refresh_every epochs once Z(t-1) exists; its
        search returns max(k_corr, `search_k`) neighbours per item, kept as `z_neighbours`."""
        start, m = time.perf_counter(), self.cfg
        seconds = {"knn": 0.0}
        self.z_neighbours = None
        if fusion_due(m, epoch) and self.last_z is not None:
            nbrs, sims = self.knn(self.last_z.detach(), max(m.k_corr, search_k))
            self.corr = to_device(correlation_from_neighbours(nbrs[:, : m.k_corr], sims[:, : m.k_corr], m.corr_binary),
                                  self.comm.device)  # the faiss search answers on the CPU
            self.corr_epoch = epoch
            self.z_neighbours = nbrs
            seconds["knn"] = time.perf_counter() - start
        graphs = epoch_graphs(self.static_on_device, self.corr, m, generator, self.comm.device, self.graphs)
        return (graphs if graphs.kg_attention is not None else model.attend(graphs)), seconds

    def end_epoch(self, graphs: EpochGraphs, reps: Representations) -> None:
        """Keep the epoch's graphs (reused next epoch) and its items Z(t), the next fusion's input."""
        self.graphs, self.last_z = graphs, reps.items.clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_z": self.last_z,
            "corr": None if self.corr is None else {"edge_index": self.corr[0], "weight": self.corr[1]},
            "corr_epoch": self.corr_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_z = None if state.get("last_z") is None else state["last_z"].to(self.comm.device)
        corr = state.get("corr")
        self.corr = None if corr is None else to_device((corr["edge_index"], corr["weight"]), self.comm.device)
        self.corr_epoch = state.get("corr_epoch")

    def best_state(self) -> dict[str, Any]:
        """What best/ keeps to rebuild the epoch's graphs: S(t)."""
        return {"corr": self.state_dict()["corr"]}
