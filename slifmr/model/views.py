"""The three views of an item (architecture.md §1): CF (LightGCN), KG (relation-aware attentive
aggregation, KGAT-style) and MM (projected modalities and ID embeddings over A_mm(t))."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import LGConv
from torch_geometric.utils import softmax

from slifmr.model.graphs import KnowledgeGraph, to_csr

# (adj (R, C) CSR, x (C, d)) -> adj @ x (R, d); the layer-wise inference passes its own
Spmm = Callable[[Tensor, Tensor], Tensor]


class CFView(nn.Module):
    """LightGCN: the layer mean of x, Ax, A^2x, ... over the normalised A(t).

    x: (M+N, d) ego embeddings; adj: (M+N, M+N) CSR already D^-1/2 A D^-1/2.
    """

    def __init__(self, num_layers: int):
        super().__init__()
        self.convs = nn.ModuleList(LGConv(normalize=False) for _ in range(num_layers))

    def forward(self, x: Tensor, adj: Tensor, spmm: Spmm | None = None) -> Tensor:
        out = [x]
        for conv in self.convs:
            x = conv(x, adj) if spmm is None else spmm(adj, x)
            out.append(x)
        return torch.stack(out).mean(0)


class KGView(nn.Module):
    """Attentive aggregation over KG(t) with KGAT's bi-interaction aggregator.

    Attention pi(h, r, t) = (W_r e_t)^T tanh(W_r e_h + e_r), softmax over a head's
    neighbours, recomputed once per epoch (`refresh_attention`), as KGAT does.
    x: (num_nodes, d) node embeddings with items first; returns (N, d) item outputs.
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
        self.att_full: Tensor | None = None  # (nodes, nodes) CSR
        self.att_items: Tensor | None = None  # (N, nodes) CSR: the item rows only

    @torch.no_grad()
    def refresh_attention(self, x: Tensor, kg: KnowledgeGraph, num_items: int) -> None:
        """x: (num_nodes, d) on the model's device; kg's index tensors may be on the CPU."""
        dev = x.device
        heads, tails, relations = kg.heads.to(dev), kg.tails.to(dev), kg.relations.to(dev)
        score = torch.empty(heads.numel(), device=dev)
        order = torch.argsort(relations, stable=True)
        bounds = torch.searchsorted(relations[order], torch.arange(kg.num_relations + 1, device=dev)).tolist()
        for r in range(kg.num_relations):
            idx = order[bounds[r] : bounds[r + 1]]
            if idx.numel() == 0:
                continue
            w = self.w_r[r]
            eh = x[heads[idx]] @ w
            et = x[tails[idx]] @ w
            score[idx] = (et * torch.tanh(eh + self.relation.weight[r])).sum(1)
        att = softmax(score, heads, num_nodes=kg.num_nodes)
        ei = torch.stack([heads, tails])
        self.att_full = to_csr(ei, att, kg.num_nodes)
        keep = heads < num_items
        self.att_items = to_csr(ei[:, keep], att[keep], num_items, kg.num_nodes)

    def _layer(self, layer: int, ego: Tensor, neigh: Tensor) -> Tensor:
        return F.leaky_relu(self.sum_proj[layer](ego + neigh)) + F.leaky_relu(self.prod_proj[layer](ego * neigh))

    def forward(self, x: Tensor, num_items: int, spmm: Spmm = torch.sparse.mm) -> Tensor:
        if self.att_items is None:
            raise RuntimeError("KGView.refresh_attention must run before forward (model.pre_epoch)")
        out = x[:num_items]
        for layer in range(self.num_layers):
            last = layer == self.num_layers - 1
            adj = self.att_items if last else self.att_full
            neigh = spmm(adj, x)
            x = self._layer(layer, x[:num_items] if last else x, neigh)
            out = out + F.normalize(x[:num_items], dim=1)
        return out


class MMView(nn.Module):
    """Modality features projected to d, and item ID embeddings, propagated over A_mm(t).

    features: name -> (N, d_m) frozen tensors. Returns h_mm (N, d) and {name: h_m (N, d)}.
    """

    def __init__(self, feature_dims: dict[str, int], dim: int, num_layers: int, propagate_ids: bool):
        """feature_dims: the modalities projected into the view ({} with FREEDOM's item-ID-only
        view, where the modalities shape only the graph)."""
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(d_m, dim) for m, d_m in feature_dims.items()})
        self.num_layers = num_layers
        self.propagate_ids = propagate_ids

    def forward(self, item_emb: Tensor, features: dict[str, Tensor], adj: Tensor,
                spmm: Spmm = torch.sparse.mm) -> tuple[Tensor, dict[str, Tensor]]:
        def propagate(x: Tensor) -> Tensor:
            for _ in range(self.num_layers):
                x = spmm(adj, x)
            return x

        return self.combine(item_emb, self.project(features), propagate)

    def project(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.proj[m](x) for m, x in features.items() if m in self.proj}

    def combine(self, item_emb: Tensor, projected: dict[str, Tensor],
                propagate: Callable[[Tensor], Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """h_mm = mean_m propagate(projected_m) (+ propagate(item_emb)); shared by the
        full-graph and the sampled forward, which propagate differently."""
        per_modality = {m: propagate(x) for m, x in projected.items()}
        h = torch.stack(list(per_modality.values())).mean(0) if per_modality else None
        if self.propagate_ids:
            ids = propagate(item_emb)
            h = ids if h is None else h + ids
        return (torch.zeros_like(item_emb) if h is None else h), per_modality
