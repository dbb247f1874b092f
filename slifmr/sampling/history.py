"""One sampled hop per step over a memory of historical embeddings, with variance reduction
(train.sampling=history; architecture.md §4).

Two-hop neighbour sampling puts hundreds of edges into each interaction's sample, and its
cost grows with the graph (benchmarks/RESULTS.md, "Scale: sampled and history training"). Here a step samples one hop around
its seeds only, and reads everything further away from a memory refreshed once per epoch:

- `record_memory` runs the model's encode once over the whole epoch training graph, without
  autograd (the layer-wise product the epoch's inference uses), and keeps, for the i-th hop
  of each view, its input rows H_i (every node) and its full aggregation A H_i.
- `HistoryGraph` is the propagator of a step. Its hop i into a seed v is

      m_v = (A H_i)_v + sum_{u in sample(v)} (deg_v / k_v) A_vu (x_u - H_i[u])

  where x_u is the current input row of u (the trainable table row or projected feature at
  the first hop, the previous hop's output after it) where the step computes one, and H_i[u]
  otherwise (no correction). This is the variance-reduced estimator of LTGNN (Zhang et al.,
  "Linear-Time Graph Neural Networks for Scalable Recommendations", WWW 2024, eq. 10-11;
  VR-GCN, Chen et al., ICML 2018): unbiased over the sample, exact when every neighbour is
  taken or when the memory is fresh, and of small variance when the tables moved little since
  the memory was taken. Which rows are current (train.history_grad):
    sampled  every sampled node's at the first hop (LTGNN): the neighbours' rows are looked
             up and receive gradients;
    seeds    the seeds' only (GAS, Fey et al., ICML 2021, the default): every other node is at
             its historical embedding, so a step reads, updates and exchanges the batch's rows
             only, and only seed-to-seed edges carry a correction.

The sample itself is PyG's NeighborSampler interface (`BatchSubgraphs` with one hop per edge
type of the active views), so pyg-lib is used when installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from slifmr.fanout import VIEW_EDGE_TYPES, EdgeType
from slifmr.model.graphs import EpochGraphs, crow_indices
from slifmr.model.propagate import VIEW_NODE_TYPES, FullGraph, Spmm, spmm, whole
from slifmr.model.slifmr import SLIFMR, TrainingBatch
from slifmr.sampling.neighbor import SeedsFirst

HopKey = tuple[str, int]  # (view, i): the i-th hop that view's forward asks for


@dataclass(frozen=True)
class HopMemory:
    """One hop of the full forward: `inputs` (nodes, d) and `aggregated` = A inputs (rows, d),
    both in FullGraph's layout for the view (cf: users then items; kg: items then entities;
    mm: items); `aggregated` may hold a prefix of the rows (the KG's last hop: items only)."""

    inputs: Tensor
    aggregated: Tensor


class RecordingGraph(FullGraph):
    """The whole training graph (`FullGraph`, inference product `spmm`) whose hops are kept:
    {(view, i): HopMemory} in `memory`."""

    def __init__(self, graphs: EpochGraphs, spmm: Spmm):
        super().__init__(graphs, training=True, spmm=spmm)
        self.memory: dict[HopKey, HopMemory] = {}
        self._calls: dict[str, int] = {}

    def hop(self, view: str, x: Tensor, layer: int, num_layers: int) -> Tensor:
        out = super().hop(view, x, layer, num_layers)
        i = self._calls.get(view, 0)
        self._calls[view] = i + 1
        self.memory[(view, i)] = HopMemory(whole(x).detach(), out.detach())
        return out


@torch.no_grad()
def record_memory(model: SLIFMR, graphs: EpochGraphs, spmm: Spmm | None = None) -> dict[HopKey, HopMemory]:
    """The historical embeddings of every hop of `model.encode` over the epoch's training graph
    A(t) (and A_mm(t), KG(t)'s attention), from the current weights. `spmm`: the inference
    product (e.g. `layerwise_spmm`, sharded across workers); default torch.sparse.mm.

    Memory: per hop, its input (nodes, d) and aggregation, float32; LightGCN's hops share
    storage (a hop's output is the next one's input)."""
    graph = RecordingGraph(graphs, spmm or torch.sparse.mm)
    model.encode(graph)
    return graph.memory


def _offsets(graphs: EpochGraphs) -> dict[str, dict[str, int]]:
    """Where each node type's rows start in a view's FullGraph layout."""
    m, n = graphs.num_users, graphs.num_items
    return {"cf": {"user": 0, "item": m}, "kg": {"item": 0, "entity": n}, "mm": {"item": 0}}


def _csr(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from (row, col, value) entries without repeats: one stable sort by row
    (cheaper than coalescing, which sorts by (row, col) and merges repeats)."""
    order = torch.argsort(rows, stable=True)
    return torch.sparse_csr_tensor(crow_indices(rows, shape[0]), cols[order], values[order], shape)


class HistoryGraph(SeedsFirst):
    """The propagator of a step with train.sampling=history (see the module docstring).

    `data`: a one-hop sample (`BatchSubgraphs.sample`: per node type `n_id`, seeds first; per
    edge type `edge_index` (local) and `edge_weight` rescaled by in-degree / sampled count);
    `memory`: `record_memory` of the epoch; `neighbour_grad`: train.history_grad=sampled.
    Features are {node type: (nodes, d)}: the first hop's input holds every sampled node
    (`neighbour_grad`) or the seeds, later hops the seeds."""

    def __init__(self, data: HeteroData, memory: dict[HopKey, HopMemory], graphs: EpochGraphs,
                 device: torch.device | str = "cpu", neighbour_grad: bool = True):
        self.data, self.memory, self.device = data, memory, device
        self.neighbour_grad = neighbour_grad
        self.offsets = _offsets(graphs)
        self.n_id = {t: data[t].n_id.to(device) for t in data.node_types}
        self.num_seeds = {t: int(data[t].num_sampled_nodes[0]) for t in data.node_types}
        self._blocks: dict[tuple[EdgeType, bool], tuple[Tensor, Tensor] | None] = {}
        self._calls: dict[str, int] = {}

    def _block(self, et: EdgeType, seeds_only: bool) -> tuple[Tensor, Tensor] | None:
        """The sampled edges of `et` as a (seeds of dst, sources) CSR matrix of rescaled weights
        and its transpose, over every sampled source (first hop) or the seed sources only (later
        hops: other sources have no correction). Built once per step, shared by every layer and
        propagation of the view: one sparse product per hop instead of gathering a row per edge."""
        key = (et, seeds_only)
        if key not in self._blocks:
            src, dst = self.data[et].edge_index
            weight = self.data[et].edge_weight
            n_src = self.num_seeds[et[0]] if seeds_only else self.n_id[et[0]].numel()
            if seeds_only:
                keep = src < n_src
                src, dst, weight = src[keep], dst[keep], weight[keep]
            if src.numel() == 0:
                self._blocks[key] = None
            else:
                shape = (self.num_seeds[et[2]], n_src)
                weight = weight.float()
                self._blocks[key] = (_csr(dst, src, weight, shape).to(self.device),
                                     _csr(src, dst, weight, shape[::-1]).to(self.device))
        return self._blocks[key]

    def rows(self, node_type: str, table: Tensor, sparse: bool = False) -> Tensor:
        # seeds only (GAS): the other sampled nodes keep their historical rows, so they are not
        # looked up (nor projected, nor updated) and only seed-to-seed edges carry a correction
        ids = self.n_id[node_type] if self.neighbour_grad else self.n_id[node_type][: self.num_seeds[node_type]]
        return torch.nn.functional.embedding(ids, table, sparse=sparse)

    def layout(self, view: str, x: dict[str, Tensor]) -> dict[str, Tensor]:
        return x

    def _memory_rows(self, view: str, rows: Tensor, node_type: str, ids: Tensor) -> Tensor:
        return rows[self.offsets[view][node_type] + ids]

    def hop(self, view: str, x: dict[str, Tensor], layer: int, num_layers: int) -> dict[str, Tensor]:
        i = self._calls.get(view, 0)
        self._calls[view] = i + 1
        mem = self.memory[(view, i)]
        out: dict[str, Tensor] = {}
        for t in VIEW_NODE_TYPES[view]:
            if t not in self.n_id or self.num_seeds[t] == 0 or self.offsets[view][t] >= mem.aggregated.shape[0]:
                continue
            out[t] = self._memory_rows(view, mem.aggregated, t, self.n_id[t][: self.num_seeds[t]])
        # x_u - H[u] for the sources whose current rows exist: every sampled node at the first
        # hop, the seeds after it (the others have x_u = H[u])
        diff = {t: rows - self._memory_rows(view, mem.inputs, t, self.n_id[t][: rows.shape[0]]) for t, rows in x.items()}
        for et in VIEW_EDGE_TYPES[view]:
            src_t, _, dst_t = et
            if et not in self.data.edge_types or dst_t not in out or src_t not in diff:
                continue
            block = self._block(et, seeds_only=diff[src_t].shape[0] < self.n_id[src_t].numel())
            if block is not None:
                out[dst_t] = out[dst_t] + spmm(*block, diff[src_t])
        return out


def history_batch(data: HeteroData, memory: dict[HopKey, HopMemory], graphs: EpochGraphs,
                  generator: torch.Generator, device: torch.device | str = "cpu",
                  neighbour_grad: bool = True) -> TrainingBatch:
    """The training batch of a one-hop sample (`BatchSubgraphs.sample` with `history_fanouts`)
    over the epoch's memory: the triples as rows of the seeds, InfoNCE over every seed item."""
    graph = HistoryGraph(data, memory, graphs, device, neighbour_grad)
    users, items = graph.n_id["user"], graph.n_id["item"]
    ui, pi, ni = (v.to(device) for v in (data["user"].src_index, data["item"].dst_pos_index, data["item"].dst_neg_index))
    return TrainingBatch(graph, ui, pi, ni, users[ui], items[pi], items[ni],
                         torch.arange(graph.num_seeds["item"], device=device), graphs.static.kg, generator)
