"""Neighbor-sampled subgraphs of the epoch's heterogeneous graph (architecture.md §4).

The epoch's fused graphs become one HeteroData (`to_hetero_data`): node types user, item and
entity; an edge (src, rel, dst) carries the message src -> dst with its normalised weight:

    (user, rates, item), (item, rated_by, user)   the user-item block of A(t)
    (item, correlates, item)                      the gamma * S(t) block of A(t)
    (item, similar, item)                         A_mm(t), the fused multimodal item graph
    (item|entity, kg, item|entity)                KG(t) with its attention weights (relations,
                                                  correlated_with included, fold into them)

`HeteroNeighborSampler` is PyG's NeighborSampler: with pyg-lib or torch-sparse installed it
samples with them; otherwise `_sample` runs a vectorised pure-PyTorch sampler with the same
output (HeteroSamplerOutput: seeds first, nodes and edges ordered by hop, uniform sampling
without replacement, edge ids in CSC order). `BatchSubgraphs` turns a BPR batch into the
sampled HeteroData, through PyG's `filter_hetero_data`; `SampledSubgraph` is the propagator
(slifmr.model.propagate) the model's views run on over it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch_geometric.typing
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.loader.utils import filter_hetero_data
from torch_geometric.sampler import HeteroSamplerOutput, NeighborSampler

from slifmr.fanout import CORRELATES, KG_TYPES, RATED_BY, RATES, SIMILAR, VIEW_EDGE_TYPES, EdgeType
from slifmr.model.graphs import EpochGraphs, crow_indices
from slifmr.model.slifmr import TrainingBatch
from slifmr.rng import derive_seed


def backend() -> str:
    """The sampling routine PyG will use: 'pyg-lib', 'torch-sparse' or slifmr's 'pytorch'."""
    if torch_geometric.typing.WITH_PYG_LIB:
        return "pyg-lib"
    if torch_geometric.typing.WITH_TORCH_SPARSE:
        return "torch-sparse"
    return "pytorch"


# ---------------------------------------------------------------------------- the graph


def _coo(adj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of a CSR matrix, row by row, where the matrix is."""
    crow, col = adj.crow_indices(), adj.col_indices()
    row = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow.diff())
    return row, col, adj.values()


def _put(data: HeteroData, etype: EdgeType, src: Tensor, dst: Tensor, weight: Tensor) -> None:
    data[etype].edge_index = torch.stack([src, dst])
    data[etype].edge_weight = weight.float()


def to_hetero_data(graphs: EpochGraphs) -> HeteroData:
    """The epoch's training graphs as one HeteroData: A(t) (after edge pruning), A_mm(t) and the
    attention over KG(t). Entry [r, c] of each matrix is the weight of the message c -> r, so
    reading the CSR matrices row by row lists every edge type's edges by destination, sources
    ascending: already in the sampler's CSC order (`HeteroNeighborSampler` sorts nothing). Built
    where the graphs are (the model's device), without a copy to the CPU."""
    m, n = graphs.num_users, graphs.num_items
    data = HeteroData()
    data["user"].num_nodes, data["item"].num_nodes = m, n
    r, c, w = _coo(graphs.train_adj)
    for etype, keep, src_off, dst_off in (
        (RATES, (r >= m) & (c < m), 0, m),
        (RATED_BY, (r < m) & (c >= m), m, 0),
        (CORRELATES, (r >= m) & (c >= m), m, m),
    ):
        _put(data, etype, c[keep] - src_off, r[keep] - dst_off, w[keep])
    if graphs.mm_adj is not None:
        r, c, w = _coo(graphs.mm_adj)
        _put(data, SIMILAR, c, r, w)
    if graphs.kg is not None:
        if graphs.kg_attention is None:
            raise RuntimeError("the KG view needs the epoch's attention: graphs = model.attend(graphs)")
        data["entity"].num_nodes = graphs.kg.num_nodes - n
        r, c, w = _coo(graphs.kg_attention.full)
        for s, _, d in KG_TYPES:
            keep = ((c < n) == (s == "item")) & ((r < n) == (d == "item"))
            _put(data, (s, "kg", d), c[keep] - (0 if s == "item" else n), r[keep] - (0 if d == "item" else n), w[keep])
    return data


# ---------------------------------------------------------------------------- the sampler


def csc(edge_index: Tensor, num_dst: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """PyG's CSC of edges (2, E) (source, destination) over `num_dst` destinations, built where
    the edges are: (colptr (num_dst + 1,), sources (E,) by destination, perm (E,) the edges'
    positions in that order, None when they already come by destination, as `to_hetero_data`'s
    do; then nothing is sorted). The pointers of PyG's `to_csc` and, per destination, the same
    sources; PyG sorts unstably, so its order among them may differ (and with it which
    neighbours a seeded draw takes)."""
    src, dst = edge_index
    perm = None
    if dst.numel() > 1 and not bool((dst[1:] >= dst[:-1]).all()):
        dst, perm = torch.sort(dst, stable=True)
        src = src[perm]
    return crow_indices(dst, num_dst), src, perm


def _sample_rows(start: Tensor, deg: Tensor, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniformly sample min(k, deg) of each row's entries without replacement (k < 0: all).

    start, deg: (R,) CSC offsets and degrees of the rows, on the generator's device. Returns
    (entry ids, row of each)."""
    dev = start.device
    take_all = deg <= k if k >= 0 else torch.ones_like(deg, dtype=torch.bool)
    ids, rows = [], []
    idx = torch.nonzero(take_all).flatten()
    if idx.numel():
        counts = deg[idx]
        row = torch.repeat_interleave(idx, counts)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        ids.append(start[row] + torch.arange(row.numel(), device=dev) - first)
        rows.append(row)
    mid = torch.nonzero(~take_all & (deg <= 4 * k)).flatten()
    if mid.numel():  # few entries: random keys over the padded row, keep the k smallest
        keys = torch.rand(mid.numel(), 4 * k, generator=generator, device=dev)
        keys[torch.arange(4 * k, device=dev) >= deg[mid, None]] = 2.0
        pick = torch.topk(keys, k, dim=1, largest=False).indices
        ids.append((start[mid, None] + pick).flatten())
        rows.append(mid.repeat_interleave(k))
    big = torch.nonzero(~take_all & (deg > 4 * k)).flatten()
    if big.numel():  # many entries: sequential draws, repeats rejected (uniform without replacement)
        draws = (torch.rand(big.numel(), 3 * k, generator=generator, device=dev) * deg[big, None]).long()
        order = torch.sort(draws, dim=1, stable=True)
        first = torch.ones_like(draws, dtype=torch.bool)
        first[:, 1:] = order.values[:, 1:] != order.values[:, :-1]
        keep = torch.zeros_like(first).scatter_(1, order.indices, first)
        keep &= torch.cumsum(keep, 1) <= k
        short = keep.sum(1) < k
        for r in torch.nonzero(short).flatten().tolist():  # rare: too many repeats
            keep[r] = False
            draws[r, :k] = torch.randperm(int(deg[big[r]]), generator=generator, device=dev)[:k]
            keep[r, :k] = True
        ids.append((start[big, None] + draws)[keep])
        rows.append(big.repeat_interleave(k))
    if not ids:
        return torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    return torch.cat(ids), torch.cat(rows)


class HeteroNeighborSampler(NeighborSampler):
    """PyG's NeighborSampler with a pure-PyTorch `_sample` where pyg-lib and torch-sparse are
    missing. Its randomness comes from `self.generator` (reseed it per batch).
    `seed_sources_only`: sampled sources that are not seeds are not numbered (their local index
    stays -1), for a caller that drops their edges (`BatchSubgraphs(seed_sources_only=True)`).
    `device`: where the CSC arrays live and the sampling runs. pyg-lib and torch-sparse sample
    on the CPU; on any other device the vectorised sampler runs there (a GPU draws a batch's
    sample in a few kernels instead of the CPU's tens of milliseconds: RESULTS.md, GPU)."""

    def __init__(self, data: HeteroData, num_neighbors: dict[EdgeType, list[int]], seed_sources_only: bool = False,
                 device: torch.device | str = "cpu"):
        # PyG's constructor builds the CSC on the CPU (sorting every edge list): it gets the
        # graph's node and edge types alone, and the CSC is built here, where the sampling runs
        skeleton = HeteroData()
        for t in data.node_types:
            skeleton[t].num_nodes = data[t].num_nodes
        for et in data.edge_types:
            skeleton[et].edge_index = torch.zeros(2, 0, dtype=torch.long)
        with warnings.catch_warnings():  # "without pyg-lib is deprecated": we bring our own
            warnings.simplefilter("ignore")
            super().__init__(skeleton, num_neighbors)
        self.device = torch.device(device)
        for et in data.edge_types:
            rel = self.to_rel_type[et]
            self.colptr_dict[rel], self.row_dict[rel], self.perm[et] = csc(
                data[et].edge_index.to(self.device), data[et[2]].num_nodes)
        self.generator = torch.Generator(self.device)
        self.seed_sources_only = seed_sources_only
        self._local = {t: torch.full((n,), -1, dtype=torch.long, device=self.device) for t, n in self.num_nodes.items()}
        self.in_degree = {self.to_edge_type[rel]: colptr.diff() for rel, colptr in self.colptr_dict.items()}

    def _sample(self, seed: dict[str, Tensor], seed_time: object = None, **kwargs: object) -> HeteroSamplerOutput:
        if backend() != "pytorch" and self.device.type == "cpu":
            return super()._sample(seed, seed_time, **kwargs)
        return self._sample_pytorch(seed)

    def _sample_pytorch(self, seed: dict[str, Tensor]) -> HeteroSamplerOutput:
        """Seeds (unique per type) first; hop by hop, every node added in the previous hop
        samples its in-edges of each edge type; new sources are appended (sorted by id)."""
        fanouts = self.num_neighbors.get_mapped_values(self.edge_types)
        dev = self.device
        nodes = {t: seed.get(t, torch.zeros(0, dtype=torch.long)).to(dev, torch.long) for t in self.node_types}
        for t, ids in nodes.items():
            self._local[t][ids] = torch.arange(ids.numel(), device=dev)
        num_nodes = {t: [ids.numel()] for t, ids in nodes.items()}
        out_row: dict[EdgeType, list[Tensor]] = {self.to_edge_type[r]: [] for r in self.colptr_dict}
        out_col = {et: [] for et in out_row}
        out_edge = {et: [] for et in out_row}
        num_edges: dict[EdgeType, list[int]] = {et: [] for et in out_row}
        frontier = {t: (0, ids.numel()) for t, ids in nodes.items()}
        try:
            for hop in range(self.num_neighbors.num_hops):
                before = {t: ids.numel() for t, ids in nodes.items()}
                for rel, colptr in self.colptr_dict.items():
                    et = self.to_edge_type[rel]
                    src_t, _, dst_t = et
                    lo, hi = frontier[dst_t]
                    k = fanouts[rel][hop]
                    if k == 0 or hi == lo:
                        num_edges[et].append(0)
                        continue
                    dst = nodes[dst_t][lo:hi]
                    eid, which = _sample_rows(colptr[dst], colptr[dst + 1] - colptr[dst], k, self.generator)
                    src = self.row_dict[rel][eid]
                    local = self._local[src_t]
                    if not self.seed_sources_only:
                        new = torch.unique(src[local[src] < 0])
                        local[new] = torch.arange(nodes[src_t].numel(), nodes[src_t].numel() + new.numel(), device=dev)
                        nodes[src_t] = torch.cat([nodes[src_t], new])
                    out_row[et].append(local[src])
                    out_col[et].append(which + lo)
                    out_edge[et].append(eid)
                    num_edges[et].append(eid.numel())
                frontier = {t: (before[t], nodes[t].numel()) for t in nodes}
                for t in nodes:
                    num_nodes[t].append(nodes[t].numel() - before[t])
        finally:
            for t, ids in nodes.items():
                self._local[t][ids] = -1

        def cat(parts: list[Tensor]) -> Tensor:
            return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=dev)

        return HeteroSamplerOutput(
            node=nodes, row={et: cat(v) for et, v in out_row.items()}, col={et: cat(v) for et, v in out_col.items()},
            edge={et: cat(v) for et, v in out_edge.items()}, num_sampled_nodes=num_nodes, num_sampled_edges=num_edges,
        )


class BatchSubgraphs:
    """The sampled subgraph of a BPR batch (users, positive items, negative items).

    `sample` returns a HeteroData holding, per node type, `n_id` (global ids, seeds first) and
    per edge type `edge_index` (local), `edge_weight` and `e_id`, plus `num_sampled_nodes_dict`
    / `num_sampled_edges_dict` per hop (as PyG's loaders do), and the batch as local indices:
    `data["user"].src_index`, `data["item"].dst_pos_index`, `data["item"].dst_neg_index`.
    Sampled edges' weights are rescaled by in-degree / sampled count per (edge type, target),
    so a sampled layer is an unbiased estimate of the full one, and equal to it when every
    neighbour is taken. Randomness is a pure function of (seed, epoch, rank, batch number).

    `seed_sources_only` (one-hop history sampling with train.history_grad=seeds, where a
    neighbour that is not a seed enters at its historical row and its edge carries nothing): the
    neighbours are drawn as usual and count in the rescaling, but only edges from seeds are kept
    and no other node is numbered, so the sample holds the seeds alone (same draws, same
    weights on the kept edges; less sampler time, RESULTS.md, "Scale: sampled and history training").

    `device`: where the graph is kept, the sampling runs and the sample is returned (the
    trainer passes the model's device). The draws are a pure function of the seed on each
    device type, but a GPU's differ from the CPU's.
    """

    def __init__(self, graph: HeteroData, fanout: dict[EdgeType, list[int]], seed: int, rank: int = 0,
                 seed_sources_only: bool = False, device: torch.device | str = "cpu"):
        self.graph = graph.to(device)  # once: the sampler's CSC is read off the moved edge lists
        self.sampler = HeteroNeighborSampler(self.graph, {et: fanout[et] for et in graph.edge_types},
                                             seed_sources_only, device)
        if seed_sources_only and self.sampler.num_neighbors.num_hops != 1:
            raise ValueError("seed_sources_only samples one hop")
        self.seed, self.rank = seed, rank

    def sample(self, users: Tensor, pos: Tensor, neg: Tensor, epoch: int, step: int) -> HeteroData:
        self.sampler.generator.manual_seed(derive_seed(self.seed, epoch, self.rank, step))
        users, pos, neg = (v.to(self.sampler.device) for v in (users, pos, neg))
        seed_users, user_index = torch.unique(users, return_inverse=True)
        seed_items, item_index = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        with torch.random.fork_rng():  # PyG's own samplers draw from the global generator
            torch.manual_seed(derive_seed(self.seed, epoch, self.rank, step))
            out = self.sampler._sample({"user": seed_users, "item": seed_items})
        # per edge type, how many edges were sampled into each destination (the rescaling's k_v)
        sampled_into = {et: torch.bincount(col, minlength=out.node[et[2]].numel()) for et, col in out.col.items()}
        if self.sampler.seed_sources_only:
            out = _seed_sources(out)
        data = filter_hetero_data(self.graph, out.node, out.row, out.col, out.edge, self.sampler.edge_permutation)
        for t, ids in out.node.items():
            data[t].n_id = ids
        for et in data.edge_types:
            perm = self.sampler.edge_permutation.get(et)
            data[et].e_id = out.edge[et] if perm is None else perm[out.edge[et]]
            col = data[et].edge_index[1]
            if col.numel():
                sampled = sampled_into[et][col]
                full = self.sampler.in_degree[et][data[et[2]].n_id[col]]
                data[et].edge_weight = data[et].edge_weight * (full / sampled).float()
        data.set_value_dict("num_sampled_nodes", out.num_sampled_nodes)
        data.set_value_dict("num_sampled_edges", out.num_sampled_edges)
        data["user"].src_index = user_index
        data["item"].dst_pos_index = item_index[: pos.numel()]
        data["item"].dst_neg_index = item_index[pos.numel():]
        return data


def _seed_sources(out: HeteroSamplerOutput) -> HeteroSamplerOutput:
    """A one-hop sample cut to its seeds: the edges whose source is a seed, every node that is
    not one dropped (seeds come first, so they keep their local indices)."""
    seeds = {t: n[0] for t, n in out.num_sampled_nodes.items()}
    keep = {et: (row >= 0) & (row < seeds[et[0]]) for et, row in out.row.items()}
    return HeteroSamplerOutput(
        node={t: ids[: seeds[t]] for t, ids in out.node.items()},
        row={et: out.row[et][k] for et, k in keep.items()}, col={et: out.col[et][k] for et, k in keep.items()},
        edge={et: out.edge[et][k] for et, k in keep.items()},
        num_sampled_nodes={t: [seeds[t]] + [0] * (len(n) - 1) for t, n in out.num_sampled_nodes.items()},
        num_sampled_edges={et: [int(k.sum())] for et, k in keep.items()},
    )


class SeedsFirst:
    """What the sampled propagators share: node features per type with the seeds first, so a
    layer's update and a view's output rows are prefixes."""

    num_seeds: dict[str, int]

    def apply(self, fn: Callable[[Tensor, Tensor], Tensor], x: dict[str, Tensor],
              neigh: dict[str, Tensor]) -> dict[str, Tensor]:
        return {t: fn(x[t][: neigh[t].shape[0]], neigh[t]) for t in neigh}

    def seeds(self, view: str, x: dict[str, Tensor], node_type: str) -> Tensor:
        return x[node_type][: self.num_seeds[node_type]]

    def user_mean(self, item_rows: Tensor) -> Tensor:
        raise RuntimeError("model.user_aux needs every training item of a user: not with sampled training")


class SampledSubgraph(SeedsFirst):
    """A propagator (slifmr.model.propagate) over a batch's sampled subgraph (`BatchSubgraphs`).

    Features are {node type: (nodes, d)}, nodes ordered by hop (seeds first). Layer `l` of L
    sends messages along the edges sampled in hops <= L - l into the nodes of hops < L - l
    (PyG orders nodes and edges by hop, so both are prefixes: `trim_to_layer`'s idea), so the
    last layer leaves the seeds. With every neighbour sampled the seeds' outputs equal the
    full graph's rows."""

    def __init__(self, data: HeteroData, device: torch.device | str = "cpu"):
        self.data = data
        self.n_id = {t: data[t].n_id.to(device) for t in data.node_types}
        self.num_seeds = {t: data[t].num_sampled_nodes[0] for t in data.node_types}

    def rows(self, node_type: str, table: Tensor, sparse: bool = False) -> Tensor:
        return F.embedding(self.n_id[node_type], table, sparse=sparse)

    def layout(self, view: str, x: dict[str, Tensor]) -> dict[str, Tensor]:
        return x

    def hop(self, view: str, x: dict[str, Tensor], layer: int, num_layers: int) -> dict[str, Tensor]:
        b, hop = self.data, num_layers - 1 - layer
        dim, dev = next(iter(x.values())).shape[1], next(iter(x.values())).device
        out = {t: torch.zeros(sum(b[t].num_sampled_nodes[: hop + 1]), dim, device=dev) for t in x}
        for et in VIEW_EDGE_TYPES[view]:
            if et not in b.edge_types or et[2] not in out:
                continue
            n = sum(b[et].num_sampled_edges[: hop + 1])
            src, dst = b[et].edge_index[:, :n].to(dev)
            out[et[2]] = out[et[2]].index_add(0, dst, x[et[0]][src] * b[et].edge_weight[:n].to(dev)[:, None])
        return out


def sampled_batch(data: HeteroData, graphs: EpochGraphs, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> TrainingBatch:
    """The training batch of a sampled subgraph (`BatchSubgraphs.sample`): the triples as rows of
    the seeds, InfoNCE over every seed item."""
    users, items = data["user"].n_id.to(device), data["item"].n_id.to(device)
    ui, pi, ni = (v.to(device) for v in (data["user"].src_index, data["item"].dst_pos_index, data["item"].dst_neg_index))
    graph = SampledSubgraph(data, device)
    return TrainingBatch(graph, ui, pi, ni, users[ui], items[pi], items[ni],
                         torch.arange(graph.num_seeds["item"], device=device), graphs.static.kg, generator)
