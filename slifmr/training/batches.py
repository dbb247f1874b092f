"""Where a step's batch comes from: one source per train.sampling mode, the only code that reads
it. A source is told each epoch's graphs (`begin_epoch`), turns the BPR triples of a step into
the model's `TrainingBatch` (`batch`), and lets go of the epoch (`end_epoch`):

    full      the whole epoch graph every step (`TrainingBatch.full`)
    neighbor  a two-hop subgraph around the batch's nodes (PyG's NeighborSampler interface)
    history   one sampled hop over a memory of historical embeddings refreshed each epoch
              (LTGNN / GAS, slifmr/sampling/history.py)

A new mode is a new source and a line in `build_batch_source`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from slifmr import log
from slifmr.config import TrainConfig
from slifmr.distributed.collectives import Comm
from slifmr.fanout import EdgeType, sampling_fanouts
from slifmr.model.graphs import EpochGraphs
from slifmr.model.propagate import Spmm
from slifmr.model.slifmr import SLIFMR, TrainingBatch, Triples


@dataclass
class FullBatches:
    """Every step propagates over the whole epoch graph."""

    device: torch.device | str
    graphs: EpochGraphs | None = None
    seconds: dict[str, float] = field(default_factory=lambda: {"sampling": 0.0, "memory": 0.0})

    def begin_epoch(self, model: SLIFMR, graphs: EpochGraphs, epoch: int) -> None:
        self.graphs, self.seconds = graphs, {"sampling": 0.0, "memory": 0.0}

    def before_step(self, step: int) -> None:
        """Work due before step `step` (0-based): nothing here."""

    def batch(self, triples: Triples, epoch: int, step: int, generator: torch.Generator) -> TrainingBatch:
        return TrainingBatch.full(self.graphs, triples, generator, self.device)

    def end_epoch(self) -> None:
        self.graphs = None


@dataclass
class NeighborBatches(FullBatches):
    """Each step propagates over a subgraph sampled around its users and items (fan-outs per
    hop and edge type, `slifmr.fanout`); drawn where the model is unless train.sample_device=cpu."""

    fanouts: dict[EdgeType, list[int]] = field(default_factory=dict)
    seed: int = 0
    rank: int = 0
    sample_device: torch.device | str = "cpu"
    subgraphs: Any = None

    def begin_epoch(self, model: SLIFMR, graphs: EpochGraphs, epoch: int) -> None:
        from slifmr.sampling.neighbor import BatchSubgraphs, to_hetero_data

        super().begin_epoch(model, graphs, epoch)
        self.subgraphs = BatchSubgraphs(to_hetero_data(graphs), self.fanouts, self.seed, self.rank,
                                        seed_sources_only=self.seeds_only(), device=self.sample_device)

    def seeds_only(self) -> bool:
        return False

    def batch(self, triples: Triples, epoch: int, step: int, generator: torch.Generator) -> TrainingBatch:
        start = time.perf_counter()
        sample = self.subgraphs.sample(*triples, epoch, step)
        batch = self.from_sample(sample, generator)
        self.seconds["sampling"] += time.perf_counter() - start
        return batch

    def from_sample(self, sample: Any, generator: torch.Generator) -> TrainingBatch:
        from slifmr.sampling.neighbor import sampled_batch

        return sampled_batch(sample, self.graphs, generator, self.device)

    def end_epoch(self) -> None:
        super().end_epoch()
        self.subgraphs = None  # released before inference and the next epoch's graphs (GBs at 10^6 users)


@dataclass
class HistoryBatches(NeighborBatches):
    """Each step samples one hop around its seeds and reads further nodes from the epoch's
    historical embeddings (the layer-wise product over A(t)), refreshed every
    train.history_refresh steps when > 0; train.history_grad chooses whose rows are current."""

    spmm: Spmm | None = None
    model: SLIFMR | None = None
    neighbour_grad: bool = False  # train.history_grad=sampled
    refresh_every: int = 0
    memory: Any = None

    def seeds_only(self) -> bool:
        return not self.neighbour_grad

    def begin_epoch(self, model: SLIFMR, graphs: EpochGraphs, epoch: int) -> None:
        super().begin_epoch(model, graphs, epoch)
        self.model = model
        start = time.perf_counter()
        self.memory = self._record()
        self.seconds["memory"] = time.perf_counter() - start

    def _record(self) -> Any:
        from slifmr.sampling.history import record_memory

        return record_memory(self.model, self.graphs, self.spmm)

    def before_step(self, step: int) -> None:
        if self.refresh_every > 0 and step > 0 and step % self.refresh_every == 0:
            self.memory = self._record()  # every rank at the same step: the layer-wise product is a collective

    def from_sample(self, sample: Any, generator: torch.Generator) -> TrainingBatch:
        from slifmr.sampling.history import history_batch

        return history_batch(sample, self.memory, self.graphs, generator, self.device, self.neighbour_grad)

    def end_epoch(self) -> None:
        super().end_epoch()
        self.memory = self.model = None


class BatchSource(Protocol):
    """What the loop asks of a source, and the seconds of its epoch's sampling and memory work."""

    seconds: dict[str, float]

    def begin_epoch(self, model: SLIFMR, graphs: EpochGraphs, epoch: int) -> None: ...
    def before_step(self, step: int) -> None: ...
    def batch(self, triples: Triples, epoch: int, step: int, generator: torch.Generator) -> TrainingBatch: ...
    def end_epoch(self) -> None: ...


def sparse_tables(t: TrainConfig) -> bool:
    """Whether the embedding tables train with sparse row gradients (and a row-wise Adam): a
    sampled step touches few rows."""
    return t.sampling != "full"


def build_batch_source(t: TrainConfig, view_layers: dict[str, int], comm: Comm, seed: int,
                       spmm: Spmm | None = None) -> BatchSource:
    """The batch source of train.sampling for a model with `view_layers` (view -> layers),
    training on `comm.device`; `seed` draws the neighbour samples, `spmm` is the history
    memory's product (layer-wise, sharded over the workers)."""
    if t.sampling == "full":
        return FullBatches(comm.device)
    from slifmr.sampling.neighbor import backend

    fanouts = sampling_fanouts(t.sampling, t.fanout, view_layers)
    if comm.is_main:
        log.info(f"{t.sampling} sampling: backend {backend()}, fan-outs " + (
            f"{t.fanout} per hop" if t.sampling == "neighbor" else f"{t.fanout.split(',')[0]}: one hop per step"))
    # by default sampled where the model is: on a GPU the CPU's sampler would dominate a
    # history step (RESULTS.md, "GPU path")
    where = dict(fanouts=fanouts, seed=seed, rank=comm.rank,
                 sample_device=comm.device if t.sample_device == "model" else "cpu")
    if t.sampling == "neighbor":
        return NeighborBatches(comm.device, **where)
    return HistoryBatches(comm.device, **where, spmm=spmm, neighbour_grad=t.history_grad == "sampled",
                          refresh_every=t.history_refresh)
