"""SLIF-MR: three views fused per item, with the self-loop correlation graph S(t) rebuilt
from the previous epoch's fused item representations and fused into all three graphs.

The model contract (MMRec / RecBole style):
    pre_epoch(epoch, item_reps)   rebuild the epoch's graphs (fusion happens here)
    loss(batch)                   dict of loss parts, "loss" is what to backpropagate
    full_scores(users)            (B, N) scores of every item, for full ranking
    item_representations()        (N, d) fused item representations Z, detached
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slifmr import log
from slifmr.config import ModelConfig
from slifmr.data.format import TRAIN, Dataset
from slifmr.model.graphs import (
    Graph,
    KnnFn,
    KnowledgeGraph,
    correlation_graph,
    degree_sensitive_dropout,
    fuse_item_graph,
    static_graphs,
    to_csr,
    user_item_adjacency,
)
from slifmr.model.losses import bpr_loss, info_nce, l2_reg
from slifmr.model.views import CFView, KGView, MMView
from slifmr.rng import derive_seed

Batch = tuple[Tensor, Tensor, Tensor]  # (users, positive items, negative items), each (B,)


class SLIFMR(nn.Module):
    def __init__(self, ds: Dataset, cfg: ModelConfig, knn_fn: KnnFn | None = None, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.num_users, self.num_items = ds.num_users, ds.num_items
        d = cfg.embedding_dim
        self.use_kg = cfg.use_kg and ds.kg.shape[0] > 0
        self.use_mm = cfg.use_mm and bool(ds.features)
        if cfg.use_kg and not self.use_kg:
            log.warning(f"dataset {ds.name} has no knowledge graph: the KG view is off")
        if cfg.use_mm and not self.use_mm:
            log.warning(f"dataset {ds.name} has no modality features: the multimodal view is off")
        self.knn_fn = knn_fn
        self.seed = seed
        # reseeded from (seed, epoch) in pre_epoch: the same on every rank, nothing to checkpoint
        self.generator = torch.Generator().manual_seed(seed)

        self.user_emb = nn.Embedding(self.num_users, d)
        self.item_emb = nn.Embedding(self.num_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.cf = CFView(cfg.ui_layers)

        self.ui_edges, self.base_mm = static_graphs(ds, cfg.k_mm, with_mm=self.use_mm)
        # frozen inputs are non-persistent buffers: model.to(device) moves them, checkpoints skip them
        self.modalities = sorted(ds.features) if self.use_mm else []
        for m in self.modalities:
            self.register_buffer(f"feature_{m}", torch.tensor(np.asarray(ds.features[m], dtype=np.float32)), persistent=False)
        if self.use_mm:
            self.mm = MMView({m: self.features[m].shape[1] for m in self.modalities}, d, cfg.mm_layers, cfg.mm_propagate_ids)
        if self.use_kg:
            self.kg_base = KnowledgeGraph.from_dataset(ds, cfg.kg_add_inverse)
            self.entity_emb = nn.Embedding(self.kg_base.num_nodes - self.num_items, d)
            nn.init.xavier_uniform_(self.entity_emb.weight)
            self.kg_view = KGView(self.kg_base.num_relations, d, cfg.kg_layers)
        if cfg.fusion == "attention":
            self.att_proj = nn.Linear(d, d)
            self.att_query = nn.Linear(d, 1, bias=False)
        if cfg.user_aux:
            u, i = self.ui_edges
            deg = torch.bincount(u, minlength=self.num_users).clamp_min(1).float()
            self.register_buffer("user_item_mean", to_csr(self.ui_edges, 1.0 / deg[u], self.num_users, self.num_items),
                                 persistent=False)

        self.corr: Graph | None = None  # S(t), None until the first fusion
        self.corr_epoch: int | None = None
        self.adj_train: Tensor | None = None
        self.adj_full: Tensor | None = None
        self.adj_mm: Tensor | None = None
        self._cache: tuple[Tensor, Tensor] | None = None
        self.timings = {"fusion_seconds": 0.0, "knn_seconds": 0.0}

    @property
    def features(self) -> dict[str, Tensor]:
        return {m: getattr(self, f"feature_{m}") for m in self.modalities}

    @property
    def device(self) -> torch.device:
        return self.user_emb.weight.device

    # ------------------------------------------------------------------ graphs

    def fusion_due(self, epoch: int) -> bool:
        c = self.cfg
        return c.self_loop and epoch > c.warmup_epochs and (epoch - c.warmup_epochs - 1) % c.refresh_every == 0

    def pre_epoch(self, epoch: int, item_reps: Tensor | None) -> None:
        """Rebuild epoch `epoch`'s graphs (1-based). From epoch warmup+1 on, S(t) is built
        from `item_reps` (Z(t-1), (N, d)) and fused into the user-item graph, the KG and
        the multimodal item graph; epoch 1 (and the static variant) use the static graphs.

        Graphs are built on the CPU (sparse bookkeeping), then moved to the model's device;
        the kNN runs wherever `item_reps` lives (the GPU when training there)."""
        c = self.cfg
        start = time.perf_counter()
        self.generator.manual_seed(derive_seed(self.seed, epoch))
        changed = self.adj_full is None
        if self.fusion_due(epoch) and item_reps is not None:
            self.corr = correlation_graph(item_reps, c.k_corr, c.corr_binary, self.knn_fn)
            self.corr_epoch = epoch
            changed = True
        self.timings["knn_seconds"] = time.perf_counter() - start
        corr = self.corr
        ui_corr = corr if c.fuse_ui else None
        train_edges = degree_sensitive_dropout(self.ui_edges, self.num_users, self.num_items, c.edge_dropout, self.generator)
        dev = self.device
        self.adj_train = user_item_adjacency(train_edges, self.num_users, self.num_items, ui_corr, c.gamma).to(dev)
        if changed:
            self.adj_full = (
                self.adj_train if c.edge_dropout <= 0
                else user_item_adjacency(self.ui_edges, self.num_users, self.num_items, ui_corr, c.gamma).to(dev)
            )
            if self.use_mm:
                mm = fuse_item_graph(self.base_mm, corr if c.fuse_mm else None, c.beta, self.num_items)
                self.adj_mm = to_csr(mm[0], mm[1], self.num_items).to(dev)
        if self.use_kg and (changed or self.kg_view.att_items is None):
            self.kg = self.kg_base.with_correlation(corr if c.fuse_kg else None)
            self.refresh_attention()
        self._cache = None
        self.timings["fusion_seconds"] = time.perf_counter() - start

    def end_epoch(self) -> None:
        """After the epoch's steps: recompute the KG attention from the trained embeddings
        (once per epoch, as KGAT), so evaluation and Z(t) see this epoch's weights."""
        if self.use_kg:
            self.refresh_attention()
        self._cache = None

    def refresh_attention(self) -> None:
        self.kg_view.refresh_attention(self._kg_nodes().detach(), self.kg, self.num_items)

    def _kg_nodes(self) -> Tensor:
        return torch.cat([self.item_emb.weight, self.entity_emb.weight])

    # ------------------------------------------------------------------ forward

    def _fuse(self, h_cf: Tensor, aux: list[tuple[float, Tensor]]) -> tuple[Tensor, Tensor | None]:
        """z = h_cf + sum_v alpha_v normalize(h_v) (residual), or attention weights over views."""
        if not aux:
            return h_cf, None
        parts = [a * F.normalize(h, dim=1) for a, h in aux]
        if self.cfg.fusion == "attention":
            stacked = torch.stack(parts, 1)  # (N, V, d)
            w = torch.softmax(self.att_query(torch.tanh(self.att_proj(stacked))), dim=1)
            aux_sum = (w * stacked).sum(1) * len(parts)
        else:
            aux_sum = torch.stack(parts).sum(0)
        return h_cf + aux_sum, aux_sum

    def propagate(self) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(users (M, d), fused items z (N, d), views {cf, kg, mm, mm:<modality>} (N, d))."""
        if self.adj_train is None:
            raise RuntimeError("call pre_epoch(epoch, item_reps) before training or scoring")
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        adj = self.adj_train if self.training else self.adj_full
        out = self.cf(ego, adj)
        users, h_cf = out[: self.num_users], out[self.num_users :]
        views = {"cf": h_cf}
        aux = []
        if self.use_kg:
            views["kg"] = self.kg_view(self._kg_nodes(), self.num_items)
            aux.append((self.cfg.alpha_kg, views["kg"]))
        if self.use_mm:
            views["mm"], per_mod = self.mm(self.item_emb.weight, self.features, self.adj_mm)
            views.update({f"mm:{m}": h for m, h in per_mod.items()})
            aux.append((self.cfg.alpha_mm, views["mm"]))
        z, aux_sum = self._fuse(h_cf, aux)
        if self.cfg.user_aux and aux_sum is not None:
            users = users + torch.sparse.mm(self.user_item_mean, aux_sum)
        return users, z, views

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        users, pos, neg = (t.to(self.device) for t in batch)
        self._cache = None
        u_all, z, views = self.propagate()
        c = self.cfg
        parts = {"bpr": bpr_loss(u_all[users], z[pos], z[neg])}
        parts["reg"] = c.lambda_reg * l2_reg(self.user_emb(users), self.item_emb(pos), self.item_emb(neg))
        if c.lambda_sc > 0 and len(views) > 1:
            parts["sc"] = c.lambda_sc * self._consistency(views, torch.cat([pos, neg]))
        if c.lambda_kg > 0 and self.use_kg:
            parts["kg"] = c.lambda_kg * self._transr_loss(users.numel())
        parts["loss"] = sum(parts.values())
        return parts

    def _consistency(self, views: dict[str, Tensor], items: Tensor) -> Tensor:
        """InfoNCE between views of the same item over the batch's items: cf-mm, cf-kg,
        mm-kg and every pair of modalities."""
        items = torch.unique(items)
        if items.numel() > self.cfg.sc_max_items:
            pick = torch.randperm(items.numel(), generator=self.generator)[: self.cfg.sc_max_items]
            items = items[pick.to(items.device)]
        names = [n for n in ("cf", "mm", "kg") if n in views]
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        mods = [n for n in views if n.startswith("mm:")]
        pairs += [(a, b) for i, a in enumerate(mods) for b in mods[i + 1 :]]
        losses = [info_nce(views[a][items], views[b][items], self.cfg.tau) for a, b in pairs]
        return torch.stack(losses).mean()

    def _transr_loss(self, n: int) -> Tensor:
        kg = self.kg_base
        idx = torch.randint(0, kg.heads.numel(), (n,), generator=self.generator)
        t_neg = torch.randint(0, kg.num_nodes, (n,), generator=self.generator)
        h, r, t, t_neg = (v.to(self.device) for v in (kg.heads[idx], kg.relations[idx], kg.tails[idx], t_neg))
        x = self._kg_nodes()
        w, e_r = self.kg_view.w_r[r], self.kg_view.relation(r)

        def dist(tail: Tensor) -> Tensor:
            return (torch.bmm(x[h].unsqueeze(1), w).squeeze(1) + e_r - torch.bmm(x[tail].unsqueeze(1), w).squeeze(1)).pow(2).sum(1)

        return -F.logsigmoid(dist(t_neg) - dist(t)).mean()

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def _inference(self) -> tuple[Tensor, Tensor]:
        if self._cache is None:
            was_training = self.training
            self.eval()
            users, z, _ = self.propagate()
            self.train(was_training)
            self._cache = (users, z)
        return self._cache

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores u . z_i of every item for the given users (B,)."""
        u, z = self._inference()
        return u[users.to(u.device)] @ z.T

    def item_representations(self, items: Tensor | None = None) -> Tensor:
        """Fused item representations Z (N, d) (or the given rows), detached: the input of
        the next epoch's correlation graph."""
        z = self._inference()[1]
        return z if items is None else z[items.to(z.device)]

    def invalidate(self) -> None:
        """Forget cached inference results (after an optimizer step or a load)."""
        self._cache = None


def training_pairs(ds: Dataset) -> tuple[Tensor, Tensor]:
    u, i = ds.edges(TRAIN)
    return torch.from_numpy(u).long(), torch.from_numpy(i).long()
