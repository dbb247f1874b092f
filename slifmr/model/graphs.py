"""The three graphs of an epoch and their fusion with the correlation graph S(t) (architecture.md §1).

All graphs are built from TRAINING edges only. Sparse matrices are torch CSR tensors;
edge lists are (2, E) `edge_index` with (E,) weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch_geometric.utils import coalesce

from slifmr.data.format import Dataset
from slifmr.data.graphs import (
    knn,
    knn_edges,
    modality_graph,
    sym_norm,
    symmetric_graph,
    train_edges,
)

# torch flags CSR tensors as beta and warns about skipped invariant checks on every build;
# our CSR tensors come from coalesced COO, so both warnings are noise here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

Graph = tuple[Tensor, Tensor]  # (edge_index (2, E), weight (E,))
KnnFn = Callable[[Tensor, int], tuple[Tensor, Tensor]]  # (Z (N, d), k) -> (nbrs, sims) for all N rows


def to_csr(edge_index: Tensor, weight: Tensor, n_rows: int, n_cols: int | None = None) -> Tensor:
    return torch.sparse_coo_tensor(edge_index, weight.float(), (n_rows, n_cols or n_rows)).coalesce().to_sparse_csr()


def csr_rows(adj: Tensor, start: int, stop: int) -> Tensor:
    """Rows [start, stop) of a CSR matrix as a CSR matrix (no copy of the other rows)."""
    crow = adj.crow_indices()
    lo, hi = int(crow[start]), int(crow[stop])
    return torch.sparse_csr_tensor(crow[start : stop + 1] - lo, adj.col_indices()[lo:hi], adj.values()[lo:hi],
                                   (stop - start, adj.shape[1]))


def correlation_graph(z: Tensor, k: int, binary: bool = False, knn_fn: KnnFn | None = None) -> Graph:
    """S(t): top-k cosine neighbours of the fused item representations z (N, d), self
    excluded, symmetrised, D^-1/2 S D^-1/2 normalised. `knn_fn` lets a distributed caller
    substitute its sharded search (it must return the exact top-k of every row). The search
    runs on z's device; the graph is built on the CPU."""
    nbrs, sims = (knn_fn or knn)(z.detach(), k)
    return symmetric_graph(*knn_edges(nbrs.cpu(), sims.cpu()), z.shape[0], binary)


def user_item_adjacency(
    ui_edges: Tensor, num_users: int, num_items: int, corr: Graph | None = None, gamma: float = 0.0
) -> Tensor:
    """A(t) = [[0, R], [R^T, gamma S(t)]], symmetrically normalised, as (M+N, M+N) CSR."""
    u, i = ui_edges
    rows = [torch.cat([u, i + num_users])]
    cols = [torch.cat([i + num_users, u])]
    vals = [torch.ones(2 * u.numel())]
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
    proportional to 1 / sqrt(d_u d_i), so edges between hubs go first."""
    if drop <= 0:
        return ui_edges
    u, i = ui_edges
    du = torch.bincount(u, minlength=num_users).float()
    di = torch.bincount(i, minlength=num_items).float()
    p = (du[u] * di[i]).rsqrt()
    keep = max(1, int(u.numel() * (1.0 - drop)))
    idx = torch.multinomial(p, keep, replacement=False, generator=generator)
    return ui_edges[:, idx]


def fuse_item_graph(base: Graph | None, corr: Graph | None, beta: float, n: int) -> Graph | None:
    """A_mm(t) = (1 - beta) A_mm + beta S(t)."""
    if corr is None or beta <= 0:
        return base
    if base is None:
        return corr[0], corr[1] * beta
    ei = torch.cat([base[0], corr[0]], 1)
    w = torch.cat([(1 - beta) * base[1], beta * corr[1]])
    return coalesce(ei, w, num_nodes=n, reduce="sum")


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

    @staticmethod
    def from_dataset(ds: Dataset, add_inverse: bool = True) -> KnowledgeGraph:
        n = ds.num_items
        node_of_entity = np.full(ds.num_entities, -1, np.int64)
        if ds.item_entity.size:
            # one entity linked to several items: the first item takes the entity node
            ent, first = np.unique(ds.item_entity[:, 1], return_index=True)
            node_of_entity[ent] = ds.item_entity[first, 0]
        free = node_of_entity < 0
        node_of_entity[free] = n + np.arange(int(free.sum()))
        num_nodes = n + int(free.sum())
        kg = torch.from_numpy(ds.kg).long()
        h = torch.from_numpy(node_of_entity)[kg[:, 0]]
        t = torch.from_numpy(node_of_entity)[kg[:, 2]]
        r = kg[:, 1]
        num_rel = len(ds.relation_names)
        if add_inverse:
            h, t, r = torch.cat([h, t]), torch.cat([t, h]), torch.cat([r, r + num_rel])
            num_rel *= 2
        return KnowledgeGraph(h, r, t, num_nodes, num_rel + 1, corr_relation=num_rel)

    def with_correlation(self, corr: Graph | None) -> KnowledgeGraph:
        """KG(t): every S(t) edge (i, j) joins as (e_i, correlated_with, e_j)."""
        if corr is None:
            return self
        (a, b), _ = corr
        return KnowledgeGraph(
            torch.cat([self.heads, a]), torch.cat([self.relations, torch.full_like(a, self.corr_relation)]),
            torch.cat([self.tails, b]), self.num_nodes, self.num_relations, self.corr_relation,
        )


def static_graphs(ds: Dataset, k_mm: int, with_mm: bool = True, search: KnnFn | None = None) -> tuple[Tensor, Graph | None]:
    """(training user-item edges (2, E), frozen multimodal item graph A_mm or None).
    `search`: an exact top-k (a sharded one splits the work; the graph is the same)."""
    return train_edges(ds), modality_graph(ds.features, k_mm, search=search) if with_mm else None
