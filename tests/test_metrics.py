from __future__ import annotations

import math

import numpy as np
import torch

from slifmr.data.format import TEST, TRAIN, VALID, Dataset
from slifmr.evaluation import Evaluator, metric_sums


def test_metrics_match_hand_computed_values() -> None:
    # one user, 6 items; ranking by score: 0, 1, 2, 3, 4, 5; relevant items {1, 4, 5}
    scores = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    truth = torch.tensor([[False, True, False, False, True, True]])
    s = metric_sums(scores, truth, [2, 5])
    assert s["users"] == 1
    assert math.isclose(s["recall@2"], 1 / 3, rel_tol=1e-6)
    assert math.isclose(s["precision@2"], 1 / 2, rel_tol=1e-6)
    assert s["hit@2"] == 1
    dcg2 = 1 / math.log2(3)
    idcg2 = 1 + 1 / math.log2(3)
    assert math.isclose(s["ndcg@2"], dcg2 / idcg2, rel_tol=1e-6)
    dcg5 = 1 / math.log2(3) + 1 / math.log2(6)
    idcg5 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert math.isclose(s["ndcg@5"], dcg5 / idcg5, rel_tol=1e-6)
    assert math.isclose(s["recall@5"], 2 / 3, rel_tol=1e-6)
    assert math.isclose(s["precision@5"], 2 / 5, rel_tol=1e-6)


def test_users_without_ground_truth_are_not_counted() -> None:
    scores = torch.randn(3, 5)
    truth = torch.zeros(3, 5, dtype=torch.bool)
    truth[1, 2] = True
    s = metric_sums(scores, truth, [3])
    assert s["users"] == 1


def _toy() -> Dataset:
    # user 0: train {0, 1}, valid {2}, test {3}; user 1: train {4}, valid {0}, test {1}
    user = np.array([0, 0, 0, 0, 1, 1, 1])
    item = np.array([0, 1, 2, 3, 4, 0, 1])
    split = np.array([TRAIN, TRAIN, VALID, TEST, TRAIN, VALID, TEST], np.int8)
    return Dataset("toy", 2, 5, user, item, split)


def test_masks_training_for_valid_and_train_plus_valid_for_test() -> None:
    ds = _toy()
    ev = Evaluator(ds, [1], chunk_size=1)
    # scores put the masked items first: if masks failed, top-1 would be a seen item
    base = torch.tensor([[9.0, 8.0, 1.0, 0.5, 0.0], [7.0, 0.5, 0.0, 0.0, 9.0]])

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        return base[users]

    v = ev.evaluate(score_fn, VALID)
    # user 0: train {0,1} masked -> top is item 2 (valid hit); user 1: item 4 masked -> item 0 (valid hit)
    assert v["recall@1"] == 1.0 and v["hit@1"] == 1.0
    t = ev.evaluate(score_fn, TEST)
    # user 0: {0,1,2} masked -> item 3 (test hit); user 1: {4,0} masked -> item 1 (test hit)
    assert t["recall@1"] == 1.0


def test_sums_all_reduce_the_same_as_one_process() -> None:
    ds = _toy()
    base = torch.randn(2, 5)
    full = Evaluator(ds, [2]).evaluate(lambda u: base[u], TEST)
    parts = [Evaluator(ds, [2], users=torch.tensor([u])).sums(lambda u: base[u], TEST) for u in (0, 1)]
    merged = {k: parts[0][k] + parts[1][k] for k in parts[0]}
    assert math.isclose(float(merged["recall@2"] / merged["users"]), full["recall@2"], rel_tol=1e-6)


def test_metrics_equal_torch_geometric_link_pred_metrics_on_fixed_lists() -> None:
    from torch_geometric.metrics import (
        LinkPredAveragePopularity,
        LinkPredCoverage,
        LinkPredHitRatio,
        LinkPredMAP,
        LinkPredMRR,
        LinkPredNDCG,
        LinkPredPrecision,
        LinkPredRecall,
    )

    from slifmr.evaluation import long_tail

    g = torch.Generator().manual_seed(3)
    users, items, ks = 40, 30, [5, 10]
    scores = torch.randn(users, items, generator=g)
    truth = torch.rand(users, items, generator=g) < 0.15
    truth[0] = False  # a user without ground truth counts in neither
    popularity = torch.randint(0, 50, (items,), generator=g).double()
    tail = long_tail(popularity)
    sums = metric_sums(scores, truth, ks, popularity, tail)
    n = float(sums["users"])
    counted = truth.any(1)
    top = torch.topk(scores[counted], max(ks), dim=1).indices
    label = truth[counted].nonzero().T
    for k in ks:
        for name, metric in (("recall", LinkPredRecall(k)), ("ndcg", LinkPredNDCG(k)), ("precision", LinkPredPrecision(k)),
                             ("hit", LinkPredHitRatio(k)), ("mrr", LinkPredMRR(k)), ("map", LinkPredMAP(k)),
                             ("arp", LinkPredAveragePopularity(k, popularity))):
            metric.update(top, label)
            assert math.isclose(float(sums[f"{name}@{k}"]) / n, float(metric.compute()), rel_tol=1e-5), name
        coverage = LinkPredCoverage(k, items)
        coverage.update(top, label)
        assert math.isclose(float((sums[f"items@{k}"] > 0).double().mean()), float(coverage.compute()), rel_tol=1e-6)
        share = tail[top[:, :k]].double().mean(1).mean()
        assert math.isclose(float(sums[f"tail@{k}"]) / n, float(share), rel_tol=1e-9)
    assert int((~tail).sum()) == round(0.2 * items) and popularity[~tail].min() >= popularity[tail].max()


def test_evaluator_reports_every_metric_and_coverage_over_all_users() -> None:
    ds = _toy()
    ev = Evaluator(ds, [1, 2])
    out = ev.evaluate(lambda u: torch.arange(ds.num_items, dtype=torch.float32).flip(0).expand(u.numel(), -1), VALID)
    for m in ("recall", "ndcg", "precision", "hit", "mrr", "map", "arp", "tail", "coverage"):
        assert f"{m}@1" in out and f"{m}@2" in out
    assert 0 < out["coverage@2"] <= 1


def test_stop_metric_can_be_any_higher_is_better_metric() -> None:
    import pytest

    from slifmr.config import load_config
    from slifmr.errors import ConfigError

    for m in ("mrr@20", "map@10", "coverage@20", "tail@20"):
        assert load_config(overrides=[f"train.stop_metric={m}"]).train.stop_metric == m
    with pytest.raises(ConfigError, match="train.stop_metric must be one of"):
        load_config(overrides=["train.stop_metric=arp@20"])  # lower is better: not a stopping metric
