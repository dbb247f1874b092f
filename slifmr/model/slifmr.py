"""SLIF-MR: three views fused per item, with the self-loop correlation graph S(t) rebuilt
from the previous epoch's fused item representations and fused into all three graphs.

The model contract (MMRec / RecBole style):
    pre_epoch(epoch, item_reps)   rebuild the epoch's graphs (fusion happens here)
    loss(batch)                   dict of loss parts, "loss" is what to backpropagate
    sampled_loss(subgraph)        the same on a neighbor-sampled HeteroData (--sampling neighbor)
    epoch_graph()                 the epoch's graphs as one HeteroData, for the sampler
    full_scores(users)            (B, N) scores of every item, for full ranking
    item_representations()        (N, d) fused item representations Z, detached
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from slifmr import log
from slifmr.config import ModelConfig
from slifmr.data.format import Dataset
from slifmr.model.graphs import (
    Graph,
    KnnFn,
    KnowledgeGraph,
    correlation_graph,
    csr_rows,
    degree_sensitive_dropout,
    fuse_item_graph,
    static_graphs,
    to_csr,
    user_item_adjacency,
)
from slifmr.model.losses import bpr_loss, info_nce, l2_reg, softmax_loss
from slifmr.model.views import CFView, KGView, MMView
from slifmr.rng import derive_seed
from slifmr.sampling.neighbor import KG_TYPES, SIMILAR, VIEW_EDGE_TYPES, EdgeType, epoch_graph

Batch = tuple[Tensor, Tensor, Tensor]  # (users, positive items, negative items), each (B,)
# how the layer-wise inference splits rows across workers: (shard(n) -> [start, stop),
# all_gather_rows(block, n) -> (n, ...)); None = one process does every row
RowSharding = tuple[Callable[[int], tuple[int, int]], Callable[[Tensor, int], Tensor]]


class SLIFMR(nn.Module):
    def __init__(self, ds: Dataset, cfg: ModelConfig, knn_fn: KnnFn | None = None, seed: int = 0,
                 static_knn_fn: KnnFn | None = None):
        """knn_fn: S(t)'s top-k search (default exact, in-process); static_knn_fn: the search
        for the frozen multimodal graph (default exact); it must give the same graph whenever
        the model is rebuilt (the sharded exact search and faiss's single-thread build do)."""
        super().__init__()
        self.cfg = cfg
        self.num_users, self.num_items = ds.num_users, ds.num_items
        d = cfg.embedding_dim
        self.use_kg = cfg.use_kg and ds.kg.shape[0] > 0
        self.use_mm = cfg.use_mm and bool(ds.features)
        if cfg.use_kg and not self.use_kg:
            log.info(f"dataset {ds.name} has no knowledge graph: the KG view is off")
        if cfg.use_mm and not self.use_mm:
            log.info(f"dataset {ds.name} has no modality features: the multimodal view is off")
        self.knn_fn = knn_fn
        self.seed = seed
        # reseeded from (seed, epoch) in pre_epoch: the same on every rank, nothing to checkpoint
        self.generator = torch.Generator().manual_seed(seed)

        self.user_emb = nn.Embedding(self.num_users, d)
        self.item_emb = nn.Embedding(self.num_items, d)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)
        self.cf = CFView(cfg.ui_layers)

        self.ui_edges, self.base_mm = static_graphs(ds, cfg.k_mm, with_mm=self.use_mm, search=static_knn_fn)
        # frozen inputs are non-persistent buffers: model.to(device) moves them, checkpoints skip them
        self.modalities = sorted(ds.features) if self.use_mm else []
        for m in self.modalities:
            self.register_buffer(f"feature_{m}", torch.tensor(np.asarray(ds.features[m], dtype=np.float32)), persistent=False)
        if self.use_mm:
            dims = {m: self.features[m].shape[1] for m in self.modalities} if cfg.mm_view_features else {}
            self.mm = MMView(dims, d, cfg.mm_layers, cfg.mm_propagate_ids)
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
        self.row_sharding: RowSharding | None = None
        # sampled steps look table rows up with sparse gradients (a row-wise optimizer follows)
        self.sparse_tables = False
        self.inference_chunk = 65536  # rows of a sparse matrix multiplied at once in inference

    @property
    def features(self) -> dict[str, Tensor]:
        return {m: getattr(self, f"feature_{m}") for m in self.modalities}

    @property
    def device(self) -> torch.device:
        return self.user_emb.weight.device

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

    def _rows(self, table: nn.Embedding, idx: Tensor) -> Tensor:
        return F.embedding(idx, table.weight, sparse=self.sparse_tables)

    def _kg_rows(self, idx: Tensor) -> Tensor:
        """Rows of the KG node table (items first, then entities), looked up, not sliced."""
        is_item = idx < self.num_items
        out = torch.empty(idx.numel(), self.item_emb.embedding_dim, device=idx.device)
        out[is_item] = self._rows(self.item_emb, idx[is_item])
        out[~is_item] = self._rows(self.entity_emb, idx[~is_item] - self.num_items)
        return out

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

    def propagate(self, layerwise: bool = False) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(users (M, d), fused items z (N, d), views {cf, kg, mm, mm:<modality>} (N, d)).

        `layerwise` (inference, no autograd): every sparse product runs in row blocks, each
        worker its shard of rows, gathered after each layer, so no step holds the whole
        graph product at once and workers split the work."""
        if self.adj_train is None:
            raise RuntimeError("call pre_epoch(epoch, item_reps) before training or scoring")
        spmm = self._layerwise_spmm if layerwise else torch.sparse.mm
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        adj = self.adj_train if self.training else self.adj_full
        out = self.cf(ego, adj, spmm if layerwise else None)
        users, h_cf = out[: self.num_users], out[self.num_users :]
        views = {"cf": h_cf}
        if self.use_kg:
            views["kg"] = self.kg_view(self._kg_nodes(), self.num_items, spmm)
        if self.use_mm:
            views["mm"], per_mod = self.mm(self.item_emb.weight, self.features, self.adj_mm, spmm)
            views.update({f"mm:{m}": h for m, h in per_mod.items()})
        z, aux_sum = self._fuse(h_cf, self._aux(views))
        if self.cfg.user_aux and aux_sum is not None:
            users = users + torch.sparse.mm(self.user_item_mean, aux_sum)
        return users, z, views

    def _aux(self, views: dict[str, Tensor]) -> list[tuple[float, Tensor]]:
        return [(a, views[v]) for v, a in (("kg", self.cfg.alpha_kg), ("mm", self.cfg.alpha_mm)) if v in views]

    def _layerwise_spmm(self, adj: Tensor, x: Tensor) -> Tensor:
        n = adj.shape[0]
        start, stop = self.row_sharding[0](n) if self.row_sharding else (0, n)
        blocks = [csr_rows(adj, a, min(a + self.inference_chunk, stop)) @ x
                  for a in range(start, stop, self.inference_chunk)]
        mine = torch.cat(blocks) if blocks else x.new_zeros((0, x.shape[1]))
        return self.row_sharding[1](mine, n) if self.row_sharding else mine

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        users, pos, neg = (t.to(self.device) for t in batch)
        self._cache = None
        u_all, z, views = self.propagate()
        c = self.cfg
        parts = self._ranking_loss(u_all[users], z[pos], z[neg], pos, neg)
        parts["reg"] = c.lambda_reg * l2_reg(self.user_emb(users), self.item_emb(pos), self.item_emb(neg))
        if c.lambda_sc > 0 and len(views) > 1:
            parts["sc"] = c.lambda_sc * self._consistency(views, torch.cat([pos, neg]))
        if c.lambda_kg > 0 and self.use_kg:
            parts["kg"] = c.lambda_kg * self._transr_loss(users.numel())
        parts["loss"] = sum(parts.values())
        return parts

    # ------------------------------------------------------------------ sampled mini-batches

    def epoch_graph(self) -> HeteroData:
        """The epoch's training graphs (after pre_epoch) as one HeteroData for the sampler."""
        if self.adj_train is None:
            raise RuntimeError("call pre_epoch(epoch, item_reps) before sampling")
        return epoch_graph(self.num_users, self.num_items, self.kg_base.num_nodes - self.num_items if self.use_kg else 0,
                           self.adj_train, self.adj_mm if self.use_mm else None,
                           self.kg_view.att_full if self.use_kg else None)

    @staticmethod
    def _aggregate(b: HeteroData, x: dict[str, Tensor], edge_types: tuple[EdgeType, ...], hop: int,
                   targets: tuple[str, ...]) -> dict[str, Tensor]:
        """One sampled layer: messages into the nodes of hops <= `hop` of each target type,
        along the edges sampled in hops <= hop + 1 (PyG orders nodes and edges by hop, so
        both are prefixes: trim_to_layer's idea)."""
        dim = next(iter(x.values())).shape[1]
        dev = next(iter(x.values())).device
        out = {t: torch.zeros(sum(b[t].num_sampled_nodes[: hop + 1]), dim, device=dev) for t in targets}
        for et in edge_types:
            if et not in b.edge_types or et[2] not in out:
                continue
            n = sum(b[et].num_sampled_edges[: hop + 1])
            src, dst = b[et].edge_index[:, :n].to(dev)
            out[et[2]] = out[et[2]].index_add(0, dst, x[et[0]][src] * b[et].edge_weight[:n].to(dev)[:, None])
        return out

    def sampled_propagate(self, b: HeteroData) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The seeds' representations on a sampled subgraph: (users (U, d), z (I, d), views
        (I, d)) for the seed users and items (the first U / I nodes of each type). With every
        neighbour sampled this equals the rows of `propagate()`."""
        c, dev = self.cfg, self.device
        n_id = {t: b[t].n_id.to(dev) for t in b.node_types}
        seeds = {t: b[t].num_sampled_nodes[0] for t in b.node_types}
        items0 = self._rows(self.item_emb, n_id["item"])
        x = {"user": self._rows(self.user_emb, n_id["user"]), "item": items0}
        outs = {t: [x[t][: seeds[t]]] for t in ("user", "item")}
        for layer in range(c.ui_layers):
            x = self._aggregate(b, x, VIEW_EDGE_TYPES["cf"], c.ui_layers - 1 - layer, ("user", "item"))
            for t in outs:
                outs[t].append(x[t][: seeds[t]])
        users, h_cf = (torch.stack(outs[t]).mean(0) for t in ("user", "item"))
        views = {"cf": h_cf}
        if self.use_kg:
            x = {"item": items0, "entity": self._rows(self.entity_emb, n_id["entity"])}
            h_kg = items0[: seeds["item"]]
            for layer in range(c.kg_layers):
                hop = c.kg_layers - 1 - layer
                neigh = self._aggregate(b, x, KG_TYPES, hop, ("item", "entity"))
                x = {t: self.kg_view._layer(layer, x[t][: neigh[t].shape[0]], neigh[t]) for t in neigh}
                h_kg = h_kg + F.normalize(x["item"][: seeds["item"]], dim=1)
            views["kg"] = h_kg

        if self.use_mm:
            def propagate(h: Tensor) -> Tensor:
                for layer in range(c.mm_layers):
                    h = self._aggregate(b, {"item": h}, (SIMILAR,), c.mm_layers - 1 - layer, ("item",))["item"]
                return h[: seeds["item"]]

            projected = self.mm.project({m: f[n_id["item"]] for m, f in self.features.items()})
            views["mm"], per_mod = self.mm.combine(items0, projected, propagate)
            views.update({f"mm:{m}": h for m, h in per_mod.items()})
        z, _ = self._fuse(h_cf, self._aux(views))
        return users, z, views

    def sampled_loss(self, b: HeteroData) -> dict[str, Tensor]:
        """`loss` on the sampled subgraph of a batch (`slifmr.sampling.neighbor.BatchSubgraphs`)."""
        if self.cfg.user_aux:
            raise RuntimeError("model.user_aux needs every training item of a user: not with neighbor sampling")
        dev = self.device
        ui, pi, ni = (v.to(dev) for v in (b["user"].src_index, b["item"].dst_pos_index, b["item"].dst_neg_index))
        u, z, views = self.sampled_propagate(b)
        c = self.cfg
        users, items = b["user"].n_id.to(dev), b["item"].n_id.to(dev)
        parts = self._ranking_loss(u[ui], z[pi], z[ni], items[pi], items[ni])
        parts["reg"] = c.lambda_reg * l2_reg(self._rows(self.user_emb, users[ui]), self._rows(self.item_emb, items[pi]),
                                             self._rows(self.item_emb, items[ni]))
        if c.lambda_sc > 0 and len(views) > 1:
            parts["sc"] = c.lambda_sc * self._consistency(views, torch.arange(z.shape[0], device=dev))
        if c.lambda_kg > 0 and self.use_kg:
            parts["kg"] = c.lambda_kg * self._transr_loss(ui.numel())
        parts["loss"] = sum(parts.values())
        return parts

    def _ranking_loss(self, u: Tensor, pos: Tensor, neg: Tensor, pos_ids: Tensor, neg_ids: Tensor) -> dict[str, Tensor]:
        """{"bpr": ...} or {"softmax": ...} (model.loss) on (B, d) user, positive and negative rows."""
        if self.cfg.loss == "softmax":
            return {"softmax": softmax_loss(u, pos, neg, self.cfg.softmax_tau, pos_ids, neg_ids)}
        return {"bpr": bpr_loss(u, pos, neg)}

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
        w, e_r = self.kg_view.w_r[r], self.kg_view.relation(r)

        def dist(tail: Tensor) -> Tensor:
            return (torch.bmm(self._kg_rows(h).unsqueeze(1), w).squeeze(1) + e_r
                    - torch.bmm(self._kg_rows(tail).unsqueeze(1), w).squeeze(1)).pow(2).sum(1)

        return -F.logsigmoid(dist(t_neg) - dist(t)).mean()

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def _inference(self) -> tuple[Tensor, Tensor]:
        if self._cache is None:
            was_training = self.training
            self.eval()
            users, z, _ = self.propagate(layerwise=True)
            self.train(was_training)
            self._cache = (users, z)
        return self._cache

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores of every item for the given users (B,): u . z_i, or their cosine when
        trained with the softmax loss (which compares cosines)."""
        u, z = self._inference()
        u = u[users.to(u.device)]
        if self.cfg.loss == "softmax":
            u, z = F.normalize(u, dim=1), F.normalize(z, dim=1)
        return u @ z.T

    def representations(self) -> tuple[Tensor, Tensor]:
        """(users (M, d), fused items z (N, d)), detached: what `full_scores` multiplies (after
        normalising both with model.loss=softmax)."""
        return self._inference()

    def item_representations(self, items: Tensor | None = None) -> Tensor:
        """Fused item representations Z (N, d) (or the given rows), detached: the input of
        the next epoch's correlation graph."""
        z = self._inference()[1]
        return z if items is None else z[items.to(z.device)]

