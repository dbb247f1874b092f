"""Reliability rules (issue 42) across entry points: stored paths, numeric options, generated
names, bare-string ids, the tie rule, exact evaluate-recs order, Unicode ids, the synthetic
generators' counts, Ctrl-C on Ray paths and ASHA's rungs across a resume. Each test is the
kind behind one of ../shared/cases 23-33, checked beyond the case."""

from __future__ import annotations

import json
import os
import signal
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

import slifmr
from slifmr.arguments import check_float, check_int, id_list
from slifmr.atomic import claim_new_folder
from slifmr.cli import build_parser, main
from slifmr.config import load_config
from slifmr.data.format import TEST, read_dataset
from slifmr.data.synth import synthesize, synthesize_planted
from slifmr.errors import SlifmrError
from slifmr.evaluation import Evaluator, top_k
from slifmr.paths import absolute_uri

SMALL = ["--set", "model.embedding_dim=8", "--set", "model.k_corr=3", "--set", "model.k_mm=3", "--set", "model.ridge_k=5"]


# ----------------------------------------------------------------------------- 23: stored paths


def test_relative_locations_are_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(settings=[("data", "data/mine"), ("train.tracker", "mlflow"), ("train.tracking_uri", "file:mlruns")])
    assert cfg.data == str(tmp_path / "data" / "mine")
    assert cfg.train.tracking_uri == (tmp_path / "mlruns").as_uri()
    assert absolute_uri("sqlite:///m.db") == f"sqlite:///{tmp_path / 'm.db'}"
    for kept in ("", "http://10.0.0.5:5000", "databricks", "sqlite:////abs/m.db", "postgresql://u@h/db"):
        assert absolute_uri(kept) == kept


def test_a_run_trained_with_a_relative_data_path_works_from_another_folder(tiny_path: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    (project / "data").symlink_to(tiny_path)
    monkeypatch.chdir(project)
    assert main(["-q", "train", "--data", "data", "--variant", "mf", "--out", "runs/mine", "--epochs", "1", *SMALL[:2]]) == 0
    monkeypatch.chdir(elsewhere)
    run = project / "runs" / "mine"
    capsys.readouterr()
    assert main(["-q", "evaluate", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["recall@20"] >= 0
    assert main(["-q", "recommend", str(run), "--users", "0", "--k", "2"]) == 0
    assert main(["-q", "train", "--resume", str(run), "--epochs", "2"]) == 0
    assert slifmr.load_run(run).config.data == str(project / "data")


# ----------------------------------------------------------------------------- 24: numbers


@pytest.mark.parametrize("argv, message", [
    (["export", "RUN", "--out", "X", "--k", "0"], "argument --k: must be an integer >= 1, got 0"),
    (["export", "RUN", "--out", "X", "--k", "-3"], "argument --k: must be an integer >= 1, got -3"),
    (["recommend", "RUN", "--users", "1", "--k", "2.5"], "argument --k: must be an integer >= 1, got '2.5'"),
    (["train", "--workers", "-1"], "argument --workers: must be an integer >= 0, got -1"),
    (["train", "--zero-stage", "3"], "argument --zero-stage: must be an integer in [1, 2], got 3"),
    (["data", "synth", "--users", "0", "--out", "X"], "argument --users: must be an integer >= 1, got 0"),
    (["data", "hold-out", "D", "--share", "1.5", "--out", "X"], "argument --share: must be a finite number in (0, 1), got 1.5"),
    (["data", "hold-out", "D", "--share", "nan", "--out", "X"], "argument --share: must be a finite number in (0, 1), got nan"),
    (["tune", "--samples", "0"], "argument --samples: must be an integer >= 1, got 0"),
])
def test_every_numeric_option_is_refused_in_one_line_before_any_work(argv: list[str], message: str,
                                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and message in err[0], err


def test_the_api_rule_for_numbers_and_id_lists() -> None:
    assert check_int("k", np.int64(3)) == 3
    for bad in (0, -2, True, 2.5, "3", None):
        with pytest.raises(SlifmrError, match="k must be an integer >= 1"):
            check_int("k", bad)
    with pytest.raises(SlifmrError, match=r"share must be a finite number in \(0, 1\)"):
        check_float("share", float("inf"), 0, 1, open_low=True, open_high=True)
    assert id_list("users", "12") == ["12"] and id_list("users", ["1", 2]) == ["1", "2"] and id_list("u", 7) == ["7"]
    for bad in (b"12", {"a": 1}, 3.5, [None], [1.5]):
        with pytest.raises(SlifmrError, match="users must"):
            id_list("users", bad)


# ----------------------------------------------------------------------------- 25: names


def test_generated_folder_names_are_unique_within_one_second_and_across_threads(tmp_path: Path) -> None:
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(claim_new_folder(tmp_path, "mf-seed0-20261207-120000")))
               for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 12 and all(p.is_dir() for p in got)
    assert {p.name for p in got} == {"mf-seed0-20261207-120000"} | {f"mf-seed0-20261207-120000-{n}" for n in range(2, 13)}


def test_a_loop_of_api_runs_without_out_gets_one_folder_each(tiny_path: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = [slifmr.train(data=tiny_path, variant="pop").path for _ in range(3)]  # closed form: instant
    assert len(set(paths)) == 3 and all((p / "results.json").exists() for p in paths)


# ----------------------------------------------------------------------------- 27, 28: ties and precision


def test_the_tie_rule_ranks_equal_scores_by_item_index() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        n = int(torch.randint(1, 30, (1,), generator=gen))
        scores = torch.randint(0, 3, (4, n), generator=gen).float()
        scores[torch.rand(4, n, generator=gen) < 0.3] = -float("inf")
        k = int(torch.randint(1, n + 1, (1,), generator=gen))
        values, index = top_k(scores, k)
        for row in range(4):
            expected = sorted(range(n), key=lambda j: (-scores[row, j].item(), j))[:k]
            assert index[row].tolist() == expected
            assert torch.equal(values[row], scores[row, expected])


def test_a_metric_at_k_does_not_depend_on_the_other_cutoffs(tiny_ds) -> None:  # noqa: ANN001
    counts = torch.bincount(torch.from_numpy(tiny_ds.item), minlength=tiny_ds.num_items).float()

    def pop(users: torch.Tensor) -> torch.Tensor:
        return (counts // 4).expand(users.numel(), -1).clone()  # many ties

    at = {ks: Evaluator(tiny_ds, list(ks)).evaluate(pop, TEST) for ks in ((10,), (10, 20), (5, 10, 50))}
    for metric in ("recall@10", "ndcg@10", "mrr@10", "map@10", "arp@10"):
        assert len({round(m[metric], 12) for m in at.values()}) == 1, metric


def test_evaluate_recs_keeps_float64_scores_and_the_listed_order_of_ties(tiny_path: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    ds = read_dataset(tiny_path)
    u, i = ds.edges(TEST)
    first = np.unique(u, return_index=True)[1]
    users, truth = u[first], i[first]
    rows = []
    for user, item in zip(users, truth):
        others = [j for j in range(ds.num_items) if j != item][:9]
        rows += [(str(user), str(j)) for j in [item, *others]]
    user_col, item_col = zip(*rows)
    place = np.tile(np.arange(10), users.size)
    tables = {
        "by_time.parquet": {"score": 1.7e9 - 60.0 * place},  # distinct in float64, ties in float32
        "by_timestamp.parquet": {"score": pa.array((1_700_000_000 - 60 * place) * 1_000_000, pa.timestamp("us"))},
        "tied.parquet": {"score": np.zeros(place.size)},  # every score equal: the listed order decides
    }
    for name, column in tables.items():
        pq.write_table(pa.table({"user": user_col, "item": item_col, **column}), tmp_path / name)
        assert main(["-q", "evaluate-recs", str(tmp_path / name), "--data", str(tiny_path), "--k", "1,10"]) == 0
        metrics = json.loads(capsys.readouterr().out)["metrics"]
        assert metrics["mrr@10"] == pytest.approx(1.0), name


# ----------------------------------------------------------------------------- 29: the round trip


def test_lists_written_for_a_split_score_as_the_run_and_others_are_warned(tiny_path: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(tiny_path), "--variant", "mf", "--out", str(run), "--epochs", "2"]) == 0
    expected = json.loads((run / "results.json").read_text())["test"]
    for split, warned in (("test", False), (None, True)):
        out = tmp_path / f"recs-{split}.parquet"
        assert main(["-q", "recommend", str(run), "--all", "--k", "20", "--out", str(out),
                     *(["--split", split] if split else [])]) == 0
        capsys.readouterr()
        assert main(["-q", "evaluate-recs", str(out), "--data", str(tiny_path), "--k", "10,20"]) == 0
        captured = capsys.readouterr()
        got = json.loads(captured.out)
        assert ("0 of the" in captured.err) == warned
        if not warned:
            assert got["metrics"]["recall@20"] == pytest.approx(expected["recall@20"], abs=1e-12)
            assert got["metrics"]["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-12)


# ----------------------------------------------------------------------------- 30: Unicode ids


def test_ids_in_two_unicode_forms_are_one_id_on_every_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    nfc, nfd = "Zo\u00eb", "Zoe\u0308"
    assert unicodedata.normalize("NFC", nfd) == nfc
    rows = [(f"u{u}", f"i{(u + j) % 10}") for u in range(12) for j in range(6)]
    rows += [(nfc, "i1"), (nfc, "i2"), (nfc, "i3"), (nfd, "i4"), (nfd, "i5"), (nfd, "i6")]
    pacsv.write_csv(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows]}), tmp_path / "t.csv")
    assert main(["-q", "data", "import", "table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "data")]) == 0
    ds = read_dataset(tmp_path / "data")
    users = [str(u) for u in ds.ids["users"]]
    assert users.count(nfc) == 1 and nfd not in users and ds.num_users == 13
    run = slifmr.train(data=tmp_path / "data", variant="pop", out=tmp_path / "run")
    for typed in (nfc, nfd, f" {nfd} "):
        listed = run.recommend(typed, k=10).column("item").to_pylist()
        assert not {"i1", "i2", "i3", "i4", "i5", "i6"} & set(listed), typed


# ----------------------------------------------------------------------------- 31: generators


@pytest.mark.parametrize("generate", [synthesize, synthesize_planted])
@pytest.mark.parametrize("users, items, asked", [(10, 20, 150), (100, 40, 2000), (300, 80, 4000), (10, 20, 200)])
def test_the_generators_write_exactly_the_interactions_asked_for(generate, users: int, items: int, asked: int) -> None:  # noqa: ANN001
    ds = generate(users=users, items=items, interactions=asked, modalities=())
    pairs = ds.user.astype(np.int64) * items + ds.item
    assert ds.user.size == asked and np.unique(pairs).size == asked


def test_an_impossible_request_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth", "--users", "10", "--items", "20", "--interactions", "1000", "--out", str(tmp_path / "d")]) == 2
    assert "is more than the 10 x 20 = 200 distinct (user, item) pairs" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- 32: ASHA across a resume


def test_asha_rungs_are_rebuilt_from_the_trials_metrics(tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    from ray.tune.schedulers import TrialScheduler

    from slifmr.tune.asha import ResumableASHA

    class Trial:  # what ASHA reads of a trial
        def __init__(self, trial_id: str, last_epoch: int | None) -> None:
            self.trial_id, self.last_result = trial_id, {"epoch": last_epoch} if last_epoch else {}

    def record(trial_id: str, scores: list[float]) -> None:
        folder = tmp_path / "runs" / trial_id
        folder.mkdir(parents=True)
        lines = [{"epoch": e + 1, "loss": {"loss": 0.1}, "epoch_seconds": 1.0, "fusion_seconds": 0.0,
                  "valid": {"ndcg@20": s}} for e, s in enumerate(scores)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    def scheduler() -> ResumableASHA:
        s = ResumableASHA(str(tmp_path), time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2)
        s.set_search_properties("valid_ndcg@20", "max")
        return s

    record("t0", [0.5, 0.6, 0.7, 0.8])
    record("t1", [0.6, 0.7, 0.75])  # epoch 3 written, but Tune had only its first two results
    record("t3", [0.9])  # written as Ctrl-C came: Tune has no result of it
    resumed = scheduler()
    resumed.on_trial_add(None, Trial("t0", 4))
    resumed.on_trial_add(None, Trial("t1", 2))
    resumed.on_trial_add(None, Trial("t3", None))
    rungs = {milestone: dict(recorded) for milestone, recorded in resumed._trial_info["t0"]._rungs}
    assert rungs[1] == {"t0": 0.5, "t1": 0.6} and rungs[2] == {"t0": 0.6, "t1": 0.7} and rungs[4] == {"t0": 0.8}
    # a new trial below the rebuilt rung-1 cutoff is stopped, as in the uninterrupted sweep
    fresh = Trial("t2", None)
    resumed.on_trial_add(None, fresh)
    result = {"epoch": 1, "valid_ndcg@20": 0.1}
    assert resumed.on_trial_result(None, fresh, result) == TrialScheduler.STOP
    plain = scheduler()
    plain._replay = lambda trial: None  # Ray Tune's own restore: empty rungs
    plain.on_trial_add(None, fresh)
    assert plain.on_trial_result(None, fresh, result) == TrialScheduler.CONTINUE


# ----------------------------------------------------------------------------- 33: Ctrl-C on Ray paths


def test_ctrl_c_during_a_ray_train_fit_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train's own SIGINT handler (registered when fit() runs on the main thread) ends the
    process with status 1; fit_interruptibly keeps Ctrl-C a KeyboardInterrupt of the caller."""
    from slifmr.launch import fit_interruptibly

    calls: list[object] = []
    stopped = threading.Event()

    class Trainer:
        def fit(self) -> None:
            calls.append(threading.current_thread() is threading.main_thread())
            stopped.wait(60)  # a run until Ray shuts down

    import ray

    monkeypatch.setattr(ray, "shutdown", lambda: (calls.append("shutdown"), stopped.set()))
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        fit_interruptibly(Trainer())
    assert calls == [False, "shutdown"]  # fit ran off the main thread; Ray was shut down


# ----------------------------------------------------------------------------- 11: the cluster beyond one fault


def test_a_worker_group_that_cannot_start_ends_the_run_in_one_line() -> None:
    """Ray Train retries a worker group that cannot start forever by default (a second node lost
    during recovery would hang the job); slifmr bounds it and names what to do."""
    from ray.train import FailureConfig

    from slifmr.launch import GROUP_START_RETRIES, _cluster_error, _failure_config, _first_cause

    config = _failure_config(FailureConfig, 2)
    assert config.max_failures == 2 and getattr(config, "controller_failure_limit", GROUP_START_RETRIES) == GROUP_START_RETRIES

    class WorkerGroupStartupTimeoutError(Exception):
        pass

    line = str(_cluster_error(WorkerGroupStartupTimeoutError("timed out after 60 s"), 2, Path("runs/x")))
    assert "could not start the 2-worker group" in line and "slifmr train --resume runs/x --workers 2" in line
    assert _cluster_error(ValueError("other"), 2, Path("runs/x")) is None

    class Failed(Exception):
        worker_failures = {1: RuntimeError("late"), 0: OSError(30, "Read-only file system")}

    assert _first_cause(Failed("Training failed due to worker errors:\n...")) == \
        "rank 0: OSError: [Errno 30] Read-only file system"
    assert _first_cause(RuntimeError("Ray's own\nsecond line")) == "Ray's own"


def test_ctrl_c_during_a_checkpoint_write_is_an_interrupt_after_the_write(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Case 33's in-process flake: a Ctrl-C landing inside torch.save surfaced as "could not write
    checkpoint ...: Bad file descriptor" (exit 2). The write now finishes, then the interrupt is
    raised as itself (exit 130 and the resume line), and the checkpoint it names is whole."""
    import signal

    import torch

    from slifmr.distributed import checkpoint

    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, mid-write
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path / "ckpt", {"w": torch.ones(2)}, {"epoch": 1})
    monkeypatch.undo()
    state, meta = checkpoint.load_checkpoint(tmp_path / "ckpt")
    assert meta["epoch"] == 1 and torch.equal(state["w"], torch.ones(2))
