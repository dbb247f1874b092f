"""A run folder's contract (issue 12): resume changes only runtime keys and records them; a
model is only ever applied to the dataset it was trained on; recommendations never list a
seen item; one writer per folder; options that would be ignored are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from slifmr.cli import main
from slifmr.data.format import read_dataset

SMALL = ["--set", "model.embedding_dim=8", "--set", "model.k_corr=3", "--set", "model.k_mm=3"]


def _inter(rows: list[tuple[str, str, int]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))


def _shop_rows() -> list[tuple[str, str, int]]:
    """10 users x 6 items; u1 has seen 4 of the 6 items (case 01), the others 3 to 5."""
    rng = np.random.default_rng(0)
    rows = [("u1", f"i{i}", t) for t, i in enumerate((2, 5, 1, 6))]
    for u in range(2, 11):
        for t, i in enumerate(rng.choice(6, size=3 + u % 3, replace=False)):
            rows.append((f"u{u}", f"i{i + 1}", t))
    return rows


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def shop_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[Path, Path]:
    _inter(_shop_rows(), tmp_path / "src" / "shop" / "shop.inter")
    assert main(["-q", "data", "import", "recbole", str(tmp_path / "src" / "shop"), "--out", str(tmp_path / "data")]) == 0
    assert main(["-q", "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "2", *SMALL]) == 0
    capsys.readouterr()
    return tmp_path / "data", tmp_path / "run"


@pytest.mark.parametrize("argv, named", [
    (["--set", "model.k_corr=5"], "model.k_corr (3 -> 5)"),
    (["--set", "train.lr=0.05"], "train.lr (0.01 -> 0.05)"),
    (["--variant", "lightgcn"], "variant (slifmr -> lightgcn)"),
    (["--seed", "7"], "train.seed (0 -> 7)"),
    (["--sampling", "neighbor"], "train.sampling (full -> neighbor)"),
    (["--data", "OTHER"], "data ("),
    (["--config", "CONFIG"], "model.beta (0.5 -> 0.25)"),
])
def test_resume_refuses_what_would_change_the_training(shop_run: tuple[Path, Path], argv: list[str], named: str,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, run = shop_run
    (tmp_path / "c.yaml").write_text("model: {beta: 0.25}\ntrain: {epochs: 3}\n")
    argv = [a.replace("OTHER", str(tmp_path)).replace("CONFIG", str(tmp_path / "c.yaml")) for a in argv]
    before = (run / "config.yaml").read_text()
    code, _, err = _run(["train", "--resume", str(run), "--epochs", "3", *argv], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err
    assert "would change what is trained" in err and "start a new run with --out" in err
    assert (run / "config.yaml").read_text() == before


def test_resume_applies_and_records_runtime_keys(shop_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    _, run = shop_run
    code, _, err = _run(["train", "--resume", str(run), "--epochs", "3", "--set", "train.threads=1",
                         "--set", "model.k_corr=3"], capsys)  # an unchanged key is fine
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 3 and saved["train"]["threads"] == 1
    assert "train.epochs 2 -> 3" in err


def test_reimported_dataset_in_another_order_is_refused(shop_run: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Case 03: the same rows sorted by item give other contiguous ids; every reader refuses."""
    data, run = shop_run
    _inter(sorted(_shop_rows(), key=lambda r: (r[1], r[0])), tmp_path / "src2" / "shop" / "shop.inter")
    assert main(["-q", "data", "import", "recbole", str(tmp_path / "src2" / "shop"), "--out", str(data), "--overwrite"]) == 0
    capsys.readouterr()
    for argv in (["evaluate", str(run)], ["recommend", str(run), "--users", "u1"],
                 ["train", "--resume", str(run), "--epochs", "3"]):
        code, out, err = _run(argv, capsys)
        assert code == 2 and "changed since" in err and "id maps or split differ" in err, (argv, err)
        assert out == ""


def test_recommend_never_lists_a_seen_item(shop_run: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    """Case 01: u1 has 2 unseen items; --k 10 lists exactly those, --all never a seen one."""
    data, run = shop_run
    ds = read_dataset(data)
    code, out, err = _run(["recommend", str(run), "--users", "u1", "--k", "10"], capsys)
    assert code == 0, err
    listed = [ln.split()[2] for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert sorted(listed) == ["i3", "i4"] and "inf" not in out and "nan" not in out
    assert "fewer than 10 unseen items" in err
    code, out, _ = _run(["recommend", str(run), "--users", "u1,u1 ,u1", "--k", "10"], capsys)  # one block, once
    assert code == 0 and out.count("user u1:") == 1 and out.count(". item") == 2
    code, _, err = _run(["recommend", str(run), "--all", "--k", "5", "--out", str(tmp_path / "recs.parquet")], capsys)
    assert code == 0, err
    recs = pq.read_table(tmp_path / "recs.parquet").to_pydict()
    users, items = ds.ids["users"].astype(str), ds.ids["items"].astype(str)
    seen = {(users[u], items[i]) for u, i in zip(ds.user, ds.item)}
    assert not seen & set(zip(recs["user"], recs["item"]))
    assert np.isfinite(recs["score"]).all()
    unseen = {users[u]: ds.num_items - int((ds.user == u).sum()) for u in range(ds.num_users)}
    assert {u: recs["user"].count(u) for u in unseen} == {u: min(n, 5) for u, n in unseen.items()}
    assert "users have fewer than 5 unseen items" in err


HOLD = "import sys, time; from slifmr.runlock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def test_one_writer_per_run_folder(shop_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    _, run = shop_run
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = _run(["train", "--resume", str(run), "--epochs", "3"], capsys)
        assert code == 2 and f"{run} is in use by pid {holder.pid} on " in err, err
        code, out, err = _run(["evaluate", str(run)], capsys)  # readers are not blocked
        assert code == 0 and '"test"' in out, err
    finally:
        holder.kill()
        holder.wait()
    code, _, err = _run(["-q", "train", "--resume", str(run), "--epochs", "3"], capsys)  # a dead owner's lock is taken
    assert code == 0, err


def test_a_second_training_process_on_the_same_folder_is_refused(shop_run: tuple[Path, Path], tmp_path: Path) -> None:
    """The issue's scenario with two real `slifmr train` processes."""
    data, _ = shop_run
    run = tmp_path / "busy"
    cli = [sys.executable, "-m", "slifmr", "-q", "train", "--data", str(data), "--out", str(run), *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*cli, "--epochs", "1000000", "--set", "train.patience=1000000"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run([sys.executable, "-m", "slifmr", "train", "--resume", str(run)], env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"is in use by pid {first.pid}" in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("argv, message", [
    (["train", "--zero-stage", "1", "--out", "OUT"], "--zero-stage applies to --strategy deepspeed only"),
    (["train", "--fanout", "5,5", "--out", "OUT"], "--fanout applies to --sampling neighbor or history only"),
    (["train", "--max-failures", "2", "--out", "OUT"], "--max-failures applies to Ray Train runs"),
    (["train", "--sampling", "neighbor", "--fanout", "10,5,3", "--out", "OUT"], "has 3 hop(s); the cf view has 2 layers"),
    (["train", "--tracking-uri", "file:/tmp/x", "--out", "OUT"], "--tracking-uri applies to --tracker mlflow"),
    (["train", "--tracker", "tensorboard", "--tracking-uri", "file:/tmp/x", "--out", "OUT"],
     "--tracking-uri applies to --tracker mlflow (the tracker is tensorboard)"),
    (["tune", "tune_configs/smoke.yaml", "--tracking-uri", "file:/tmp/x", "--storage", "OUT"],
     "--tracking-uri applies to --tracker mlflow"),
    # the importer: a column or folder named and then not used
    (["data", "import", "table", "CSV", "--split-col", "part", "--split", "random", "--out", "OUT"],
     "--split-col part with --split random: the column's split would not be used"),
    (["data", "import", "table", "CSV", "--split-col", "part", "--split", "temporal", "--time-col", "ts", "--out", "OUT"],
     "--split-col part with --split temporal"),
    (["data", "import", "table", "CSV", "--item-key", "sku", "--out", "OUT"], "--item-key names the item id column of"),
    (["data", "import", "table", "CSV", "--cache-dir", "CACHE", "--out", "OUT"], "--cache-dir holds text embeddings"),
])
def test_options_that_would_be_ignored_are_refused(argv: list[str], message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    csv = tmp_path / "inter.csv"
    csv.write_text("user_id,item_id,part,ts\n" + "".join(f"u{u},i{i},{p},{i}\n" for u in range(4)
                                                        for i, p in enumerate(("test", "valid", "train", "train"))))
    argv = [{"OUT": str(tmp_path / "out"), "CSV": str(csv), "CACHE": str(tmp_path / "cache")}.get(a, a) for a in argv]
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_recommend_out_without_all_and_report_out_on_a_sweep_are_refused(shop_run: tuple[Path, Path], tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    _, run = shop_run
    code, _, err = _run(["recommend", str(run), "--users", "u1", "--out", str(tmp_path / "r.parquet")], capsys)
    assert code == 2 and "--out applies to --all" in err
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "trials.parquet").write_text("")  # what marks a sweep folder
    code, _, err = _run(["report", str(sweep), "--out", str(tmp_path / "rep")], capsys)
    assert code == 2 and "--out applies to run folders" in err


ODD_IDS = ["Doe, Jane", 'Roe "Ricky", Rick', "O'Hara", "  padded", "plain"]


def test_every_user_id_that_imports_can_be_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Ids holding commas, quotes or spaces: CSV-quoted in --users, whole lines in --users-file,
    whole strings in Run.recommend; never split into an unknown id."""
    import csv

    import slifmr

    with open(tmp_path / "readers.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id"])
        for u, user in enumerate(ODD_IDS * 2):
            for i in range(6):
                writer.writerow([user if u < len(ODD_IDS) else f"reader{u}", f"book{(u + i) % 9}"])
    assert main(["-q", "data", "import", "table", str(tmp_path / "readers.csv"), "--out", str(tmp_path / "data")]) == 0
    assert main(["-q", "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1",
                 *SMALL]) == 0
    capsys.readouterr()
    run = slifmr.load_run(tmp_path / "run")
    expected = {u: run.recommend([u], k=2).column("item").to_pylist() for u in ODD_IDS}
    assert run.recommend("Doe, Jane", k=2).column("user").to_pylist() == ["Doe, Jane"] * 2  # one id, whole
    # stored as the importers store ids: surrounding whitespace stripped
    assert run.recommend(ODD_IDS, k=2).column("user").to_pylist() == [u.strip() for u in ODD_IDS for _ in range(2)]

    code, out, err = _run(["recommend", str(tmp_path / "run"), "--users", '"Doe, Jane", "Roe ""Ricky"", Rick",plain',
                           "--k", "2"], capsys)
    assert code == 0, err
    assert [ln for ln in out.splitlines() if ln.startswith("user ")] == \
        ["user Doe, Jane:", 'user Roe "Ricky", Rick:', "user plain:"]
    (tmp_path / "ids.txt").write_text("\n".join(ODD_IDS) + "\n")
    code, out, err = _run(["recommend", str(tmp_path / "run"), "--users-file", str(tmp_path / "ids.txt"), "--k", "2"],
                          capsys)
    assert code == 0, err
    listed = [ln.split()[2] for ln in out.splitlines() if ". item" in ln]
    assert listed == [i for u in ODD_IDS for i in expected[u]]
    code, _, err = _run(["recommend", str(tmp_path / "run"), "--users", "Doe, Jane", "--k", "2"], capsys)
    assert code == 2 and "unknown user id 'Doe'" in err and """'Doe, Jane' is one user id: quote""" in err
    code, _, err = _run(["recommend", str(tmp_path / "run"), "--users", '"Doe, Jane', "--k", "2"], capsys)
    assert code == 2 and "--users" in err and len(err.strip().splitlines()) == 1


def test_a_cache_two_processes_build_at_once_is_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `slifmr train` without --data on a fresh cache: one builds ml-100k, the other waits
    and finds it made (flock on separate descriptors excludes threads as it does processes)."""
    import threading

    from conftest import tiny

    from slifmr.data import ml100k
    from slifmr.data.format import write_dataset

    builds = []

    def slow_build(root: Path, out: Path, text: bool) -> Path:
        builds.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other caller to arrive while it builds
        return write_dataset(tiny(), out)

    monkeypatch.setattr(ml100k, "_build", slow_build)
    got: list[Path] = []
    callers = [threading.Thread(target=lambda: got.append(ml100k.prepare_ml100k(tmp_path))) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(builds) == 1 and len(got) == 2 and got[0] == got[1]
    assert read_dataset(got[0]).num_users == 60
