"""SLIF-MR: three views fused per item, with the self-loop correlation graph S(t) rebuilt
from the previous epoch's fused item representations and fused into all three graphs
(architecture.md §1).

The model holds parameters only; the graphs are arguments (`EpochGraphs`, built by
`slifmr.model.graphs.epoch_graphs`) and every view runs on a propagator (the whole graph or a
sampled subgraph, `slifmr.model.propagate`). The contract (MMRec / RecBole style):

    forward(batch)                     dict of loss parts; "loss" is what to backpropagate
    attend(graphs)                     graphs with KG(t)'s attention from the current weights
    encode(graph)                      (users, z, views) on a propagator
    representations(graphs, spmm)      detached (users, z) for ranking, scored by `full_scores`
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slifmr.config import ModelConfig
from slifmr.model.graphs import EpochGraphs, KnowledgeGraph
from slifmr.model.losses import bpr_loss, info_nce, l2_reg, softmax_loss
from slifmr.model.propagate import FullGraph, Propagator, Spmm
from slifmr.model.ridge import ridge_scores
from slifmr.model.views import CFView, KGView, MMView, perturb

Triples = tuple[Tensor, Tensor, Tensor]  # (users, positive items, negative items), each (B,)


@dataclass(frozen=True)
class TrainingBatch:
    """One step's input: the graph its representations propagate on, and the BPR triples.

    users, pos, neg: (B,) rows of the graph's user / item outputs; user_ids, pos_ids, neg_ids:
    (B,) their global ids; sc_items: item output rows whose views the InfoNCE compares (after
    torch.unique); kg: the static KG TransR draws triples from (None without the KG view);
    generator: the epoch's random stream (InfoNCE subsample, TransR triples)."""

    graph: Propagator
    users: Tensor
    pos: Tensor
    neg: Tensor
    user_ids: Tensor
    pos_ids: Tensor
    neg_ids: Tensor
    sc_items: Tensor
    kg: KnowledgeGraph | None
    generator: torch.Generator

    @staticmethod
    def full(graphs: EpochGraphs, triples: Triples, generator: torch.Generator,
             device: torch.device | str = "cpu") -> TrainingBatch:
        """A batch over the whole training graph A(t): rows are the global ids."""
        users, pos, neg = (t.to(device) for t in triples)
        return TrainingBatch(FullGraph(graphs, training=True), users, pos, neg, users, pos, neg,
                             torch.cat([pos, neg]), graphs.static.kg, generator)


@dataclass(frozen=True)
class Representations:
    """Detached representations for ranking: users (M, d) and fused items z (N, d). Scores are
    u . z_i, or their cosine when trained with the softmax loss (which compares cosines).

    With the ridge head (`item_ridge` W^T (N, N) CSR, `interactions` X (M, N) sparse COO,
    `ridge_weight` eta > 0) the score is standardise(u . z) + eta standardise(x_u W), each
    standardised over the user's N scores (zero mean, unit variance), so eta weighs two scores
    of different scales (slifmr/model/ridge.py)."""

    users: Tensor
    items: Tensor
    cosine: bool = False
    item_ridge: Tensor | None = None
    interactions: Tensor | None = None
    ridge_weight: float = 0.0

    @property
    def has_head(self) -> bool:
        return self.item_ridge is not None and self.interactions is not None

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores of every item for the given users (B,)."""
        if not self.has_head or self.ridge_weight <= 0:
            return self._embedding_scores(users)
        return next(self.blends(users, [self.ridge_weight]))

    def blends(self, users: Tensor, weights: list[float]) -> Iterator[Tensor]:
        """For each ridge weight eta of `weights`: the (B, N) scores standardise(u . z) +
        eta standardise(x_u W) of users (B,), both parts computed once (needs the head). The
        blends share one buffer: each yielded tensor is valid until the next is asked for."""
        dot = _standardise_(self._embedding_scores(users))
        # standardised where the product left it (a transposed view: the reductions keep their
        # order, so their bits), then laid out row by row once, not once per weight
        ridge = _standardise_(ridge_scores(self.interactions, self.item_ridge, users)).contiguous()
        # a (B, N) temporary per weight costs page faults at 10^5 items (its allocation, not the
        # arithmetic, dominated); eta x + dot is bit for bit dot + eta x (addition commutes)
        blend = torch.empty_like(dot) if any(eta > 0 for eta in weights) else dot
        for eta in weights:
            if eta > 0:
                yield torch.mul(ridge, eta, out=blend).add_(dot)
            else:
                yield dot

    def _embedding_scores(self, users: Tensor) -> Tensor:
        u, z = self.users[users.to(self.users.device)], self.items
        if self.cosine:
            u, z = F.normalize(u, dim=1), F.normalize(z, dim=1)
        return u @ z.T

    def finite(self) -> bool:
        return bool(torch.isfinite(self.users).all()) and bool(torch.isfinite(self.items).all())


def _standardise(scores: Tensor) -> Tensor:
    """Each row (a user's scores) to zero mean and unit variance; a constant row to zeros."""
    return _standardise_(scores.clone())


def _standardise_(scores: Tensor) -> Tensor:
    """`_standardise` in place (the same values, without two (B, N) temporaries)."""
    scores.sub_(scores.mean(1, keepdim=True))
    return scores.div_(scores.std(1, keepdim=True).clamp_min(1e-12))


class SLIFMR(nn.Module):
    """Parameters of SLIF-MR: user, item (and KG entity) ID embeddings and the views' weights.

    features: {modality: (N, d_m)} frozen features, {} without the MM view (frozen inputs are
    non-persistent buffers: model.to(device) moves them, checkpoints skip them); kg_shape:
    (entities beyond the items, relations incl. inverses and correlated_with), None without the
    KG view (`StaticGraphs.kg` gives both). sparse_tables: ID rows are looked up with sparse
    gradients (neighbor-sampled steps touch few rows; a row-wise optimizer follows)."""

    def __init__(self, cfg: ModelConfig, num_users: int, num_items: int, features: dict[str, Tensor] | None = None,
                 kg_shape: tuple[int, int] | None = None, sparse_tables: bool = False):
        super().__init__()
        self.cfg = cfg
        self.num_users, self.num_items = num_users, num_items
        self.sparse_tables = sparse_tables
        d = cfg.embedding_dim
        self.user_emb = nn.Embedding(num_users, d)
        self.item_emb = nn.Embedding(num_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.cf = CFView(cfg.ui_layers)
        features = features or {}
        self.use_mm, self.use_kg = bool(features), kg_shape is not None
        self.modalities = sorted(features)
        for m in self.modalities:
            self.register_buffer(f"feature_{m}", torch.as_tensor(features[m], dtype=torch.float32), persistent=False)
        if self.use_mm:
            dims = {m: features[m].shape[1] for m in self.modalities} if cfg.mm_view_features else {}
            self.mm = MMView(dims, d, cfg.mm_layers, cfg.mm_propagate_ids)
        if kg_shape is not None:
            num_entities, num_relations = kg_shape
            self.entity_emb = nn.Embedding(num_entities, d)
            nn.init.xavier_uniform_(self.entity_emb.weight)
            self.kg_view = KGView(num_relations, d, cfg.kg_layers)
        if cfg.fusion == "attention":
            self.att_proj = nn.Linear(d, d)
            self.att_query = nn.Linear(d, 1, bias=False)

    @property
    def features(self) -> dict[str, Tensor]:
        return {m: getattr(self, f"feature_{m}") for m in self.modalities}

    def embedding_tables(self) -> list[Tensor]:
        """The ID embedding tables: a sampled batch's gradient touches few of their rows."""
        return [self.user_emb.weight, self.item_emb.weight] + ([self.entity_emb.weight] if self.use_kg else [])

    @property
    def view_layers(self) -> dict[str, int]:
        """Message-passing layers of each active view (how many hops its sampling needs)."""
        layers = {"cf": self.cfg.ui_layers}
        if self.use_kg:
            layers["kg"] = self.cfg.kg_layers
        if self.use_mm:
            layers["mm"] = self.cfg.mm_layers
        return layers

    def attend(self, graphs: EpochGraphs) -> EpochGraphs:
        """`graphs` with KG(t)'s attention computed from the current weights (KGAT recomputes it
        once per epoch): call it when the graphs are new and after the epoch's steps."""
        if not self.use_kg or graphs.kg is None:
            return graphs
        nodes = torch.cat([self.item_emb.weight, self.entity_emb.weight]).detach()
        return graphs.with_attention(self.kg_view.attention(nodes, graphs.kg, self.num_items))

    # ------------------------------------------------------------------ forward

    def _fuse(self, h_cf: Tensor, aux: list[tuple[float, Tensor]]) -> tuple[Tensor, Tensor | None]:
        """z = h_cf + sum_v alpha_v normalize(h_v) (residual), or attention weights over views."""
        if not aux:
            return h_cf, None
        parts = [a * (F.normalize(h, dim=1) if self.cfg.fuse_normalize else h) for a, h in aux]
        if self.cfg.fusion == "attention":
            stacked = torch.stack(parts, 1)  # (N, V, d)
            w = torch.softmax(self.att_query(torch.tanh(self.att_proj(stacked))), dim=1)
            aux_sum = (w * stacked).sum(1) * len(parts)
        else:
            aux_sum = torch.stack(parts).sum(0)
        return h_cf + aux_sum, aux_sum

    def encode(self, graph: Propagator, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(users (M, d), fused items z (N, d), views {cf, kg, mm, mm:<modality>} (N, d)) on
        `graph`; on a sampled subgraph, the seed users' and items' rows. With `generator`, in
        training mode and model.perturb_eps > 0, the CF layers are perturbed (`views.perturb`)."""
        items = graph.rows("item", self.item_emb.weight, self.sparse_tables)
        users = graph.rows("user", self.user_emb.weight, self.sparse_tables)
        eps = self.cfg.perturb_eps
        noise = (lambda x: perturb(x, eps, generator)) if self.training and eps > 0 and generator is not None else None
        users, h_cf = self.cf({"user": users, "item": items}, graph, noise)
        views = {"cf": h_cf}
        if self.use_kg:
            entities = graph.rows("entity", self.entity_emb.weight, self.sparse_tables)
            views["kg"] = self.kg_view({"item": items, "entity": entities}, graph)
        if self.use_mm:
            features = {m: graph.rows("item", f) for m, f in self.features.items()}
            views["mm"], per_mod = self.mm(items, features, graph)
            views.update({f"mm:{m}": h for m, h in per_mod.items()})
        z, aux_sum = self._fuse(h_cf, [(a, views[v]) for v, a in (("kg", self.cfg.alpha_kg), ("mm", self.cfg.alpha_mm))
                                       if v in views])
        if self.cfg.user_aux and aux_sum is not None:
            users = users + graph.user_mean(aux_sum)
        return users, z, views

    def forward(self, batch: TrainingBatch) -> dict[str, Tensor]:
        """The loss parts of one batch: "bpr" or "softmax" (model.loss), "reg", "sc" (InfoNCE
        between views), "kg" (TransR, with lambda_kg), and "loss", their sum."""
        c = self.cfg
        u, z, views = self.encode(batch.graph, batch.generator)
        parts = self._ranking_loss(u[batch.users], z[batch.pos], z[batch.neg], batch.pos_ids, batch.neg_ids)
        parts["reg"] = c.lambda_reg * l2_reg(self._rows(self.user_emb, batch.user_ids), self._rows(self.item_emb, batch.pos_ids),
                                             self._rows(self.item_emb, batch.neg_ids))
        if c.lambda_sc > 0 and len(views) > 1:
            parts["sc"] = c.lambda_sc * self._consistency(views, batch.sc_items, batch.generator)
        if c.lambda_kg > 0 and self.use_kg and batch.kg is not None:
            parts["kg"] = c.lambda_kg * self._transr_loss(batch.kg, batch.users.numel(), batch.generator)
        parts["loss"] = sum(parts.values())
        return parts

    def _rows(self, table: nn.Embedding, idx: Tensor) -> Tensor:
        return F.embedding(idx, table.weight, sparse=self.sparse_tables)

    def _ranking_loss(self, u: Tensor, pos: Tensor, neg: Tensor, pos_ids: Tensor, neg_ids: Tensor) -> dict[str, Tensor]:
        """{"bpr": ...} (Rendle et al., UAI 2009) or {"softmax": ...} (model.loss) on (B, d) rows."""
        if self.cfg.loss == "softmax":
            return {"softmax": softmax_loss(u, pos, neg, self.cfg.softmax_tau, pos_ids, neg_ids)}
        return {"bpr": bpr_loss(u, pos, neg)}

    def _consistency(self, views: dict[str, Tensor], items: Tensor, generator: torch.Generator) -> Tensor:
        """InfoNCE between views of the same item over the batch's items: cf-mm, cf-kg,
        mm-kg and every pair of modalities."""
        items = torch.unique(items)
        if items.numel() > self.cfg.sc_max_items:
            pick = torch.randperm(items.numel(), generator=generator)[: self.cfg.sc_max_items]
            items = items[pick.to(items.device)]
        names = [n for n in ("cf", "mm", "kg") if n in views]
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        mods = [n for n in views if n.startswith("mm:")]
        pairs += [(a, b) for i, a in enumerate(mods) for b in mods[i + 1 :]]
        losses = [info_nce(views[a][items], views[b][items], self.cfg.tau) for a, b in pairs]
        return torch.stack(losses).mean()

    def _kg_rows(self, idx: Tensor) -> Tensor:
        """Rows of the KG node table (items first, then entities), looked up, not sliced."""
        is_item = idx < self.num_items
        out = torch.empty(idx.numel(), self.item_emb.embedding_dim, device=idx.device)
        out[is_item] = self._rows(self.item_emb, idx[is_item])
        out[~is_item] = self._rows(self.entity_emb, idx[~is_item] - self.num_items)
        return out

    def _transr_loss(self, kg: KnowledgeGraph, n: int, generator: torch.Generator) -> Tensor:
        """TransR (Lin et al., AAAI 2015) on n triples of the static KG, one corrupted tail each."""
        idx = torch.randint(0, kg.heads.numel(), (n,), generator=generator)
        t_neg = torch.randint(0, kg.num_nodes, (n,), generator=generator)
        dev = self.item_emb.weight.device
        h, r, t, t_neg = (v.to(dev) for v in (kg.heads[idx], kg.relations[idx], kg.tails[idx], t_neg))
        w, e_r = self.kg_view.w_r[r], self.kg_view.relation(r)

        def dist(tail: Tensor) -> Tensor:
            return (torch.bmm(self._kg_rows(h).unsqueeze(1), w).squeeze(1) + e_r
                    - torch.bmm(self._kg_rows(tail).unsqueeze(1), w).squeeze(1)).pow(2).sum(1)

        return -F.logsigmoid(dist(t_neg) - dist(t)).mean()

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def representations(self, graphs: EpochGraphs, spmm: Spmm | None = None) -> Representations:
        """Users and fused items over the ranking graph, detached (`spmm`: torch.sparse.mm by
        default, or e.g. the layer-wise, sharded product of `slifmr.model.propagate.layerwise_spmm`)."""
        users, z, _ = self.encode(FullGraph(graphs, training=False, spmm=spmm))
        return Representations(users, z, cosine=self.cfg.loss == "softmax")  # the ridge head attaches itself
