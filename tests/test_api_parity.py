"""The CLI and the Python API keep up with the export's scorer (issue 41): recommend with a fresh
history, an allow-list and seen items kept; tables in memory for train, import and
evaluate-recs; a split written in raw ids for another system."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import slifmr
from slifmr.cli import main
from slifmr.data.format import read_dataset
from slifmr.errors import SlifmrError
from slifmr.scorer import Scorer


@pytest.fixture(scope="module")
def run(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> slifmr.Run:
    return slifmr.train(data=tiny_path, variant="mf", out=tmp_path_factory.mktemp("parity") / "run", epochs=2)


def test_recommend_with_serving_options_gives_the_exports_lists(run: slifmr.Run, tmp_path: Path) -> None:
    scorer = Scorer.load(run.export(tmp_path / "exp"))
    cases = [({"history": ["3", "7"]}, "5"), ({"allow": ["1", "2", "3", "4"]}, "5"), ({"exclude_seen": False}, "5"),
             ({"history": "12"}, "no-such-user")]
    for options, user in cases:
        got = run.recommend(user, k=4, **options).to_pylist()
        expected = scorer.recommend(user, 4, **options)
        assert [(r["item"], r["rank"]) for r in got] == [(i, n) for n, (i, _) in enumerate(expected, start=1)], options
    with pytest.raises(SlifmrError, match="unknown user id 'no-such-user'"):
        run.recommend("no-such-user", k=4, allow=["1"])  # no history to fold in from
    with pytest.raises(SlifmrError, match="unknown item id 'nope' in history"):
        run.recommend("5", k=4, history=["nope"])


def test_cli_recommend_history_allow_and_exclude_seen(run: slifmr.Run, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["-q", "recommend", str(run.path), "--users", "5", "--k", "3", "--allow", "1,2,3,4"]) == 0
    listed = [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == [r["item"] for r in run.recommend("5", 3, allow=["1", "2", "3", "4"]).to_pylist()]
    seen = set(np.asarray(run.dataset.item[run.dataset.user == 5]).astype(str))
    assert main(["-q", "recommend", str(run.path), "--users", "5", "--k", "40", "--no-exclude-seen"]) == 0
    listed = {line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]}
    assert seen <= listed
    assert main(["-q", "recommend", str(run.path), "--all", "--out", "x.parquet", "--history", "1"]) == 2


def test_tables_in_memory_train_import_and_evaluate(tiny_path: Path, tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    ds = read_dataset(tiny_path)
    frame = pandas.DataFrame({"user_id": [f"u{u}" for u in ds.user], "item_id": [f"i{i}" for i in ds.item]})
    path = slifmr.import_table(frame, tmp_path / "data")
    imported = read_dataset(path)
    assert (imported.num_users, imported.num_items, imported.user.size) == (ds.num_users, ds.num_items, ds.user.size)
    trained = slifmr.train(data=pa.Table.from_pandas(frame), variant="pop", out=tmp_path / "run")
    assert trained.config.data == str((tmp_path / "run" / "data").resolve())
    assert slifmr.load_run(tmp_path / "run").recommend("u0", k=3).num_rows == 3
    lists = trained.recommend([f"u{u}" for u in range(5)], k=10).to_pandas()
    got = slifmr.evaluate_recommendations(lists, trained.config.data, k=[10])
    assert got["rows"] == 50 and "recall@10" in got["metrics"]
    with pytest.raises(SlifmrError, match="must be a path, a pandas DataFrame or a pyarrow Table"):
        slifmr.train(data=[1, 2, 3], variant="pop", out=tmp_path / "bad")


def test_export_split_round_trip(run: slifmr.Run, tiny_path: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    """Another system trains on the exported split; its lists (here: the run's own test ranking,
    written back from raw ids) are scored by evaluate-recs exactly as the run."""
    for fmt in ("parquet", "csv"):
        assert main(["-q", "data", "export-split", str(tiny_path), "--out", str(tmp_path / fmt), "--format", fmt]) == 0
    ds = read_dataset(tiny_path)
    train = pq.read_table(tmp_path / "parquet" / "train.parquet")
    assert train.column_names == ["user", "item"] and train.num_rows == int((ds.split == 0).sum())
    assert sum(pq.read_table(tmp_path / "parquet" / f"{s}.parquet").num_rows for s in ("train", "valid", "test")) == ds.user.size
    assert (tmp_path / "csv" / "test.csv").exists()
    assert main(["-q", "data", "export-split", str(tiny_path), "--out", str(tmp_path / "parquet")]) == 2
    capsys.readouterr()
    assert main(["-q", "recommend", str(run.path), "--all", "--split", "test", "--k", "20",
                 "--out", str(tmp_path / "lists.parquet")]) == 0
    capsys.readouterr()
    assert main(["-q", "evaluate-recs", str(tmp_path / "lists.parquet"), "--data", str(tiny_path)]) == 0
    got = json.loads(capsys.readouterr().out)["metrics"]
    assert got["recall@20"] == pytest.approx(run.results["test"]["recall@20"], abs=1e-12)
