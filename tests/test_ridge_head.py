"""The ridge head as one component (slifmr/training/ridge_head.py): its candidates, the EASE
head, the choice on validation (never test) and its state in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import evaluated_splits, tiny

from slifmr.config import load_config
from slifmr.data.format import TEST, VALID, Dataset
from slifmr.distributed.checkpoint import load_checkpoint
from slifmr.distributed.collectives import Comm
from slifmr.model.ease import EASE
from slifmr.model.graphs import StaticGraphs
from slifmr.training import train_loop
from slifmr.training.ridge_head import HeadSpec, RidgeHead

FAST = ["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.batch_size=256", "model.ridge_k=6",
        "model.ease_l2=1,10,100", "model.ridge_l2=10"]


def head_for(ds: Dataset, *overrides: str) -> RidgeHead:
    cfg = load_config(overrides=[*FAST, *overrides])
    head = RidgeHead.build(cfg.model.head, StaticGraphs.from_dataset(ds, cfg.model), Comm())
    assert head is not None
    return head


@pytest.mark.parametrize("l2", [1.0, 10.0, 100.0])
def test_the_full_rule_is_ease(tiny_ds: Dataset, l2: float) -> None:
    """The head with every other item as neighbours scores what variant ease scores."""
    head = head_for(tiny_ds, "model.ridge_neighbours=full", f"model.ridge_l2={l2}")
    head.begin_epoch(None)
    assert head.spec is None and head.heads[("full", tiny_ds.num_items - 1)][0] == HeadSpec("full", 39, l2)
    w_t = head.heads[("full", 39)][1]
    ease = EASE(tiny_ds)
    ease.fit(l2)
    torch.testing.assert_close(w_t.T, ease.weights)
    users = torch.arange(tiny_ds.num_users)
    torch.testing.assert_close(next(head._alone(users, [w_t])), ease.full_scores(users))


def test_candidates_are_every_rule_and_size_that_can_exist(tiny_ds: Dataset) -> None:
    head = head_for(tiny_ds, "model.ridge_k_choices=4,6", "model.ridge_full_max_items=39")
    assert head.rules == ["z", "cooc", "union"]  # 40 items: above ridge_full_max_items, no EASE head
    assert head.search_k == 6 and head.l2s == [1.0, 10.0, 100.0]
    assert head._keys() == [("cooc", 4), ("cooc", 6)]  # before Z(t-1): the Z-free rules only
    head.z_neighbours = torch.stack([torch.roll(torch.arange(40), -j)[1:7] for j in range(40)]).int()
    assert head._keys() == [("z", 4), ("z", 6), ("cooc", 4), ("cooc", 6), ("union", 4), ("union", 6)]
    assert head_for(tiny_ds, "model.ridge_rules=cooc").search_k == 0  # no rule reads Z: no wider search


def test_auto_chooses_on_validation_only_and_includes_the_peers(tiny_path: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every evaluation before the end is on validation; the tuned candidates alone score what
    the closed-form peers score at each l2 (the EASE head is ease, cooc is cooc_ridge), so
    the choice is made among them; results.json and metrics.jsonl say what was chosen."""
    splits = evaluated_splits(monkeypatch)
    cfg = load_config(overrides=[*FAST, "train.epochs=3"])
    cfg.data = str(tiny_path)
    results = train_loop(cfg, tmp_path / "run")
    assert splits[:-1] == [VALID] * (len(splits) - 1) and splits[-1] == TEST  # test once, last
    monkeypatch.undo()  # the peers below are not spied on
    head = results["head"]
    assert {"rule", "k", "l2", "blend"} <= set(head) and head["blend"] in cfg.model.ridge_blend
    alone = {(r["rule"], r["l2"]): r["valid"] for r in head["choice"]["heads_alone"]}
    for variant, rule in (("ease", "full"), ("cooc_ridge", "cooc")):
        peer = load_config(variant=variant, overrides=FAST)
        peer.data = str(tiny_path)
        train_loop(peer, tmp_path / variant)
        lines = [json.loads(x) for x in (tmp_path / variant / "metrics.jsonl").read_text().splitlines()]
        for line in lines:
            assert alone[(rule, line["l2"])] == pytest.approx(line["valid"]["recall@20"], abs=1e-12)
    chosen = max(head["choice"]["blended"], key=lambda r: r["valid"])["valid"]
    assert head["choice"]["valid"] == chosen
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["head"]["rule"] in ("cooc", "full")  # before Z(t-1) exists
    assert lines[results["best_epoch"] - 1]["head"] == {k: head[k] for k in ("rule", "k", "l2", "blend")}


def test_a_resumed_head_is_the_saved_one(tiny_path: Path, tmp_path: Path) -> None:
    """The checkpoint keeps the head in use, its candidates and the search's neighbours: a
    resumed run solves the same W and continues with the same candidates, in the same order."""
    cfg = load_config(overrides=[*FAST, "train.epochs=2"])
    cfg.data = str(tiny_path)
    train_loop(cfg, tmp_path / "run")
    ckpt, _ = load_checkpoint(tmp_path / "run" / "checkpoint")
    ds = tiny()
    again = head_for(ds)
    again.load_state_dict(ckpt)
    assert asdictish(again.spec) == {k: ckpt["head"][k] for k in ("rule", "k", "l2")}
    assert [(c["rule"], c["k"]) for c in ckpt["head"]["candidates"]] == list(again.heads)
    # in the saved order, whichever place the head in use has: the choice breaks ties by it
    # (cooc at k = N - 1 and full can tie), so a resumed run must see them as the first run did
    in_use = next(c for c in ckpt["head"]["candidates"] if asdictish(again.spec) == c)
    for order in (lambda cs: [in_use, *[c for c in cs if c != in_use]], lambda cs: [*[c for c in cs if c != in_use], in_use]):
        moved = {**ckpt, "head": {**ckpt["head"], "candidates": order(ckpt["head"]["candidates"])}}
        again.load_state_dict(moved)
        assert [(c["rule"], c["k"]) for c in moved["head"]["candidates"]] == list(again.heads)
    best, _ = load_checkpoint(tmp_path / "run" / "best")
    assert best["head"]["candidates"] == [] and best["head"]["z_neighbours"] is None  # best/ keeps the head in use


def asdictish(spec: HeadSpec | None) -> dict:
    assert spec is not None
    return {"rule": spec.rule, "k": spec.k, "l2": spec.l2}


def test_the_candidates_are_compared_again_as_z_trains(tiny_path: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 1 chooses among the Z-free heads (cooc, full); the first fusion adds z and union;
    then every model.ridge_rechoose_every fusions all four are compared again, and in between
    only the blend of the head in use is chosen."""
    compared: list[int] = []
    choose = RidgeHead._choose

    def spy(self, evaluator, reps, stop_metric, all_reduce, heads):  # noqa: ANN001, ANN202
        compared.append(len(heads))
        return choose(self, evaluator, reps, stop_metric, all_reduce, heads)

    monkeypatch.setattr(RidgeHead, "_choose", spy)
    cfg = load_config(overrides=[*FAST, "train.epochs=6", "model.ridge_rechoose_every=2",
                                 "model.ridge_rechoose_overlap=0"])  # l2 never tuned again
    cfg.data = str(tiny_path)
    train_loop(cfg, tmp_path / "run")
    assert compared == [2, 4, 1, 4, 1, 4]
