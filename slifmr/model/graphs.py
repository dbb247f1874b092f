"""The three graphs of an epoch and their fusion with the correlation graph S(t) (architecture.md §1).

Graphs are values: `StaticGraphs` (built once from the dataset) and `EpochGraphs` (built per
epoch by the pure function `epoch_graphs` from the static graphs, S(t), the config and the
epoch's generator). The model's forward takes them as an argument and keeps none.

All graphs are built from TRAINING edges only. Sparse matrices are torch CSR tensors;
edge lists are (2, E) `edge_index` with (E,) weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from slifmr.config import ModelConfig
from slifmr.data.format import Dataset
from slifmr.data.graphs import (
    knn,
    knn_edges,
    modality_graph,
    sym_norm,
    symmetric_graph,
    train_edges,
    training_matrix,
)
from slifmr.pyg import coalesce

# how layer-wise inference and the ridge head's solves split rows across workers: (shard(n) -> [start, stop),
# all_gather_rows(block, n) -> (n, ...)); None = one process does every row
RowSharding = tuple[Callable[[int], tuple[int, int]], Callable[[Tensor, int], Tensor]]


# torch flags CSR tensors as beta and warns about skipped invariant checks on every build;
# our CSR tensors are built row by row from sorted, repeat-free entries, so both warnings are noise here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

Graph = tuple[Tensor, Tensor]  # (edge_index (2, E), weight (E,))
KnnFn = Callable[[Tensor, int], tuple[Tensor, Tensor]]  # (Z (N, d), k) -> (nbrs, sims) for all N rows


def on_device(tensor: Tensor, device: torch.device | str) -> bool:
    """Whether `tensor` is on `device`; a device without an index ("cuda") means the current one
    of its type, as `.to` reads it (torch.device("cuda") != torch.device("cuda:0"))."""
    want = torch.device(device)
    return tensor.device.type == want.type and (want.index is None or tensor.device.index == want.index)


def to_csr(edge_index: Tensor, weight: Tensor, n_rows: int, n_cols: int | None = None) -> Tensor:
    """The (n_rows, n_cols) CSR matrix with weight (E,) at each edge (2, E) (row, col); repeated
    edges add. Edges already listed row by row without repeats (coalesced: PyG's `coalesce`
    output) are taken as they are; others are sorted (skipping the sort is most of
    the cost of building the matrix when the edges come coalesced)."""
    n_cols = n_cols or n_rows
    rows, cols = edge_index
    keys = rows * n_cols + cols
    if keys.numel() < 2 or bool((keys[1:] > keys[:-1]).all()):
        return torch.sparse_csr_tensor(crow_indices(rows, n_rows), cols, weight.float(), (n_rows, n_cols))
    return torch.sparse_coo_tensor(edge_index, weight.float(), (n_rows, n_cols)).coalesce().to_sparse_csr()


def transpose_csr(adj: Tensor) -> Tensor:
    """adj^T as CSR: a training step's backward multiplies by it (`slifmr.model.propagate.spmm`),
    so it is built once per graph rather than by torch's sparse backward on every step. One
    stable sort of the column indices: within a column the rows stay in order (cheaper than
    torch's COO transpose and coalesce, which sort by both indices)."""
    crow, col = adj.crow_indices(), adj.col_indices()
    rows = torch.repeat_interleave(torch.arange(adj.shape[0], device=crow.device), crow.diff())
    order = torch.argsort(col, stable=True)
    return torch.sparse_csr_tensor(crow_indices(col, adj.shape[1]), rows[order], adj.values()[order],
                                   (adj.shape[1], adj.shape[0]))


def crow_indices(rows: Tensor, n_rows: int) -> Tensor:
    """(n_rows + 1,) CSR row pointers of entries with these row ids (E,), listed row by row."""
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return crow


@dataclass(frozen=True)
class CsrPattern:
    """The sparsity pattern of an (R, C) CSR matrix over a fixed edge list, so that matrices with
    new edge weights are built without sorting: `slot` (E,) is each edge's position among the
    coalesced entries (edges on the same (row, column) share one, and their weights add, as
    `to_csr` does), `crow` (R + 1,) and `col` (nnz,) the CSR structure."""

    slot: Tensor
    crow: Tensor
    col: Tensor
    shape: tuple[int, int]

    @staticmethod
    def of(edge_index: Tensor, n_rows: int, n_cols: int) -> CsrPattern:
        """The pattern of the (n_rows, n_cols) matrix with an entry at every edge (2, E) (row, col)."""
        keys, slot = torch.unique(edge_index[0] * n_cols + edge_index[1], return_inverse=True)
        rows = torch.div(keys, n_cols, rounding_mode="floor")
        return CsrPattern(slot, crow_indices(rows, n_rows), keys - rows * n_cols, (n_rows, n_cols))

    def matrix(self, weight: Tensor) -> Tensor:
        """The CSR matrix with the edges' weights (E,), on weight's device."""
        dev = weight.device
        values = torch.zeros(self.col.numel(), dtype=torch.float32, device=dev).index_add_(
            0, self.slot.to(dev), weight.float())
        return torch.sparse_csr_tensor(self.crow.to(dev), self.col.to(dev), values, self.shape)


def csr_rows(adj: Tensor, start: int, stop: int) -> Tensor:
    """Rows [start, stop) of a CSR matrix as a CSR matrix (no copy of the other rows)."""
    crow = adj.crow_indices()
    lo, hi = int(crow[start]), int(crow[stop])
    return torch.sparse_csr_tensor(crow[start : stop + 1] - lo, adj.col_indices()[lo:hi], adj.values()[lo:hi],
                                   (stop - start, adj.shape[1]))


def correlation_graph(z: Tensor, k: int, binary: bool = False, knn_fn: KnnFn | None = None) -> Graph:
    """S(t): top-k cosine neighbours of the fused item representations z (N, d), self
    excluded, symmetrised, D^-1/2 S D^-1/2 normalised (`knn_fn`: another search, e.g. the
    sharded `KnnSearch`; default exact, in-process). The training loop runs the search itself,
    once for S(t) and the ridge head, and calls `correlation_from_neighbours`."""
    nbrs, sims = (knn_fn or knn)(z.detach(), k)
    return correlation_from_neighbours(nbrs, sims, binary)


def correlation_from_neighbours(nbrs: Tensor, sims: Tensor, binary: bool = False) -> Graph:
    """S(t) from each item's top-k neighbours (N, k) and their cosine similarities (N, k), built
    where the search left them."""
    return symmetric_graph(*knn_edges(nbrs, sims), nbrs.shape[0], binary)


def user_item_adjacency(
    ui_edges: Tensor, num_users: int, num_items: int, corr: Graph | None = None, gamma: float = 0.0
) -> Tensor:
    """A(t) = [[0, R], [R^T, gamma S(t)]], symmetrically normalised, as (M+N, M+N) CSR."""
    u, i = ui_edges
    rows = [torch.cat([u, i + num_users])]
    cols = [torch.cat([i + num_users, u])]
    vals = [torch.ones(2 * u.numel(), device=u.device)]
    if corr is not None and gamma > 0:
        (a, b), w = corr
        rows.append(a + num_users)
        cols.append(b + num_users)
        vals.append(gamma * w)
    n = num_users + num_items
    ei = torch.stack([torch.cat(rows), torch.cat(cols)])
    ei, w = coalesce(ei, torch.cat(vals), num_nodes=n)
    return to_csr(ei, sym_norm(ei, w, n), n)


def degree_sensitive_dropout(ui_edges: Tensor, num_users: int, num_items: int, drop: float, generator: torch.Generator) -> Tensor:
    """FREEDOM's edge pruning: keep (1 - drop) of the edges, sampled with probability
    proportional to 1 / sqrt(d_u d_i), so edges between hubs go first. `generator` is a CPU
    generator: the draw runs on the CPU (E probabilities there and E' ids back), so every
    device prunes the same edges (the probabilities' rsqrt is the CPU's too)."""
    if drop <= 0:
        return ui_edges
    u, i = ui_edges
    du = torch.bincount(u, minlength=num_users).float()
    di = torch.bincount(i, minlength=num_items).float()
    p = (du[u] * di[i]).cpu().rsqrt()
    keep = max(1, int(u.numel() * (1.0 - drop)))
    idx = torch.multinomial(p, keep, replacement=False, generator=generator)
    return ui_edges[:, idx.to(u.device)]


def denoise_ui_edges(ui_edges: Tensor, corr: Graph | None, num_items: int, share: float) -> Tensor:
    """S(t) as a denoiser: per user u, the floor(share * deg(u)) training
    edges (u, i) that S(t) supports least leave the propagation graphs.

    The support of (u, i) is sum_j w_ij over S(t)'s neighbours j of i that u also interacted with:
    how much Z(t-1) finds i like the rest of u's history, (X S(t))_ui for the interaction matrix
    X. Ties (often: zero support) are broken by a fixed random order of the edges, not by their
    order in the dataset (which would drop each user's oldest interactions first). ui_edges:
    (2, E) user, item; corr: S(t), symmetric (edge_index, weight), on ui_edges' device; returns
    (2, E') with E' <= E. Memory: E x (S(t)'s mean degree) index pairs."""
    if share <= 0 or corr is None or ui_edges.shape[1] == 0:
        return ui_edges
    u, i = ui_edges
    dev = u.device
    known = torch.sort(u * num_items + i).values
    (a, b), w = corr
    order = torch.argsort(a, stable=True)
    b, w = b[order], w[order]
    ptr = crow_indices(a, num_items)
    fan = ptr[i + 1] - ptr[i]
    edge = torch.repeat_interleave(torch.arange(u.numel(), device=dev), fan)
    slot = ptr[i][edge] + torch.arange(edge.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(fan, 0) - fan, fan)
    query = u[edge] * num_items + b[slot]
    at = torch.searchsorted(known, query).clamp_max(known.numel() - 1)
    support = torch.zeros(u.numel(), device=dev).index_add_(0, edge, w[slot].float() * (known[at] == query))
    # the ties' order, drawn on the CPU: the same on every device (on a GPU the supports' sums
    # may differ in their last bits, as atomic float adds do)
    shuffled = torch.randperm(u.numel(), generator=torch.Generator().manual_seed(0)).to(dev)
    by_support = shuffled[torch.argsort(support[shuffled], stable=True)]
    ranked = by_support[torch.argsort(u[by_support], stable=True)]  # per user, least supported first
    degree = torch.bincount(u)
    first = torch.cumsum(degree, 0) - degree
    user = u[ranked]
    drop = (torch.arange(u.numel(), device=dev) - first[user]) < (degree[user].double() * share).floor()
    keep = torch.ones(u.numel(), dtype=torch.bool, device=dev)
    keep[ranked[drop]] = False
    return ui_edges[:, keep]


def fuse_item_graph(base: Graph | None, corr: Graph | None, beta: float, n: int) -> Graph | None:
    """A_mm(t) = (1 - beta) A_mm + beta S(t)."""
    if corr is None or beta <= 0:
        return base
    if base is None:
        return corr[0], corr[1] * beta
    ei = torch.cat([base[0], corr[0]], 1)
    w = torch.cat([(1 - beta) * base[1], beta * corr[1]])
    return coalesce(ei, w, num_nodes=n, reduce="sum")


@dataclass(frozen=True)
class RelationBlock:
    """The edges of one relation r in KGAT's attention, with the distinct heads and tails they
    touch, so that W_r e_h + e_r and its tanh are computed once per (head, relation) and W_r e_t
    once per (tail, relation), not once per edge."""

    relation: int
    edges: Tensor  # (E_r,) positions in the KG's edge list
    heads: Tensor  # (H_r,) distinct head nodes
    head_of_edge: Tensor  # (E_r,) row of `heads` per edge
    tails: Tensor  # (T_r,) distinct tail nodes
    tail_of_edge: Tensor  # (E_r,) row of `tails` per edge


@dataclass(frozen=True)
class KGAttentionLayout:
    """Everything KGAT's attention over one KG needs besides the weights, built once per KG(t)
    (`KnowledgeGraph.attention_layout`): the attention is recomputed twice an epoch on the same
    edges, and sorting them each time cost more than the arithmetic. `relations`: one block per
    relation with edges; `full`, `from_items`, `from_entities` and their transposes: the
    patterns of `KGAttention`'s matrices; `from_item_edges`, `from_entity_edges`: the edges from
    an item or an entity into an item (the entries of `from_items`, `from_entities`)."""

    relations: list[RelationBlock]
    full: CsrPattern
    full_t: CsrPattern
    from_items: CsrPattern
    from_items_t: CsrPattern
    from_entities: CsrPattern
    from_entities_t: CsrPattern
    from_item_edges: Tensor
    from_entity_edges: Tensor

    @staticmethod
    def of(heads: Tensor, relations: Tensor, tails: Tensor, num_nodes: int, num_items: int) -> KGAttentionLayout:
        order = torch.argsort(relations, stable=True)
        num_relations = int(relations.max()) + 1 if relations.numel() else 0
        bounds = torch.searchsorted(relations[order], torch.arange(num_relations + 1, device=relations.device)).tolist()
        blocks = []
        for r in range(len(bounds) - 1):
            edges = order[bounds[r] : bounds[r + 1]]
            if edges.numel():
                h, head_of = torch.unique(heads[edges], return_inverse=True)
                t, tail_of = torch.unique(tails[edges], return_inverse=True)
                blocks.append(RelationBlock(r, edges, h, head_of, t, tail_of))
        n, e = num_items, num_nodes - num_items
        into_item = heads < n
        from_items = torch.nonzero(into_item & (tails < n)).squeeze(1)
        from_entities = torch.nonzero(into_item & (tails >= n)).squeeze(1)
        ii = torch.stack([heads[from_items], tails[from_items]])
        ie = torch.stack([heads[from_entities], tails[from_entities] - n])
        return KGAttentionLayout(
            blocks, CsrPattern.of(torch.stack([heads, tails]), num_nodes, num_nodes),
            CsrPattern.of(torch.stack([tails, heads]), num_nodes, num_nodes),
            CsrPattern.of(ii, n, n), CsrPattern.of(ii.flip(0), n, n),
            CsrPattern.of(ie, n, e), CsrPattern.of(ie.flip(0), e, n), from_items, from_entities)


@dataclass
class KnowledgeGraph:
    """The KG over one node space: items are nodes 0..N-1 (an item IS its linked entity;
    items without a link are their own node), other entities follow from N.

    heads, relations, tails: (T,) int64 over `num_nodes` nodes and `num_relations`.
    """

    heads: Tensor
    relations: Tensor
    tails: Tensor
    num_nodes: int
    num_relations: int
    corr_relation: int  # id of correlated_with (used once S(t) joins)
    # attention layouts by number of items, built on first use; not an init field, so
    # dataclasses.replace / a new KG never inherits another edge list's layouts
    _layouts: dict[int, KGAttentionLayout] = field(default_factory=dict, init=False, repr=False, compare=False)

    def attention_layout(self, num_items: int) -> KGAttentionLayout:
        """This KG's `KGAttentionLayout`, built once, where the KG's tensors are."""
        if num_items not in self._layouts:
            self._layouts[num_items] = KGAttentionLayout.of(self.heads, self.relations, self.tails, self.num_nodes,
                                                            num_items)
        return self._layouts[num_items]

    @staticmethod
    def from_dataset(ds: Dataset, add_inverse: bool = True, min_triples: int = 1) -> KnowledgeGraph:
        """`min_triples`: entities (other than items) in fewer triples are dropped with their
        triples, as KGAT filters infrequent entities (Wang et al., KDD 2019, §4.1: fewer than 10).
        An entity in one triple links to one item only: it carries no signal between items, and
        on ml-100k 61% of the entities are such leaves."""
        n = ds.num_items
        node_of_entity = np.full(ds.num_entities, -1, np.int64)
        if ds.item_entity.size:
            # one entity linked to several items: the first item takes the entity node
            ent, first = np.unique(ds.item_entity[:, 1], return_index=True)
            node_of_entity[ent] = ds.item_entity[first, 0]
        triples = ds.kg
        if min_triples > 1:
            count = np.bincount(triples[:, [0, 2]].ravel(), minlength=ds.num_entities)
            dropped = (count < min_triples) & (node_of_entity < 0)
            triples = triples[~(dropped[triples[:, 0]] | dropped[triples[:, 2]])]
            node_of_entity[dropped] = -2
        free = node_of_entity == -1
        node_of_entity[free] = n + np.arange(int(free.sum()))
        num_nodes = n + int(free.sum())
        kg = torch.from_numpy(triples).long()
        h = torch.from_numpy(node_of_entity)[kg[:, 0]]
        t = torch.from_numpy(node_of_entity)[kg[:, 2]]
        r = kg[:, 1]
        num_rel = len(ds.relation_names)
        if add_inverse:
            h, t, r = torch.cat([h, t]), torch.cat([t, h]), torch.cat([r, r + num_rel])
            num_rel *= 2
        return KnowledgeGraph(h, r, t, num_nodes, num_rel + 1, corr_relation=num_rel)

    def to(self, device: torch.device | str) -> KnowledgeGraph:
        """This KG with its tensors on `device` (itself when they are there already)."""
        if on_device(self.heads, device):
            return self
        return KnowledgeGraph(self.heads.to(device), self.relations.to(device), self.tails.to(device), self.num_nodes,
                              self.num_relations, self.corr_relation)

    def with_correlation(self, corr: Graph | None) -> KnowledgeGraph:
        """KG(t): every S(t) edge (i, j) joins as (e_i, correlated_with, e_j)."""
        if corr is None:
            return self
        (a, b), _ = corr
        return KnowledgeGraph(
            torch.cat([self.heads, a]), torch.cat([self.relations, torch.full_like(a, self.corr_relation)]),
            torch.cat([self.tails, b]), self.num_nodes, self.num_relations, self.corr_relation,
        )


@dataclass(frozen=True)
class StaticGraphs:
    """What training never changes, built once (`from_dataset`): the training user-item edges
    (2, E), the frozen multimodal item graph A_mm (None without the MM view), the KG without
    S(t) (None without the KG view), the (M, N) sparse COO training matrix X, for
    `model.user_aux` the (M, N) CSR row-mean over each user's training items."""

    num_users: int
    num_items: int
    ui_edges: Tensor
    mm: Graph | None
    kg: KnowledgeGraph | None
    interactions: Tensor
    user_item_mean: Tensor | None

    @staticmethod
    def from_dataset(ds: Dataset, cfg: ModelConfig, search: KnnFn | None = None) -> StaticGraphs:
        """The views a dataset can feed: the KG view needs KG triples, the MM view features.
        `search`: an exact top-k for A_mm (a sharded one splits the work; the graph is the same)."""
        ui = train_edges(ds)
        mm = (modality_graph(ds.features, cfg.k_mm, search=search, present=ds.feature_present)
              if cfg.use_mm and ds.features else None)
        kg = KnowledgeGraph.from_dataset(ds, cfg.kg_add_inverse, cfg.kg_min_triples) if cfg.use_kg and ds.kg.shape[0] > 0 else None
        x = training_matrix(ds)
        mean = None
        if cfg.user_aux:
            deg = torch.bincount(ui[0], minlength=ds.num_users).clamp_min(1).float()
            mean = to_csr(ui, 1.0 / deg[ui[0]], ds.num_users, ds.num_items)
        return StaticGraphs(ds.num_users, ds.num_items, ui, mm, kg, x, mean)

    def to(self, device: torch.device | str) -> StaticGraphs:
        """These graphs with their tensors on `device` (itself when they are there already), so
        that each epoch's graphs are built there (`epoch_graphs`). X stays where it is: the
        epoch's graphs do not read it (the ridge head copies it for its scores)."""
        if on_device(self.ui_edges, device):
            return self
        return replace(self, ui_edges=self.ui_edges.to(device), mm=to_device(self.mm, device),
                       kg=None if self.kg is None else self.kg.to(device),
                       user_item_mean=None if self.user_item_mean is None else self.user_item_mean.to(device))


def to_device(graph: Graph | None, device: torch.device | str) -> Graph | None:
    """An edge list (edge_index, weight) on `device`: the same tuple when it is there already."""
    if graph is None or on_device(graph[0], device):
        return graph
    return graph[0].to(device), graph[1].to(device)


@dataclass(frozen=True)
class KGAttention:
    """KGAT attention over KG(t) from the model's current weights: `full` (nodes, nodes) CSR, and
    its item rows (the last layer needs only those) split by column into messages from items
    `from_items` (N, N) and from entities `from_entities` (N, nodes - N), so a step multiplies
    the item and entity tables as they are, never a copy of both; `*_t`: their transposes, for
    the backward of training steps."""

    full: Tensor
    full_t: Tensor
    from_items: Tensor
    from_items_t: Tensor
    from_entities: Tensor
    from_entities_t: Tensor

    @staticmethod
    def from_layout(layout: KGAttentionLayout, weight: Tensor) -> KGAttention:
        """From the attention weights (E,) of the edges of the KG `layout` was built for."""
        dev = weight.device
        w_items, w_entities = weight[layout.from_item_edges.to(dev)], weight[layout.from_entity_edges.to(dev)]
        return KGAttention(layout.full.matrix(weight), layout.full_t.matrix(weight),
                           layout.from_items.matrix(w_items), layout.from_items_t.matrix(w_items),
                           layout.from_entities.matrix(w_entities), layout.from_entities_t.matrix(w_entities))


@dataclass(frozen=True)
class EpochGraphs:
    """The graphs of epoch t (architecture.md §1): S(t) (None before the first fusion), A(t)
    for the training steps (`train_adj`, after edge pruning) and for ranking (`rank_adj`), both
    (M+N, M+N) CSR; A_mm(t) (N, N) CSR; KG(t) and its attention (set by
    `SLIFMR.attend`, which reads the model's weights). The ridge head is not a graph: it is
    its own component (slifmr/training/ridge_head.py).
    The graphs are on the model's device, where `epoch_graphs` built them (the static X stays
    where `static` keeps it). On a GPU, degrees and supports are
    sums of atomic float adds, so weights may differ in their last bits from run to run."""

    static: StaticGraphs
    corr: Graph | None
    train_adj: Tensor
    train_adj_t: Tensor
    rank_adj: Tensor
    mm_adj: Tensor | None
    mm_adj_t: Tensor | None
    kg: KnowledgeGraph | None
    kg_attention: KGAttention | None
    user_item_mean: Tensor | None

    @property
    def num_users(self) -> int:
        return self.static.num_users

    @property
    def num_items(self) -> int:
        return self.static.num_items

    def with_attention(self, attention: KGAttention | None) -> EpochGraphs:
        return replace(self, kg_attention=attention)


def fusion_due(cfg: ModelConfig, epoch: int) -> bool:
    """Whether epoch `epoch` (1-based) rebuilds S(t): from warmup_epochs + 1 on, every refresh_every."""
    return cfg.self_loop and epoch > cfg.warmup_epochs and (epoch - cfg.warmup_epochs - 1) % cfg.refresh_every == 0


def epoch_graphs(static: StaticGraphs, corr: Graph | None, cfg: ModelConfig,
                 generator: torch.Generator, device: torch.device | str = "cpu",
                 previous: EpochGraphs | None = None) -> EpochGraphs:
    """Epoch t's graphs from the static graphs and S(t) (`corr`; None = the static graphs).

    `generator` (a CPU generator) draws the training graph's edge pruning (FREEDOM's
    degree-sensitive dropout, `edge_dropout`), the only randomness here. Graphs that depend on
    S(t) alone are taken from `previous` when it was built from the same S(t) object (the values
    are immutable, so sharing them is safe).

    Built on `device` (the model's): `static` and `corr` are moved there first, once, unless they
    are there already (the training loop keeps them there: no copy per epoch)."""
    m, n = static.num_users, static.num_items
    reused = previous is not None and previous.corr is corr
    static, corr = static.to(device), to_device(corr, device)
    ui_corr = corr if cfg.fuse_ui else None
    edges = denoise_ui_edges(static.ui_edges, corr, n, cfg.ui_denoise)
    pruned = degree_sensitive_dropout(edges, m, n, cfg.edge_dropout, generator)
    train_adj = user_item_adjacency(pruned, m, n, ui_corr, cfg.gamma)
    train_adj_t = transpose_csr(train_adj)
    if reused:
        return replace(previous, train_adj=train_adj, train_adj_t=train_adj_t,
                       rank_adj=train_adj if cfg.edge_dropout <= 0 else previous.rank_adj)
    rank_adj = train_adj if cfg.edge_dropout <= 0 else user_item_adjacency(edges, m, n, ui_corr, cfg.gamma)
    mm_adj = mm_adj_t = None
    if static.mm is not None:
        mm = fuse_item_graph(static.mm, corr if cfg.fuse_mm else None, cfg.beta, n)
        mm_adj = to_csr(mm[0], mm[1], n)
        mm_adj_t = transpose_csr(mm_adj)
    kg = static.kg.with_correlation(corr if cfg.fuse_kg else None) if static.kg is not None else None
    mean = static.user_item_mean
    return EpochGraphs(static, corr, train_adj, train_adj_t, rank_adj, mm_adj, mm_adj_t, kg, None, mean)
