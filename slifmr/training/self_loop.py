"""SLIF-MR's self-loop (docs/architecture.md §1): the item representations Z(t-1) an epoch ends
with become the next fusion's input. Each fusion epoch searches Z(t-1)'s neighbours once: the
first model.k_corr make the item-item graph S(t), the first model.ridge_k are the ridge head's
regressors N_j, and W(t) is solved on them; then the epoch's graphs A(t), A_mm(t), KG(t) and its
attention are built. After the epoch's steps, validation chooses the head's blend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from slifmr import log
from slifmr.config import Config, ModelConfig
from slifmr.data.format import VALID
from slifmr.distributed.collectives import Comm
from slifmr.distributed.knn import KnnSearch
from slifmr.evaluation import Evaluator
from slifmr.model.cooc_ridge import cooccurrence_neighbours
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
from slifmr.model.propagate import RowSharding
from slifmr.model.ridge import first_distinct, ridge_weights
from slifmr.model.slifmr import SLIFMR, Representations


def row_sharding(comm: Comm) -> RowSharding | None:
    """Each worker's block of rows and the all-gather that joins them (None in one process)."""
    return (comm.shard, comm.all_gather_rows) if comm.world_size > 1 else None


class SelfLoop:
    """The self-loop's state and its per-epoch graphs. Owns Z(t-1) (N, d), S(t) (edge index and
    weights), the epoch of the last fusion, the ridge head's neighbourhoods (N, ridge_k) and W(t)^T
    (N, N) CSR, the blend validation chose, and the previous epoch's graphs (what is not rebuilt
    is reused). `state_dict` is what a checkpoint keeps of it."""

    def __init__(self, static: StaticGraphs, cfg: ModelConfig, knn: KnnFn, comm: Comm):
        self.static, self.cfg, self.knn, self.comm = static, cfg, knn, comm
        # the epoch's graphs are built where training runs, from static graphs kept there (the
        # same object on the CPU); the head's co-occurrence and solves read `static`
        self.static_on_device = static.to(comm.device)
        self.sharding = row_sharding(comm)
        self.last_z: Tensor | None = None
        self.corr: Graph | None = None
        self.corr_epoch: int | None = None
        self.neighbours: Tensor | None = None  # (N, ridge_k): the ridge head's regressors N_j (`_regressors`)
        self.item_ridge: Tensor | None = None  # W(t)^T solved on them (not saved: the neighbours give it back)
        self.ridge_weight: float | None = None  # the blend of the last validation (model.ridge_blend)
        self.graphs: EpochGraphs | None = None
        # the most co-occurring items (model.ridge_neighbours cooc / union): set-up, not fusion
        # work, computed once before training (the training interactions do not change), each
        # worker its block of items; the head is part of the self-loop, so without it there is none
        self.cooc: Tensor | None = None
        if cfg.self_loop and cfg.ridge_weight > 0 and cfg.ridge_neighbours != "z":
            start = time.perf_counter()
            self.cooc = cooccurrence_neighbours(static.ui_edges, static.num_users, static.num_items, cfg.ridge_k,
                                                self.sharding).int()
            if comm.is_main:
                log.info(f"the ridge head's co-occurrence neighbourhoods: {time.perf_counter() - start:.1f} s (once per run)")

    @classmethod
    def build(cls, cfg: Config, static: StaticGraphs, comm: Comm, seed: int, knn: KnnFn | None = None) -> SelfLoop:
        """The self-loop of `cfg.model`, its kNN search model.knn over `comm`'s workers (`knn`
        replaces it; `seed` draws the approximate search's recall check)."""
        return cls(static, cfg.model, knn or KnnSearch(comm, cfg.model.knn, seed=seed), comm)

    def graphs_for(self, model: SLIFMR, epoch: int, generator: torch.Generator) -> tuple[EpochGraphs, dict[str, float]]:
        """Epoch `epoch`'s graphs with their KG attention, and the seconds of the kNN search and
        of the ridge solves ({"knn": s, "ridge": s}). A fusion is due every model.refresh_every
        epochs once Z(t-1) exists; each worker solves its block of W(t), one all-gather joins it."""
        start, m = time.perf_counter(), self.cfg
        seconds = {"knn": 0.0, "ridge": 0.0}
        if fusion_due(m, epoch) and self.last_z is not None:
            # one search serves S(t) (the first k_corr neighbours) and the ridge head (ridge_k)
            head_searches = m.ridge_weight > 0 and m.ridge_neighbours != "cooc"
            nbrs, sims = self.knn(self.last_z.detach(), max(m.k_corr, m.ridge_k) if head_searches else m.k_corr)
            self.corr = to_device(correlation_from_neighbours(nbrs[:, : m.k_corr], sims[:, : m.k_corr], m.corr_binary),
                                  self.comm.device)  # the faiss search answers on the CPU
            self.corr_epoch = epoch
            seconds["knn"] = time.perf_counter() - start
            if m.ridge_weight > 0:
                fixed = m.ridge_neighbours == "cooc" and self.item_ridge is not None  # solved once: N_j never change
                self.neighbours = self.cooc if m.ridge_neighbours == "cooc" else self._regressors(nbrs[:, : m.ridge_k].cpu().int())
                if not fixed:
                    self.item_ridge = self._solve(self.neighbours)
                seconds["ridge"] = time.perf_counter() - start - seconds["knn"]
            else:
                self.neighbours = None
        elif self.last_z is None and self.cooc is not None and self.item_ridge is None:
            # before the first fusion there is no trained Z to search, but co-occurrence needs
            # none: the first epochs' head regresses on the most co-occurring items alone
            self.neighbours = self.cooc
            self.item_ridge = self._solve(self.neighbours)
            seconds["ridge"] = time.perf_counter() - start
        graphs = epoch_graphs(self.static_on_device, self.corr, m, generator, self.comm.device, self.graphs, self.neighbours,
                              self.sharding, item_ridge=self.item_ridge)
        self.item_ridge = graphs.item_ridge  # solved by epoch_graphs after a resume
        return (graphs if graphs.kg_attention is not None else model.attend(graphs)), seconds

    def _solve(self, neighbours: Tensor) -> Tensor:
        """W(t)^T (N, N) CSR on the regressors `neighbours` (N, ridge_k): each worker solves its
        block of items on the run's device, one all-gather joins them."""
        s = self.static
        return ridge_weights(s.ui_edges, s.num_users, s.num_items, neighbours, self.cfg.ridge_l2, s.item_gram,
                             self.sharding, self.comm.device)

    def _regressors(self, z_neighbours: Tensor) -> Tensor:
        """The head's N_j (N, ridge_k) int32 from Z(t-1)'s nearest neighbours under
        model.ridge_neighbours z (those) or union (half the co-occurring items, then Z's, then
        more co-occurring ones). Before the first fusion, cooc and union regress on the
        co-occurring items alone (`graphs_for`)."""
        if self.cooc is None:  # model.ridge_neighbours z
            return z_neighbours
        half = (z_neighbours.shape[1] + 1) // 2
        candidates = torch.cat([self.cooc[:, :half], z_neighbours, self.cooc[:, half:]], 1)
        return first_distinct(candidates, z_neighbours.shape[1])

    def end_epoch(self, graphs: EpochGraphs, reps: Representations) -> None:
        """Keep the epoch's graphs (reused next epoch) and its items Z(t), the next fusion's input."""
        self.graphs, self.last_z = graphs, reps.items.clone()

    def validate(self, evaluator: Evaluator, reps: Representations, stop_metric: str,
                 all_reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """The validation metrics of the epoch, its blend chosen (`choose_blend`) and kept."""
        self.ridge_weight, valid = choose_blend(evaluator, reps, self.cfg, stop_metric, all_reduce)
        return valid

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_z": self.last_z,
            "corr": None if self.corr is None else {"edge_index": self.corr[0], "weight": self.corr[1]},
            "neighbours": self.neighbours,
            "corr_epoch": self.corr_epoch,
            "ridge_weight": self.ridge_weight,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_z = None if state.get("last_z") is None else state["last_z"].to(self.comm.device)
        corr = state.get("corr")
        self.corr = None if corr is None else to_device((corr["edge_index"], corr["weight"]), self.comm.device)
        self.neighbours = state.get("neighbours")
        self.corr_epoch = state.get("corr_epoch")
        self.ridge_weight = state.get("ridge_weight")

    def best_state(self) -> dict[str, Any]:
        """What best/ keeps to rebuild the epoch's graphs and scorer: S(t), the neighbourhoods, the blend."""
        state = self.state_dict()
        return {"corr": state["corr"], "neighbours": state["neighbours"], "ridge_weight": state["ridge_weight"]}


def choose_blend(evaluator: Evaluator, reps: Representations, cfg: ModelConfig, stop_metric: str,
                 all_reduce: Callable[[Tensor], Tensor] | None = None) -> tuple[float | None, dict[str, float]]:
    """The ridge head's blend chosen on validation: the validation metrics of the ranking with
    each weight of `cfg.ridge_blend` and `cfg.ridge_weight`, and the weight whose `stop_metric` is highest (the first
    of equals). Returns (that weight, its validation metrics); (None, the metrics of `reps` as
    they are) without the head or a blend grid. Reads the validation split only."""
    if not reps.has_head or reps.ridge_weight <= 0 or not cfg.ridge_blend:
        return None, evaluator.evaluate(reps.full_scores, VALID, all_reduce)
    weights = list(cfg.ridge_blend) + ([reps.ridge_weight] if reps.ridge_weight not in cfg.ridge_blend else [])
    scores = evaluator.evaluate_candidates(lambda users: reps.blends(users, weights), len(weights), VALID, all_reduce)
    best = max(range(len(weights)), key=lambda i: (scores[i][stop_metric], -i))
    return weights[best], scores[best]
