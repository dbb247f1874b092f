"""The three views of an item (architecture.md §1): CF (LightGCN), KG (relation-aware attentive
aggregation, KGAT-style) and MM (projected modalities and ID embeddings over A_mm(t)).

Each view runs on a propagator (slifmr.model.propagate): the whole epoch graph or a sampled
subgraph, with the same code. Shapes below are for the whole graph; on a sampled subgraph the
outputs are the seed rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slifmr.model.graphs import KGAttention, KnowledgeGraph
from slifmr.model.propagate import Propagator
from slifmr.pyg import softmax


def perturb(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """x + eps * sign(x) * normalize(noise), noise ~ U(0, 1) per entry, normalised per row: the
    perturbation of SimGCL (Yu et al., SIGIR 2022, eq. 7) that XSimGCL (Yu et al., TKDE 2023)
    applies to the encoder's own layers. x: (n, d); `generator` on the CPU."""
    noise = torch.rand(x.shape, generator=generator).to(x.device)
    return x + eps * torch.sign(x) * F.normalize(noise, dim=-1)


class CFView(nn.Module):
    """LightGCN (He et al., SIGIR 2020, eq. 3-4): the layer mean of x, Ax, A^2x, ... over the
    normalised A(t). x: {user: (M, d), item: (N, d)} ego rows; returns (users (M, d), items (N, d)).
    `noise` (training only) perturbs each layer's output before the next hop reads it."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.num_layers = num_layers

    def forward(self, x: dict[str, Tensor], graph: Propagator,
                noise: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        h = graph.layout("cf", x)
        outs = {t: [graph.seeds("cf", h, t)] for t in ("user", "item")}
        for layer in range(self.num_layers):
            h = graph.hop("cf", h, layer, self.num_layers)
            if noise is not None:
                h = {t: noise(v) for t, v in h.items()} if isinstance(h, dict) else noise(h)
            for t in outs:
                outs[t].append(graph.seeds("cf", h, t))
        users, items = (torch.stack(outs[t]).mean(0) for t in ("user", "item"))
        return users, items


class KGView(nn.Module):
    """Attentive aggregation over KG(t) with KGAT's bi-interaction aggregator (Wang et al., KDD
    2019, eq. 4-8).

    Attention pi(h, r, t) = (W_r e_t)^T tanh(W_r e_h + e_r), softmax over a head's
    neighbours, computed once per epoch and after its steps (`attention`), as KGAT does.
    x: {item: (N, d), entity: (E, d)}; returns (N, d): the items' ego rows plus the normalised
    output of every layer.
    """

    def __init__(self, num_relations: int, dim: int, num_layers: int):
        super().__init__()
        self.relation = nn.Embedding(num_relations, dim)
        self.w_r = nn.Parameter(torch.empty(num_relations, dim, dim))
        nn.init.xavier_uniform_(self.w_r)
        nn.init.xavier_uniform_(self.relation.weight)
        self.sum_proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        self.prod_proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        self.num_layers = num_layers

    @torch.no_grad()
    def attention(self, x: Tensor, kg: KnowledgeGraph, num_items: int) -> KGAttention:
        """x: (num_nodes, d) node embeddings, items first, on the model's device; kg's index
        tensors may be on the CPU. Per relation, tanh(W_r e_h + e_r) is computed once per
        distinct head and W_r e_t once per distinct tail (`KGAttentionLayout`)."""
        dev = x.device
        layout = kg.attention_layout(num_items)
        score = torch.empty(kg.heads.numel(), device=dev)
        for block in layout.relations:
            w = self.w_r[block.relation]
            head_part = torch.tanh(x[block.heads.to(dev)] @ w + self.relation.weight[block.relation])
            tail_part = x[block.tails.to(dev)] @ w
            score[block.edges.to(dev)] = torch.einsum(
                "ed,ed->e", tail_part[block.tail_of_edge.to(dev)], head_part[block.head_of_edge.to(dev)])
        att = softmax(score, kg.heads.to(dev), num_nodes=kg.num_nodes)
        return KGAttention.from_layout(layout, att)

    def _layer(self, layer: int, ego: Tensor, neigh: Tensor) -> Tensor:
        return F.leaky_relu(self.sum_proj[layer](ego + neigh)) + F.leaky_relu(self.prod_proj[layer](ego * neigh))

    def forward(self, x: dict[str, Tensor], graph: Propagator) -> Tensor:
        h = graph.layout("kg", x)
        out = graph.seeds("kg", h, "item")
        for layer in range(self.num_layers):
            neigh = graph.hop("kg", h, layer, self.num_layers)
            h = graph.apply(lambda ego, msg, layer=layer: self._layer(layer, ego, msg), h, neigh)
            out = out + F.normalize(graph.seeds("kg", h, "item"), dim=1)
        return out


class MMView(nn.Module):
    """Modality features projected to d, and item ID embeddings, propagated over A_mm(t)
    (LATTICE, Zhang et al., MM 2021; FREEDOM, Zhou and Shen, MM 2023, eq. 5).

    Returns h_mm (N, d) = mean_m propagate(proj_m(X^m)) (+ propagate(item ids)) and
    {modality: its propagated projection (N, d)}.
    """

    def __init__(self, feature_dims: dict[str, int], dim: int, num_layers: int, propagate_ids: bool):
        """feature_dims: the modalities projected into the view ({} with FREEDOM's item-ID-only
        view, where the modalities shape only the graph)."""
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(d_m, dim) for m, d_m in feature_dims.items()})
        self.num_layers = num_layers
        self.propagate_ids = propagate_ids

    def forward(self, item_emb: Tensor, features: dict[str, Tensor],
                graph: Propagator) -> tuple[Tensor, dict[str, Tensor]]:
        """item_emb: (N, d) ID rows; features: {modality: (N, d_m)} rows of the graph's items."""
        def propagate(x: Tensor) -> Tensor:
            h = graph.layout("mm", {"item": x})
            for layer in range(self.num_layers):
                h = graph.hop("mm", h, layer, self.num_layers)
            return graph.seeds("mm", h, "item")

        projected = {m: self.proj[m](x) for m, x in features.items() if m in self.proj}
        per_modality = {m: propagate(x) for m, x in projected.items()}
        h = torch.stack(list(per_modality.values())).mean(0) if per_modality else None
        if self.propagate_ids:
            ids = propagate(item_emb)
            h = ids if h is None else h + ids
        if h is None:
            h = torch.zeros_like(graph.seeds("mm", graph.layout("mm", {"item": item_emb}), "item"))
        return h, per_modality

