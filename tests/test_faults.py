"""Faults a user meets, end to end: the driver killed (SIGKILL) or interrupted (Ctrl-C) mid-run,
a truncated or corrupted checkpoint, a crafted pickle, a full disk. Each ends with nothing lost:
`slifmr train --resume` finishes with the metrics of an uninterrupted run (exactly: training is
deterministic per seed and epoch), and the run folder stays readable.

(The worker killed mid-epoch under Ray Train is tests/test_ray.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slifmr.config import load_config
from slifmr.data.format import write_dataset
from slifmr.data.synth import synthesize
from slifmr.distributed.checkpoint import CheckpointError, load_checkpoint
from slifmr.training import train_loop

SMALL = ["model.embedding_dim=16", "model.k_corr=3", "model.k_mm=3", "train.batch_size=256", "train.patience=100",
         "train.threads=1"]
EPOCHS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large enough that an epoch takes a noticeable fraction of a second."""
    ds = synthesize(users=1500, items=600, interactions=40000, entities=1500, triples=6000, seed=5)
    return write_dataset(ds, tmp_path_factory.mktemp("faults") / "data")


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run every fault is compared with."""
    return train_loop(_cfg(data, EPOCHS), tmp_path_factory.mktemp("ref") / "run")


def _cfg(data: Path, epochs: int):  # noqa: ANN202
    cfg = load_config(overrides=[*SMALL, f"train.epochs={epochs}"])
    cfg.data = str(data)
    return cfg


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "slifmr", *args]


def _train_args(data: Path, run: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--epochs", str(EPOCHS), *sum((["--set", s] for s in SMALL), [])]


def _epochs_done(run: Path) -> int:
    f = run / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


def _assert_same_result(run: Path, reference: dict) -> None:
    got = json.loads((run / "results.json").read_text())
    assert got["best_epoch"] == reference["best_epoch"]
    assert got["test"] == pytest.approx(reference["test"], abs=1e-9)
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))  # each epoch once


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)])
def test_driver_stopped_mid_run_then_resumed(data: Path, reference: dict, tmp_path: Path, sig: int, code: int) -> None:
    run = tmp_path / "run"
    # SIGINT at its default (a shell's background job inherits it ignored), as at a terminal
    proc = subprocess.Popen(_cli(*_train_args(data, run)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _epochs_done(run) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    if sig == signal.SIGINT:
        assert err.strip().splitlines()[-1] == f"interrupted; continue with: slifmr train --resume {run}"
    assert _epochs_done(run) < EPOCHS
    state, meta = load_checkpoint(run / "checkpoint")  # consistent, whatever the moment
    assert meta["epoch"] >= 1
    done = subprocess.run(_cli("-q", "train", "--resume", str(run)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_result(run, reference)


@pytest.mark.parametrize("damage", ["truncate state.pt", "garble meta.json", "delete state.pt"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(data: Path, reference: dict, tmp_path: Path, damage: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    from slifmr.cli import main

    run = tmp_path / "run"
    train_loop(_cfg(data, 3), run)
    ck = run / "checkpoint"
    if damage == "truncate state.pt":
        blob = (ck / "state.pt").read_bytes()
        (ck / "state.pt").write_bytes(blob[: len(blob) // 2])
    elif damage == "garble meta.json":
        (ck / "meta.json").write_text("{not json")
    else:
        (ck / "state.pt").unlink()
    state, meta = load_checkpoint(ck)
    assert meta["epoch"] == 2  # the generation before
    assert main(["-q", "train", "--resume", str(run), "--epochs", str(EPOCHS)]) == 0
    assert "falling back to the previous checkpoint" in capsys.readouterr().err
    _assert_same_result(run, reference)


def test_both_generations_damaged_is_a_clear_error(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from slifmr.cli import main

    run = tmp_path / "run"
    train_loop(_cfg(data, 2), run)
    for folder in ("checkpoint", "checkpoint.prev"):
        (run / folder / "meta.json").write_text("")
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: checkpoint") and "corrupted" in err[-1]


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("touch PWNED",))


def test_crafted_pickle_in_a_checkpoint_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ck = tmp_path / "checkpoint"
    ck.mkdir()
    torch.save({"model": {}, "payload": _Evil()}, ck / "state.pt")
    (ck / "meta.json").write_text(json.dumps({"epoch": 1}))
    with pytest.raises(CheckpointError, match="holds objects other than tensors; refusing to load it"):
        load_checkpoint(ck)
    assert not (tmp_path / "PWNED").exists()


def _limited(args: list[str], max_file_bytes: int) -> subprocess.CompletedProcess:
    """Run the CLI where no file may grow past max_file_bytes (RLIMIT_FSIZE: writes past it
    fail with EFBIG, as on a full disk), without root and without a tmpfs."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes})); "
            "from slifmr.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(data: Path, reference: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_loop(_cfg(data, 2), run)
    size = (run / "checkpoint" / "state.pt").stat().st_size
    done = _limited(["train", "--resume", str(run), "--epochs", str(EPOCHS)], size // 2)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not write checkpoint") and last.endswith("the previous one is kept"), last
    assert "Traceback" not in done.stderr
    assert load_checkpoint(run / "checkpoint")[1]["epoch"] == 2
    assert not list(run.glob(".*tmp*"))  # no half-written folder left behind
    resumed = subprocess.run(_cli("-q", "train", "--resume", str(run), "--epochs", str(EPOCHS)),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_result(run, reference)


def test_full_disk_while_writing_a_dataset_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    done = _limited(["data", "synth", "--users", "3000", "--items", "800", "--interactions", "60000", "--out", str(out)], 20_000)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: could not write dataset"), done.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
