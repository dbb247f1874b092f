from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from slifmr.cli import build_parser, main
from slifmr.errors import ConfigError

SMALL = ["--set", "model.embedding_dim=16", "--set", "model.k_corr=3", "--set", "train.batch_size=128"]


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_subcommand_help_has_an_example() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    seen = 0
    for name, p in sub.choices.items():
        if name == "data":
            inner = next(a for a in p._actions if a.dest == "data_cmd")
            for q in inner.choices.values():
                assert "example:" in q.format_help()
                seen += 1
        assert "example:" in p.format_help()
        seen += 1
    assert seen >= 9


def test_console_script_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "slifmr", "data", "info", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: dataset folder does not exist"]


def test_data_synth_and_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(["data", "synth", "--users", "50", "--items", "30", "--interactions", "600", "--seed", "1", "--out", str(tmp_path / "s")], capsys)
    assert code == 0 and "users         50" in out
    code, out, _ = run(["data", "info", str(tmp_path / "s")], capsys)
    assert code == 0 and "items         30" in out and "text (32-d" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "synth", "--modalities", "text:abc", "--out", "X"], "--modalities: 'text:abc' is not name:dim"),
        (["data", "synth", "--users", "0", "--out", "X"], "argument --users: must be an integer >= 1, got 0"),
        (["data", "import", "recbole", "/nonexistent/dir", "--out", "X"], "/nonexistent/dir: folder does not exist"),
        (["train", "--variant", "bogus"], "unknown variant 'bogus'"),
        (["train", "--set", "model.nope=1"], "unknown config key 'model.nope'"),
        (["train", "--set", "model.k_corr=ten"], "config key 'model.k_corr': expected an integer"),
        (["train", "--set", "train.lr"], "--set 'train.lr': expected key=value"),
        (["train", "--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
        (["train", "--resume", "/nonexistent/run"], "run folder /nonexistent/run does not exist"),
        (["train", "--data", "/nonexistent/data", "--epochs", "1"], "dataset folder /nonexistent/data does not exist"),
        (["train", "--gpu", "--epochs", "1"], "--gpu: torch sees no CUDA device on this machine"),
        (["train", "--strategy", "deepspeed", "--epochs", "1"], "--strategy deepspeed needs --workers >= 1"),
        (["train", "--workers", "2", "--strategy", "deepspeed", "--zero-stage", "3"], "argument --zero-stage: must be an integer in [1, 2], got 3"),
        (["train", "--workers", "-1"], "argument --workers: must be an integer >= 0, got -1"),
        (["evaluate", "/nonexistent/run"], "run folder /nonexistent/run does not exist"),
        (["report", "/nonexistent/run"], "is not a run folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    argv = [a.replace("X", str(tmp_path / "x")) for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "x").exists()


def test_train_evaluate_recommend_report(tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    code, out, _ = run(["-q", "train", "--data", str(tiny_path), "--out", str(run_dir), "--epochs", "2", "--seed", "3", *SMALL], capsys)
    assert code == 0 and '"best_epoch"' in out
    code, _, err = run(["train", "--data", str(tiny_path), "--out", str(run_dir), "--epochs", "2"], capsys)
    assert code == 2 and "--resume" in err
    code, _, err = run(["train", "--resume", str(run_dir), "--workers", "2", "--strategy", "deepspeed"], capsys)
    assert code == 2 and "train.strategy (ddp -> deepspeed) would change what is trained" in err
    code, out, _ = run(["-q", "train", "--resume", str(run_dir), "--epochs", "3"], capsys)
    assert code == 0
    code, out, _ = run(["evaluate", str(run_dir)], capsys)
    assert code == 0 and '"test"' in out and '"recall@20"' in out
    code, out, _ = run(["recommend", str(run_dir), "--users", "0,5", "--k", "3"], capsys)
    assert code == 0 and out.count(". item") == 6
    code, _, err = run(["recommend", str(run_dir), "--users", "99999"], capsys)
    assert code == 2 and "unknown user id '99999'" in err
    recs = tmp_path / "recs.parquet"
    code, _, _ = run(["recommend", str(run_dir), "--all", "--k", "4", "--out", str(recs)], capsys)
    t = pq.read_table(recs)
    assert code == 0 and t.num_rows == 60 * 4 and t.column_names == ["user", "rank", "item", "score"]
    code, out, _ = run(["report", str(run_dir), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0 and (tmp_path / "rep" / "curves.png").stat().st_size > 1000 and "| run |" in out


def test_scale_preset_is_a_layer_under_the_yaml_and_the_variant(tmp_path: Path) -> None:
    from slifmr.config import PRESETS, load_config

    cfg = load_config(preset="scale")
    assert (cfg.train.sampling, cfg.model.knn, cfg.train.eval_users) == ("history", "approx", 10000)
    assert cfg.model.ridge_weight > 0 and cfg.model.ridge_blend  # the self-loop whole, head included
    assert cfg.model.ridge_neighbours == "union"  # a head from the first epoch
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("train:\n  eval_users: 500\n")
    cfg = load_config(yaml_file, "lightgcn", ["train.fanout=5,5"], preset="scale")
    assert (cfg.train.eval_users, cfg.train.sampling, cfg.train.fanout, cfg.train.batch_size) == (500, "history", "5,5", 2048)
    assert set(PRESETS) == {"scale"}
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config(preset="huge")
    with pytest.raises(ConfigError, match="variant cooc_ridge is a closed form: run it without --preset"):
        load_config(variant="cooc_ridge", preset="scale")
    assert main(["train", "--resume", str(tmp_path), "--preset", "scale"]) == 2


@pytest.mark.parametrize("flags", [["--planted", "--latent-dim", "0"], ["--relations", "0"], ["--triples", "-1"],
                                   ["--planted", "--triples", "3"], ["--cluster-size", "3"]])
def test_data_synth_refuses_flags_that_do_not_apply_or_are_out_of_range(flags: list[str], tmp_path: Path) -> None:
    assert main(["data", "synth", *flags, "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()


def test_report_reads_the_metrics_each_run_has(tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run whose train.topk has no 20 is drawn and tabulated at its own metric, beside a default one."""
    runs = {"k5-10": ["--set", "train.topk=[5,10]", "--set", "train.stop_metric=ndcg@10"], "default": []}
    for name, extra in runs.items():
        code, _, _ = run(["-q", "train", "--data", str(tiny_path), "--out", str(tmp_path / name), "--epochs", "1",
                          *SMALL, *extra], capsys)
        assert code == 0
    code, out, err = run(["report", *(str(tmp_path / n) for n in runs), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    table = (tmp_path / "rep" / "table.md").read_text().splitlines()
    assert table[0].split(" | ")[4:8] == ["test R@5", "test N@5", "test R@10", "test N@10"]
    first, second = table[2].split(" | "), table[3].split(" | ")
    assert first[3].startswith("ndcg@10 ") and second[3].startswith("recall@20 ")
    assert first[-2] == "-" and second[4] == "-"  # test R@20 of the first, R@5 of the second: not measured
