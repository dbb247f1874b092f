"""The self-loop's ridge head as one component (architecture.md §1, "the ridge head"): it owns
the neighbourhood rule, the Gram entries, the solves, the blend with the embeddings, the choice
of all of these on validation, and its state in the checkpoint. The training loop composes it
beside the self-loop; `epoch_graphs` knows nothing of it.

The head scores x_u W (slifmr/model/ridge.py): item j regressed on its neighbours N_j,

    w_j = (G[N_j, N_j] + l2 I)^-1 G[N_j, j],    G = X^T X

and the ranking is standardise(u . z) + eta standardise(x_u W) (`Representations`). What the
data should decide, the run decides on its own validation users (architecture.md §3), as EASE
chooses its lambda (Steck, WWW 2019): with model.ridge_neighbours auto,

1. every rule of model.ridge_rules (z: Z(t-1)'s nearest neighbours; cooc: the most co-occurring
   items; union: half of each; full: every other item, i.e. the EASE head, Steck 2019 eq. 8,
   where the catalogue has at most model.ridge_full_max_items items) with every k of
   model.ridge_k_choices and every l2 of model.ridge_l2_choices is solved and scored alone on
   validation; each (rule, k) keeps its best l2;
2. those heads are blended with the epoch's embeddings at every weight of model.ridge_blend,
   and the best (head, weight) by train.stop_metric is the head. The largest weights leave the
   embeddings only the head's ties to break, so the head alone, which is what `ease` and
   `cooc_ridge` rank with, is always a candidate.

Both stages run at the first validation that has a head to choose, again at the first after
Z(t-1) exists (the z and union rules join), and whenever Z(t-1)'s neighbourhoods have changed
much since the last tuning (less than model.ridge_rechoose_overlap of their first neighbours
shared); the Z-free candidates (cooc, full) are tuned once per run and kept. Every
model.ridge_rechoose_every fusions stage 2 runs again (the candidates that read Z re-solved on
the new neighbourhoods at their tuned l2): Z(t-1) keeps training, so a head that lost early may
win later. Otherwise each fusion re-solves the head in use (when its rule reads Z) and each
validation chooses only its blend, at the cost the fixed head always had. With a fixed
rule (model.ridge_neighbours z, cooc, union or full) there is one candidate, at ridge_k and
ridge_l2, and only the blend is chosen. Validation only, never test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from slifmr import log
from slifmr.config import HeadConfig
from slifmr.data.format import VALID
from slifmr.distributed.collectives import Comm
from slifmr.evaluation import Evaluator
from slifmr.model.cooc_ridge import cooccurrence_neighbours
from slifmr.model.ease import ease_weights
from slifmr.model.graphs import StaticGraphs
from slifmr.model.propagate import RowSharding
from slifmr.model.ridge import (
    ItemGram,
    csr_product,
    first_distinct,
    item_gram,
    ridge_scores,
    ridge_weights,
)
from slifmr.model.slifmr import Representations

Z_RULES = ("z", "union")  # rules that read Z(t-1)'s neighbours
OVERLAP_COLUMNS = 20  # how many of each item's first Z neighbours the re-choice compares


def row_sharding(comm: Comm) -> RowSharding | None:
    """Each worker's block of rows and the all-gather that joins them (None in one process)."""
    return (comm.shard, comm.all_gather_rows) if comm.world_size > 1 else None


@dataclass(frozen=True)
class HeadSpec:
    """One ridge head: its neighbourhood rule (z | cooc | union | full), its regressors per item
    k (N - 1 for full) and its ridge weight l2 > 0."""

    rule: str
    k: int
    l2: float

    def __str__(self) -> str:
        return f"{self.rule} k={self.k} l2={self.l2:g}"


def content_map(static: StaticGraphs) -> Tensor | None:
    """(N, N) CSR M with W'^T = M W^T: identity on the items with training interactions, and on
    each item without one the row of the multimodal kNN graph A_mm normalised to sum 1, so its
    head score is the mean of its content neighbours' (x_u W'_i = sum_j a_ij x_u W_j). None
    without A_mm or without such items."""
    n = static.num_items
    degree = torch.bincount(static.ui_edges[1].cpu(), minlength=n)
    cold = degree == 0
    if static.mm is None or not bool(cold.any()):
        return None
    (src, dst), weight = static.mm[0].cpu(), static.mm[1].cpu().float()
    keep = cold[src]
    rows, cols, vals = src[keep], dst[keep], weight[keep]
    total = torch.zeros(n).index_add_(0, rows, vals)
    warm = torch.nonzero(~cold).squeeze(1)
    rows, cols = torch.cat([rows, warm]), torch.cat([cols, warm])
    vals = torch.cat([vals / total[rows[: vals.numel()]].clamp_min(1e-12), torch.ones(warm.numel())])
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n)).coalesce().to_sparse_csr()


class RidgeHead:
    """The ridge head of one run. It keeps one candidate head per (rule, k) (`heads`: spec, W^T,
    with the l2 its last tuning chose), the head in use (`spec`, its regressors `neighbours`
    (N, k) int32, None for full, and W^T `weights_t`: (N, N) CSR, or dense for full), the blend
    `blend` validation chose and the last choice's record `choice`. `state_dict` is what a
    checkpoint keeps: W is solved again from it (`load_state_dict`)."""

    def __init__(self, cfg: HeadConfig, static: StaticGraphs, comm: Comm, place_cold: bool = False):
        self.cfg, self.comm = cfg, comm
        # items with no training interaction scored as the mean of their content neighbours
        # (model.place_cold_items): W^T's rows mapped once per solve by this (N, N) CSR
        self.cold_map = content_map(static) if place_cold else None
        self.ui_edges, self.num_users, self.num_items = static.ui_edges.cpu(), static.num_users, static.num_items
        self.interactions = static.interactions
        self.sharding = row_sharding(comm)
        n = self.num_items
        self.auto = cfg.neighbours == "auto"
        if self.auto:
            self.rules = [r for r in cfg.rules if r != "full" or 1 < n <= cfg.full_max_items]
            self.ks = sorted({min(k, n - 1) for k in (cfg.k_choices or [cfg.k])})
            self.l2s = sorted(set(cfg.l2_choices) | {cfg.l2})
        else:
            self.rules, self.ks, self.l2s = [cfg.neighbours], [min(cfg.k, n - 1)], [cfg.l2]
        self.blends = list(cfg.blend) + ([cfg.weight] if cfg.weight not in cfg.blend else [])
        self.gram: ItemGram = item_gram(self.ui_edges, self.num_users, n)  # once per run: X never changes
        self._dense_gram: Tensor | None = None  # X^T X (N, N) float64 for the full rule
        self.cooc: Tensor | None = None  # (N, max k): the most co-occurring items, once per run
        if any(r in ("cooc", "union") for r in self.rules):
            start = time.perf_counter()
            self.cooc = cooccurrence_neighbours(self.ui_edges, self.num_users, n, max(self.ks), self.sharding).int()
            if comm.is_main:
                log.info(f"the ridge head's co-occurrence neighbourhoods: {time.perf_counter() - start:.1f} s (once per run)")
        self.heads: dict[tuple[str, int], tuple[HeadSpec, Tensor]] = {}
        self.tuned: list[dict[str, Any]] = []  # the last tuning's (rule, k, l2, valid) rows
        self.spec: HeadSpec | None = None
        self.neighbours: Tensor | None = None
        self.weights_t: Tensor | None = None
        self.blend: float | None = None
        self.choice: dict[str, Any] | None = None
        self.z_neighbours: Tensor | None = None  # the latest fusion's (N, search_k) Z(t-1) neighbours
        self.z_at_tuning: Tensor | None = None  # their first columns when l2 was last tuned
        self.tune_due = False  # the candidates' l2 tuned again at the next validation
        self.choice_due = False  # the candidates compared again (heads x blends) at the next validation
        self.fusions_since_choice = 0
        self.seconds = {"ridge": 0.0, "choice": 0.0}

    @classmethod
    def build(cls, cfg: HeadConfig, static: StaticGraphs, comm: Comm, place_cold: bool = False) -> RidgeHead | None:
        """The run's head from its config section (`ModelConfig.head`; None without one:
        model.ridge_weight 0, no self-loop, one item);
        `place_cold`: items without training interactions take their content neighbours' scores."""
        return cls(cfg, static, comm, place_cold) if cfg.enabled and static.num_items > 1 else None

    @property
    def search_k(self) -> int:
        """How many of Z(t-1)'s nearest neighbours the fusion's search must return for the head."""
        return max(self.ks) if any(r in Z_RULES for r in self.rules) else 0

    def _keys(self) -> list[tuple[str, int]]:
        """The (rule, k) of every candidate head that can exist now: z needs Z(t-1); union under
        auto too (before it, union is cooc); full has one k, N - 1."""
        keys = []
        for rule in self.rules:
            if rule == "z" and self.z_neighbours is None or rule == "union" and self.auto and self.z_neighbours is None:
                continue
            keys += [(rule, self.num_items - 1)] if rule == "full" else [(rule, k) for k in self.ks]
        return keys

    # ------------------------------------------------------------------ per epoch

    def begin_epoch(self, z_neighbours: Tensor | None) -> float:
        """The epoch's candidate heads before its steps. `z_neighbours` (N, >= search_k): the
        neighbours of this epoch's fusion search (None when the epoch did not fuse): the heads
        whose rule reads them are solved again on them, at their l2. Under auto, new candidates
        and neighbourhoods that changed much make a tuning of l2 due at validation (it solves
        those heads itself). Returns the seconds of the solves."""
        start = time.perf_counter()
        if z_neighbours is not None:
            self.z_neighbours = z_neighbours.cpu().int()
            if self.auto and any(r in Z_RULES for r in self.rules) and self._changed_much():
                self.tune_due = True
            self.fusions_since_choice += 1
            if self.auto and len(self.heads) > 1 and self.fusions_since_choice >= self.cfg.rechoose_every > 0:
                self.choice_due = True  # Z(t-1) has trained on: the candidates compared again, at their l2
        for key in self._keys():
            if key not in self.heads:
                if self.auto:
                    self.tune_due = True
                else:
                    self.heads[key] = self._solved(HeadSpec(key[0], key[1], self.l2s[0]))
        if z_neighbours is not None and self.spec is not None and not self.tune_due:
            # the head in use on the new neighbourhoods (the other candidates wait for the next
            # choice), or every candidate that reads Z when a choice is due
            for key, (spec, _) in list(self.heads.items()):
                if spec.rule in Z_RULES and (self.choice_due or spec == self.spec):
                    self.heads[key] = self._solved(spec)
            if self.spec.rule in Z_RULES:
                self.weights_t = self.heads[(self.spec.rule, self.spec.k)][1]
                self.neighbours = self._regressors(self.spec.rule, self.spec.k)
        self.seconds["ridge"] = time.perf_counter() - start
        return self.seconds["ridge"]

    def validate(self, evaluator: Evaluator, reps: Representations, stop_metric: str,
                 all_reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """The epoch's validation metrics: l2 tuned first when due (each candidate alone), then
        the head and its blend chosen among the candidates x model.ridge_blend, all by
        `stop_metric` on the validation split alone."""
        start = time.perf_counter()
        if self.tune_due:
            self._tune(evaluator, stop_metric, all_reduce)
        if self.heads and (self.tune_due or self.choice_due or self.spec is None):  # (a fixed rule: its first solve)
            valid = self._choose(evaluator, reps, stop_metric, all_reduce, list(self.heads.values()))
            self.tune_due = self.choice_due = False
            self.fusions_since_choice = 0
        elif self.spec is not None:  # between tunings: the blend of the head in use
            valid = self._choose(evaluator, reps, stop_metric, all_reduce, [(self.spec, self.weights_t)])
        else:
            valid = evaluator.evaluate(reps.full_scores, VALID, all_reduce)
        self.seconds["choice"] = time.perf_counter() - start
        return valid

    def attach(self, reps: Representations) -> Representations:
        """`reps` ranked with the head in use and its blend."""
        if self.weights_t is None:
            return reps
        weight = self.blend if self.blend is not None else self.cfg.weight
        return replace(reps, item_ridge=self.weights_t.to(reps.items.device),
                       interactions=self.interactions.to(reps.items.device), ridge_weight=weight)

    def summary(self) -> dict[str, Any] | None:
        """The head in use for metrics.jsonl and results.json: rule, k, l2, blend (None without one)."""
        if self.spec is None:
            return None
        return {**asdict(self.spec), "blend": self.blend}

    # ------------------------------------------------------------------ the choice

    def _tune(self, evaluator: Evaluator, stop_metric: str, all_reduce: Callable[[Tensor], Tensor] | None) -> None:
        """Each new or Z-dependent candidate (rule, k) solved at every l2 and scored alone on
        validation; it keeps its best l2. Z-free candidates are tuned once per run."""
        rows = [r for r in self.tuned if r["rule"] not in Z_RULES]
        for key in self._keys():
            if key in self.heads and key[0] not in Z_RULES:
                continue  # its neighbourhoods never change: tuned once
            specs = [HeadSpec(key[0], key[1], l2) for l2 in self.l2s]
            nbrs = self._regressors(key[0], key[1])
            solved = [self._solve(s, nbrs) for s in specs]
            scores = evaluator.evaluate_candidates(lambda users, ws=solved: self._alone(users, ws), len(solved),
                                                   VALID, all_reduce)
            i = max(range(len(specs)), key=lambda j: (scores[j][stop_metric], -j))
            self.heads[key] = (specs[i], solved[i])
            rows += [{**asdict(s), "valid": sc[stop_metric]} for s, sc in zip(specs, scores, strict=True)]
        self.tuned = rows
        self.z_at_tuning = None if self.z_neighbours is None else self.z_neighbours[:, :OVERLAP_COLUMNS].clone()
        if self.comm.is_main:
            best = {}
            for r in rows:
                key = (r["rule"], r["k"])
                best[key] = max(best.get(key, r), r, key=lambda x: x["valid"])
            log.info("ridge head l2 tuned on validation, each head alone: " + ", ".join(
                f"{r['rule']} k={r['k']} l2={r['l2']:g} {stop_metric} {r['valid']:.4f}" for r in best.values()))

    def _choose(self, evaluator: Evaluator, reps: Representations, stop_metric: str,
                all_reduce: Callable[[Tensor], Tensor] | None,
                heads: list[tuple[HeadSpec, Tensor]]) -> dict[str, float]:
        """`heads` x the blend grid with the epoch's embeddings, in one pass over the
        validation users; the best is the head in use. Returns its metrics."""
        blends = self.blends
        x = self.interactions.to(reps.items.device)

        def scores_fn(users: Tensor) -> Iterator[Tensor]:
            for _, w in heads:
                yield from replace(reps, item_ridge=w, interactions=x).blends(users, blends)

        scores = evaluator.evaluate_candidates(scores_fn, len(heads) * len(blends), VALID, all_reduce)
        i = max(range(len(scores)), key=lambda j: (scores[j][stop_metric], -j))
        spec, w = heads[i // len(blends)]
        if spec != self.spec and self.comm.is_main and len(heads) > 1:
            log.info(f"ridge head chosen on validation: {spec}, blend {blends[i % len(blends)]:g} "
                     f"({stop_metric} {scores[i][stop_metric]:.4f})")
        self.spec, self.weights_t, self.blend = spec, w, blends[i % len(blends)]
        self.neighbours = None if spec.rule == "full" else self._regressors(spec.rule, spec.k)
        blended = [{**asdict(s), "blend": b, "valid": scores[j * len(blends) + m][stop_metric]}
                   for j, (s, _) in enumerate(heads) for m, b in enumerate(blends)]
        if len(heads) > 1 or self.choice is None:  # a choice of the head, not only of its blend
            self.choice = {"heads_alone": self.tuned, "blended": blended}
        self.choice.update({**asdict(spec), "blend": self.blend, "valid": scores[i][stop_metric], "metric": stop_metric})
        return scores[i]

    def _alone(self, users: Tensor, weights: list[Tensor]) -> Iterator[Tensor]:
        for w in weights:
            yield ridge_scores(self.interactions, w, users)

    def _changed_much(self) -> bool:
        """Whether Z(t-1)'s neighbourhoods share less than model.ridge_rechoose_overlap of their
        first OVERLAP_COLUMNS entries with those of the last tuning (always before the first)."""
        if self.z_at_tuning is None:
            return True
        now = self.z_neighbours[:, : self.z_at_tuning.shape[1]]
        shared = (now[:, :, None] == self.z_at_tuning[:, None, :]).any(2).float().mean()
        return float(shared) < self.cfg.rechoose_overlap

    # ------------------------------------------------------------------ solves

    def _solved(self, spec: HeadSpec) -> tuple[HeadSpec, Tensor]:
        return spec, self._solve(spec, self._regressors(spec.rule, spec.k))

    def _regressors(self, rule: str, k: int) -> Tensor | None:
        """N_j (N, k) int32 under `rule`: Z(t-1)'s nearest neighbours (z), the most co-occurring
        items (cooc), or half the co-occurring ones, then Z's, then more co-occurring ones
        (union; the co-occurring items alone before Z(t-1) exists); None for full."""
        if rule == "full":
            return None
        if rule == "z":
            return self.z_neighbours[:, :k]
        cooc = self.cooc[:, :k]
        if rule == "cooc" or self.z_neighbours is None:
            return cooc
        half = (k + 1) // 2
        return first_distinct(torch.cat([cooc[:, :half], self.z_neighbours[:, :k], cooc[:, half:]], 1), k)

    def _solve(self, spec: HeadSpec, neighbours: Tensor | None) -> Tensor:
        """W^T for `spec`: (N, N) CSR solved on the run's device, each worker its block of items,
        one all-gather; for full, EASE's dense closed form (Steck 2019, eq. 8) transposed."""
        if spec.rule == "full":
            if self._dense_gram is None:  # once per run
                x = self.interactions.double()
                self._dense_gram = (x.t().coalesce() @ x).to_dense()
            w_t = ease_weights(self._dense_gram, spec.l2).T
            return w_t if self.cold_map is None else (self.cold_map @ w_t).T.contiguous().T  # W row-major, as ease_weights'
        w_t = ridge_weights(self.ui_edges, self.num_users, self.num_items, neighbours, spec.l2, self.gram,
                            self.sharding, self.comm.device)
        return w_t if self.cold_map is None else csr_product(self.cold_map, w_t)

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "ridge_weight": self.blend,
                "head": None if self.spec is None else {
                    **asdict(self.spec), "choice": self.choice, "tuned": self.tuned,
                    "candidates": [asdict(s) for s, _ in self.heads.values()],
                    "z_at_tuning": self.z_at_tuning, "z_neighbours": self.z_neighbours,
                    "fusions_since_choice": self.fusions_since_choice}}

    def best_state(self) -> dict[str, Any]:
        """What best/ keeps: the head in use and its blend, not the other candidates."""
        state = self.state_dict()
        if state["head"] is not None:
            state["head"] = {**state["head"], "candidates": [], "z_at_tuning": None, "z_neighbours": None}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The head of a checkpoint, W (and every candidate's) solved again from it. A
        checkpoint from before the head was a component (no "head" entry) used the config's
        fixed rule, ridge_k and ridge_l2."""
        head = state.get("head")
        self.neighbours, self.blend = state.get("neighbours"), state.get("ridge_weight")
        self.heads, self.spec, self.weights_t = {}, None, None
        self.tune_due = self.choice_due = False
        if head is not None:
            self.spec = HeadSpec(head["rule"], int(head["k"]), float(head["l2"]))
            self.choice, self.tuned = head.get("choice"), head.get("tuned") or []
            self.z_at_tuning, self.z_neighbours = head.get("z_at_tuning"), head.get("z_neighbours")
            self.fusions_since_choice = int(head.get("fusions_since_choice") or 0)
        elif self.neighbours is not None:
            rule = "z" if self.auto else self.cfg.neighbours
            self.spec = HeadSpec(rule, int(self.neighbours.shape[1]), self.cfg.l2)
        if self.spec is None:
            return
        # the candidates in their saved order: the choice breaks ties by it, so a resumed run
        # must see them as the uninterrupted one did; the head in use on the neighbourhoods it
        # was solved on
        self.weights_t = self._solve(self.spec, self.neighbours)
        candidates = [HeadSpec(c["rule"], int(c["k"]), float(c["l2"])) for c in (head or {}).get("candidates") or []]
        for spec in candidates if self.spec in candidates else [*candidates, self.spec]:
            self.heads[(spec.rule, spec.k)] = (spec, self.weights_t) if spec == self.spec else self._solved(spec)


def choose_blend(evaluator: Evaluator, reps: Representations, cfg: HeadConfig, stop_metric: str,
                 all_reduce: Callable[[Tensor], Tensor] | None = None) -> tuple[float | None, dict[str, float]]:
    """The ridge head's blend chosen on validation: the validation metrics of the ranking with
    each weight of the blend grid `cfg.blend` and the representations' own, and the weight whose `stop_metric`
    is highest (the first of equals). Returns (that weight, its validation metrics); (None, the
    metrics of `reps` as they are) without the head or a blend grid. Reads the validation split only."""
    if not reps.has_head or reps.ridge_weight <= 0 or not cfg.blend:
        return None, evaluator.evaluate(reps.full_scores, VALID, all_reduce)
    weights = list(cfg.blend) + ([reps.ridge_weight] if reps.ridge_weight not in cfg.blend else [])
    scores = evaluator.evaluate_candidates(lambda users: reps.blends(users, weights), len(weights), VALID, all_reduce)
    best = max(range(len(weights)), key=lambda i: (scores[i][stop_metric], -i))
    return weights[best], scores[best]
