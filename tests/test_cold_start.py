"""The cold-start item protocol (slifmr/data/cold.py): held-out items have no training
interaction, their metrics are reported alone, and what cannot place them says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

from slifmr.cli import main
from slifmr.data.cold import cold_items, hold_out_items
from slifmr.data.format import TEST, TRAIN, VALID, read_dataset, write_dataset
from slifmr.evaluation import Evaluator
from slifmr.model.content_knn import ContentKNN


def test_held_out_items_leave_training_and_nothing_else_moves(tmp_path: Path) -> None:
    ds = tiny()
    cold_ds = hold_out_items(ds, 0.2, seed=3)
    cold = cold_items(cold_ds)
    assert cold is not None and cold.sum() == 8 and cold_items(ds) is None
    on_cold = cold[cold_ds.item]
    assert not (cold_ds.split[on_cold] == TRAIN).any()
    assert set(np.unique(cold_ds.split[on_cold])) == {VALID, TEST}
    kept = np.isin(np.arange(ds.num_users), np.unique(cold_ds.user)).all()  # tiny: every user keeps a history
    assert kept and cold_ds.num_users == ds.num_users
    np.testing.assert_array_equal(cold_ds.split[~on_cold], ds.split[~cold[ds.item]])
    again = read_dataset(write_dataset(cold_ds, tmp_path / "cold"))
    np.testing.assert_array_equal(cold_items(again), cold)  # the protocol travels with the dataset
    with pytest.raises(Exception, match="share"):
        hold_out_items(ds, 1.0)


def test_users_left_without_history_leave_with_their_raw_ids() -> None:
    """A user whose every training interaction was on a held-out item has no history to rank
    from: they leave, the others keep their order and raw ids."""
    ds = tiny()
    ds.ids = {**ds.ids, "user": np.array([f"u{j}" for j in range(ds.num_users)])}
    out = hold_out_items(ds, 0.6, seed=0)
    cold = cold_items(out)
    warm_train = (ds.split == TRAIN) & ~cold[ds.item]
    stays = np.isin(np.arange(ds.num_users), ds.user[warm_train])
    assert not stays.all()  # this draw leaves somebody without history
    assert out.num_users == stays.sum() and out.user.max() == out.num_users - 1
    assert list(out.ids["user"]) == [f"u{j}" for j in np.flatnonzero(stays)]
    assert f"{(~stays).sum()} user(s)" in out.provenance["cold_protocol"]
    first = np.flatnonzero(stays)[0]
    np.testing.assert_array_equal(out.item[out.user == 0], ds.item[ds.user == first])


def test_cold_metrics_count_only_the_cold_items_interactions() -> None:
    ds = hold_out_items(tiny(), 0.2, seed=1)
    cold = cold_items(ds)
    ev_all, ev_cold = Evaluator(ds, [5]), Evaluator(ds, [5], items=cold)
    u, i = ds.edges(TEST)
    scores = torch.zeros(ds.num_users, ds.num_items)
    scores[torch.from_numpy(u), torch.from_numpy(i)] = 1.0  # an oracle of every test item
    oracle = ev_cold.evaluate(lambda users: scores[users], TEST)
    assert oracle["hit@5"] == 1.0 and ev_cold.evaluate(lambda users: -scores[users], TEST)["hit@5"] < 1.0
    users_with_cold = np.unique(u[cold[i]]).size
    assert ev_cold.sums(lambda users: scores[users], TEST)["users"] == users_with_cold
    assert ev_all.sums(lambda users: scores[users], TEST)["users"] == np.unique(u).size


def test_content_knn_is_the_mean_feature_cosine_to_the_history() -> None:
    ds = tiny()
    model = ContentKNN(ds)
    model.fit()
    f = torch.cat([torch.nn.functional.normalize(torch.from_numpy(x).float(), dim=1) for x in ds.features.values()], 1)
    f = f / len(ds.features) ** 0.5
    user = 3
    hist = ds.item[(ds.user == user) & (ds.split == TRAIN)]
    expected = (f[torch.from_numpy(hist)] @ f.T).mean(0)
    torch.testing.assert_close(model.full_scores(torch.tensor([user]))[0], expected)


@pytest.mark.parametrize("variant, places", [("content_knn", True), ("ease", False)])
def test_a_run_on_held_out_items_reports_them_or_says_why_not(variant: str, places: bool, tmp_path: Path) -> None:
    data = write_dataset(hold_out_items(tiny(), 0.2, seed=1), tmp_path / "cold")
    run = tmp_path / variant
    assert main(["-q", "train", "--variant", variant, "--data", str(data), "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["test"] is not None  # the metrics on all items stay
    if places:
        assert set(results["cold"]) >= {"recall@20", "ndcg@20"}
    else:
        assert results["cold"] is None and "cannot place" in results["cold_note"]


def test_held_out_items_are_placed_by_content(tmp_path: Path) -> None:
    """model.place_cold_items (auto: on for a held-out dataset): no item without a training
    interaction is drawn as a BPR negative, and the ridge head scores it as the mean of its
    multimodal neighbours' scores."""
    from slifmr.config import load_config
    from slifmr.distributed.collectives import Comm
    from slifmr.model.graphs import StaticGraphs
    from slifmr.model.ridge import ridge_scores
    from slifmr.sampling.negative import BPRSampler
    from slifmr.training.build import cold_placement, trained_items
    from slifmr.training.ridge_head import HeadSpec, RidgeHead

    ds = hold_out_items(tiny(), 0.2, seed=1)
    cold = cold_items(ds)
    cfg = load_config(overrides=["model.k_mm=3", "model.ridge_neighbours=cooc", "model.ridge_k=6"])
    assert cold_placement(cfg, ds) and not cold_placement(cfg, tiny())
    u, i = ds.edges(TRAIN)
    sampler = BPRSampler(torch.from_numpy(u), torch.from_numpy(i), ds.num_items, 64, seed=0,
                         candidates=trained_items(ds))
    assert not cold[sampler.negatives(torch.from_numpy(u).repeat(20)).numpy()].any()
    static = StaticGraphs.from_dataset(ds, cfg.model)
    head, plain = RidgeHead(cfg.model.head, static, Comm(), place_cold=True), RidgeHead(cfg.model.head, static, Comm())
    spec = HeadSpec("cooc", 6, 10.0)
    w_t, w0_t = head._solve(spec, head._regressors("cooc", 6)), plain._solve(spec, plain._regressors("cooc", 6))
    users = torch.arange(ds.num_users)
    scores, scores0 = ridge_scores(plain.interactions, w_t, users), ridge_scores(plain.interactions, w0_t, users)
    warm = torch.from_numpy(np.bincount(i, minlength=ds.num_items) > 0)  # items with a training interaction
    assert not warm[torch.from_numpy(cold)].any()  # every held-out item is among the others
    torch.testing.assert_close(scores[:, warm], scores0[:, warm])  # warm items as before
    assert torch.equal(scores0[:, ~warm], torch.zeros_like(scores0[:, ~warm]))  # without: nothing to score with
    (src, dst), weight = static.mm
    j = int(torch.nonzero(~warm)[0])
    nbrs, wts = dst[src == j], weight[src == j]
    torch.testing.assert_close(scores[:, j], (scores0[:, nbrs] * (wts / wts.sum())).sum(1))


def test_a_trained_run_places_held_out_items_chosen_on_validation(tmp_path: Path) -> None:
    """At its end a run on a held-out dataset chooses (lambda, delta) on validation alone: the
    chosen point's all-item validation metric is within model.cold_tolerance of the best point's
    and no allowed point places more held-out items; `recommend` (the API's scorer) ranks as
    the test metrics did; with tolerance 0 the chosen point costs nothing on all items."""
    import slifmr
    from slifmr.training.cold_placement import ColdPlaced

    data = write_dataset(hold_out_items(tiny(), 0.2, seed=1), tmp_path / "cold")
    small = dict(embedding_dim=8, k_corr=3, k_mm=3, epochs=2)
    run = slifmr.train(data=str(data), out=str(tmp_path / "run"), **small)
    choice = run.results["cold_placement"]
    best = max(p["valid"] for p in choice["points"])
    allowed = [p for p in choice["points"] if p["valid"] >= (1 - choice["tolerance"]) * best]
    assert choice["valid"] >= (1 - choice["tolerance"]) * best
    assert choice["valid_cold"] == max(p["valid_cold"] for p in allowed)
    assert isinstance(run.model, ColdPlaced) and (run.model.lam, run.model.delta) == (choice["lambda"], choice["delta"])
    assert run.evaluate("test")["recall@20"] == pytest.approx(run.results["test"]["recall@20"], abs=1e-12)
    strict = slifmr.train(data=str(data), out=str(tmp_path / "strict"), cold_tolerance=0.0, **small)
    choice = strict.results["cold_placement"]
    assert choice["valid"] == max(p["valid"] for p in choice["points"])
    warm = slifmr.train(data=str(tmp_path / "cold"), out=str(tmp_path / "off"), place_cold_items="off", **small)
    assert "cold_placement" not in warm.results or warm.results["cold_placement"] is None
