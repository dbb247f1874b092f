"""Open evaluation: any K after training, another system's lists scored under slifmr's split and
metrics, and the most-popular baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import slifmr
from slifmr.cli import main
from slifmr.data.format import TEST, TRAIN, VALID, read_dataset
from slifmr.errors import DataError, SlifmrError
from slifmr.evaluate_recs import evaluate_recommendations

SMALL = ["--set", "model.embedding_dim=8", "--set", "model.k_corr=3", "--set", "model.k_mm=3", "--set", "model.ridge_k=5"]


@pytest.fixture(scope="module")
def run_dir(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "slifmr"
    assert main(["-q", "train", "--data", str(tiny_path), "--out", str(out), "--epochs", "2", *SMALL]) == 0
    return out


def _test_lists(run: slifmr.Run, k: int) -> pa.Table:
    """The run's own test ranking (train and valid items removed) as a recommendations table."""
    ds = run.dataset
    users = torch.arange(ds.num_users)
    scores = run.model.full_scores(users).clone()
    for split in (TRAIN, VALID):
        u, i = ds.edges(split)
        scores[torch.from_numpy(u).long(), torch.from_numpy(i).long()] = -math.inf
    top = torch.topk(scores, k, dim=1).indices
    rank = np.tile(np.arange(1, k + 1), ds.num_users)
    return pa.table({"user": np.repeat(users.numpy(), k).astype(str), "item": top.reshape(-1).numpy().astype(str),
                     "rank": rank})


def test_another_systems_lists_are_scored_as_the_run_itself(run_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    run = slifmr.load_run(run_dir)
    expected = run.evaluate("test", k=[5, 10, 20])
    lists = _test_lists(run, 20)
    pq.write_table(lists, tmp_path / "recs.parquet")
    # the same lists as CSV, by score instead of rank, in another row order
    scored = lists.append_column("score", pa.array(-lists.column("rank").to_numpy().astype(float))).drop(["rank"])
    pa.csv.write_csv(scored.take(np.random.default_rng(0).permutation(scored.num_rows)), tmp_path / "recs.csv")
    for path in (tmp_path / "recs.parquet", tmp_path / "recs.csv"):
        assert main(["evaluate-recs", str(path), "--data", run.config.data, "--k", "5,10,20"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["users_with_a_list"] == run.dataset.num_users and got["split"] == "test"
        for key in ("recall@5", "ndcg@10", "recall@20", "map@20", "arp@10", "tail@20", "coverage@20"):
            assert got["metrics"][key] == pytest.approx(expected[key], abs=1e-9), key


def test_short_lists_and_missing_users_count_no_hits(tiny_path: Path, tmp_path: Path) -> None:
    """A user whose list is shorter than K, or who has none, gets no hit from unlisted items."""
    ds = read_dataset(tiny_path)
    u, i = ds.edges(TEST)
    truth = pa.table({"user": u.astype(str), "item": i.astype(str), "rank": np.ones(u.size, np.int64)})
    first = truth.filter(pa.compute.is_in(truth["user"], pa.array(np.unique(u.astype(str))[:10])))
    pq.write_table(first, tmp_path / "perfect10.parquet")
    got = evaluate_recommendations(tmp_path / "perfect10.parquet", ds, [20])["metrics"]
    with_truth = np.unique(u).size
    assert got["recall@20"] == pytest.approx(10 / with_truth) and got["hit@20"] == pytest.approx(10 / with_truth)
    assert got["coverage@20"] == pytest.approx(len(set(first.column("item").to_pylist())) / ds.num_items)


@pytest.mark.parametrize("rows, message", [
    ({"user": ["nobody"], "item": ["0"], "rank": [1]}, "row 0, column 'user': user 'nobody' is not in dataset"),
    ({"user": ["0"], "item": ["99999"], "rank": [1]}, "row 0, column 'item': item '99999' is not in dataset"),
    ({"user": ["0", "0"], "item": ["3", "3"], "rank": [1, 2]}, "row 1, column 'item': this (user, item) pair is listed twice"),
    ({"user": ["0", "1"], "item": ["3", "3"], "rank": [1, None]}, "row 1, column 'rank': missing number"),
    ({"user": ["0"], "item": ["3"]}, "needs a rank (1 = best) or a score (higher = better) column"),
])
def test_bad_recommendation_tables_are_named(rows: dict, message: str, tiny_path: Path, tmp_path: Path) -> None:
    pq.write_table(pa.table(rows), tmp_path / "r.parquet")
    with pytest.raises(DataError) as e:
        evaluate_recommendations(tmp_path / "r.parquet", read_dataset(tiny_path), [10])
    assert message in str(e.value) and str(e.value).startswith(str(tmp_path / "r.parquet"))


def test_evaluate_at_any_k_after_training(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    run = slifmr.load_run(run_dir)
    assert main(["evaluate", str(run_dir), "--k", "5,50"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["test"]) >= {"recall@5", "ndcg@50"} and "recall@20" not in out["test"]
    assert out["test"]["recall@5"] == pytest.approx(run.evaluate("test", k=5)["recall@5"], abs=1e-12)
    assert run.evaluate("test", k=[20])["recall@20"] == pytest.approx(run.evaluate("test")["recall@20"], abs=1e-12)
    for bad in (0, [5, 5], "five"):
        with pytest.raises(SlifmrError, match="K must be"):
            run.evaluate("test", k=bad)


def test_pop_recommends_the_most_popular_unseen_items(tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pop"
    assert main(["-q", "train", "--variant", "pop", "--data", str(tiny_path), "--out", str(out)]) == 0
    capsys.readouterr()
    run = slifmr.load_run(out)
    ds = run.dataset
    counts = np.bincount(ds.edges(TRAIN)[1], minlength=ds.num_items)
    seen = set(zip(ds.user.tolist(), ds.item.tolist()))
    recs = run.recommend(["0"], k=5).column("item").to_pylist()
    unseen = [i for i in np.argsort(-counts, kind="stable") if (0, int(i)) not in seen]
    assert sorted(counts[[int(i) for i in recs]], reverse=True) == sorted(counts[unseen[:5]], reverse=True)
    assert len(run.history) == 1 and run.results["test"]["recall@20"] >= 0
    code = main(["train", "--variant", "pop", "--data", str(tiny_path), "--out", str(tmp_path / "p2"),
                 "--set", "model.ease_l2=[10]"])
    assert code == 2 and "model.ease_l2" in capsys.readouterr().err
