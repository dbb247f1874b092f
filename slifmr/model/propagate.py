"""Propagators: where a view's message passing runs (architecture.md §1, §4).

A view asks its propagator for the rows of a table, and for one hop of message passing at a
time; it never looks at the graph itself, so the same model code runs on the whole epoch graph
(`FullGraph`: sparse products, or sharded row blocks for layer-wise inference) and on a
neighbor-sampled subgraph (`slifmr.sampling.neighbor.SampledSubgraph`).

Node features travel in the propagator's own layout, written `X` below: `FullGraph` keeps one
(nodes, d) tensor per view with the nodes in their adjacency's order (users before items,
items before entities; the KG view's as the pair (items, entities) until a hop needs all
nodes, `whole`); a sampled subgraph keeps {node type: (nodes kept so far, d)}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from slifmr.model.graphs import EpochGraphs, RowSharding, csr_rows

X = Any  # a view's node features in the propagator's layout (see the module docstring)
# (adj (R, C) CSR, x (C, d)) -> adj @ x (R, d)
Spmm = Callable[[Tensor, Tensor], Tensor]

VIEW_NODE_TYPES = {"cf": ("user", "item"), "kg": ("item", "entity"), "mm": ("item",)}


class Propagator(Protocol):
    def rows(self, node_type: str, table: Tensor, sparse: bool = False) -> Tensor:
        """The rows of `table` ((nodes of that type, d)) this graph's nodes of `node_type` need;
        `sparse`: looked up with a sparse gradient."""

    def layout(self, view: str, x: dict[str, Tensor]) -> X:
        """The view's node features from {node type: rows} (types of VIEW_NODE_TYPES[view])."""

    def hop(self, view: str, x: X, layer: int, num_layers: int) -> X:
        """Messages into every node the view's remaining layers still need: layer `layer`
        (0-based) of `num_layers`."""

    def apply(self, fn: Callable[[Tensor, Tensor], Tensor], x: X, neigh: X) -> X:
        """fn(own features, messages) for the nodes `neigh` holds."""

    def seeds(self, view: str, x: X, node_type: str) -> Tensor:
        """The output rows of `node_type`: every node of the full graph, the seeds of a sample."""

    def user_mean(self, item_rows: Tensor) -> Tensor:
        """(output users, d): the mean of item_rows (output items, d) over each user's training
        items (`model.user_aux`; needs every training item of a user)."""


class _SpmmWithTranspose(torch.autograd.Function):
    """adj @ x whose backward is adj^T @ grad with a transpose built once per graph. torch's own
    sparse backward transposes adj (a sort over its edges) on every call, which dominated a
    full-graph LightGCN step (benchmarks/RESULTS.md, "What an epoch costs")."""

    @staticmethod
    def forward(ctx, adj: Tensor, adj_t: Tensor, x: Tensor) -> Tensor:  # noqa: ANN001 - autograd's ctx
        ctx.adj_t = adj_t
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:  # noqa: ANN001
        return None, None, torch.sparse.mm(ctx.adj_t, grad)


def spmm(adj: Tensor, adj_t: Tensor, x: Tensor) -> Tensor:
    """adj (R, C) CSR @ x (C, d) -> (R, d), differentiable in x only; adj_t: adj^T (C, R) CSR
    (`slifmr.model.graphs.transpose_csr`)."""
    return _SpmmWithTranspose.apply(adj, adj_t, x)


class FullGraph:
    """Message passing over the whole epoch graph: A(t) for training (`training=True`, after
    edge pruning) or for ranking, A_mm(t), and KG(t)'s attention.

    `spmm` multiplies a sparse matrix by the features for inference (default torch.sparse.mm;
    `layerwise_spmm` runs row blocks split across workers). Training products (`training=True`,
    no `spmm`) are differentiated through the graphs' stored transposes."""

    def __init__(self, graphs: EpochGraphs, training: bool, spmm: Spmm | None = None):
        self.graphs = graphs
        self.spmm = spmm if spmm is not None or training else torch.sparse.mm
        self.adj = graphs.train_adj if training else graphs.rank_adj

    def _product(self, adj: Tensor, adj_t: Tensor, x: Tensor) -> Tensor:
        return self.spmm(adj, x) if self.spmm is not None else spmm(adj, adj_t, x)

    def rows(self, node_type: str, table: Tensor, sparse: bool = False) -> Tensor:
        return table

    def layout(self, view: str, x: dict[str, Tensor]) -> Tensor | tuple[Tensor, Tensor]:
        parts = [x[t] for t in VIEW_NODE_TYPES[view] if t in x]
        if view == "kg" and len(parts) == 2:
            return parts[0], parts[1]  # (items, entities): concatenated only where a hop needs all nodes
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def hop(self, view: str, x: Tensor, layer: int, num_layers: int) -> Tensor:
        if view == "cf":
            return self._product(self.adj, self.graphs.train_adj_t, x)
        if view == "mm":
            return self._product(self.graphs.mm_adj, self.graphs.mm_adj_t, x)
        att = self.graphs.kg_attention
        if att is None:
            raise RuntimeError("the KG view needs the epoch's attention: graphs = model.attend(graphs)")
        if layer < num_layers - 1:
            return self._product(att.full, att.full_t, whole(x))
        # the last layer's output is read at the items only: their rows suffice, from the item
        # and entity rows as they are (a copy of both tables and its backward cost more than
        # the product on ml-100k, where the steps are memory-bound)
        items, entities = x if isinstance(x, tuple) else (x[: self.graphs.num_items], x[self.graphs.num_items :])
        return (self._product(att.from_items, att.from_items_t, items)
                + self._product(att.from_entities, att.from_entities_t, entities))

    def apply(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor | tuple[Tensor, Tensor], neigh: Tensor) -> Tensor:
        if isinstance(x, tuple) and neigh.shape[0] == x[0].shape[0]:
            return fn(x[0], neigh)
        return fn(whole(x)[: neigh.shape[0]], neigh)

    def seeds(self, view: str, x: Tensor | tuple[Tensor, Tensor], node_type: str) -> Tensor:
        m, n = self.graphs.num_users, self.graphs.num_items
        if view == "cf":
            return x[:m] if node_type == "user" else x[m:]
        return x[0] if isinstance(x, tuple) else x[:n]

    def user_mean(self, item_rows: Tensor) -> Tensor:
        if self.graphs.user_item_mean is None:
            raise RuntimeError("model.user_aux: the graphs were built without it")
        return torch.sparse.mm(self.graphs.user_item_mean, item_rows)


def whole(x: Tensor | tuple[Tensor, ...]) -> Tensor:
    """A FullGraph layout as one (nodes, d) tensor (the KG view's is kept as (items, entities))."""
    return torch.cat(x) if isinstance(x, tuple) else x


def layerwise_spmm(chunk: int = 65536, sharding: RowSharding | None = None) -> Spmm:
    """An spmm for inference (no autograd): the product in blocks of `chunk` rows, each worker
    its shard of rows (`sharding`), gathered after each product, so no step holds the whole
    product of a large graph at once and workers split the work."""

    def spmm(adj: Tensor, x: Tensor) -> Tensor:
        n = adj.shape[0]
        start, stop = sharding[0](n) if sharding else (0, n)
        blocks = [csr_rows(adj, a, min(a + chunk, stop)) @ x for a in range(start, stop, chunk)]
        mine = torch.cat(blocks) if blocks else x.new_zeros((0, x.shape[1]))
        return sharding[1](mine, n) if sharding else mine

    return spmm
