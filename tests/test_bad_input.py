"""Bad input, swept: every reader and command gets malformed inputs (data files, configs, sweep
files, command-line options) and must answer with exit status 2, ONE readable line naming what is
wrong, no traceback, and no partial output left behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny

from slifmr.cli import main
from slifmr.data.format import write_dataset

Setup = Callable[[Path], list[str]]  # a scratch folder -> argv (OUT marks where output would go)


def _dataset(tmp: Path) -> Path:
    return write_dataset(tiny(), tmp / "d")


def _info(change: Callable[[Path], None]) -> Setup:
    def setup(tmp: Path) -> list[str]:
        d = _dataset(tmp)
        change(d)
        return ["data", "info", str(d)]
    return setup


def _truncate(rel: str) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        blob = (d / rel).read_bytes()
        (d / rel).write_bytes(blob[: len(blob) // 3])
    return change


def _meta(**changes: object) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        meta = json.loads((d / "meta.json").read_text())
        meta.update(changes)
        (d / "meta.json").write_text(json.dumps(meta))
    return change


def _kg_tail(d: Path) -> None:
    t = pq.read_table(d / "kg.parquet").to_pydict()
    t["tail"][0] = 10**6
    pq.write_table(pa.table(t), d / "kg.parquet")


def _file(name: str, text: str, *argv: str) -> Setup:
    def setup(tmp: Path) -> list[str]:
        (tmp / name).write_text(text)
        return [a.replace("FILE", str(tmp / name)).replace("DATA", str(_dataset(tmp)) if "DATA" in a else a) for a in argv]
    return setup


def _recbole(inter: str) -> Setup:
    def setup(tmp: Path) -> list[str]:
        src = tmp / "rb"
        src.mkdir()
        (src / "rb.inter").write_text(inter)
        return ["data", "import", "recbole", str(src), "--out", "OUT"]
    return setup


def _imported(tmp: Path) -> Path:
    from slifmr.data.table import import_table

    (tmp / "inter.csv").write_text(INTER_CSV)
    return write_dataset(import_table(str(tmp / "inter.csv")), tmp / "imported")


def _write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def _run_folder(tmp: Path) -> Path:
    from slifmr.config import load_config
    from slifmr.training import train_loop

    cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.epochs=1"])
    cfg.data = str(_dataset(tmp))
    train_loop(cfg, tmp / "run")
    return tmp / "run"


INTER_CSV = "user_id,item_id,ts\n" + "".join(f"u{u},i{(u + k) % 7},{100 * k + u}\n" for u in range(5) for k in range(5))


def _table(files: dict[str, str | pa.Table], *argv: str) -> Setup:
    """Write `files` (CSV text or a pyarrow table, saved as Parquet) into the scratch folder,
    then run `data import table` (FILE:name in argv is that file's path)."""
    def setup(tmp: Path) -> list[str]:
        for name, content in {"inter.csv": INTER_CSV, **files}.items():
            if isinstance(content, pa.Table):
                pq.write_table(content, tmp / name)
            else:
                (tmp / name).write_text(content)
        args = [a.replace("FILE:", f"{tmp}/") for a in argv]
        return ["data", "import", "table", *(args or [str(tmp / "inter.csv")]), "--out", "OUT"]
    return setup


def _table_args(*argv: str) -> list[str]:
    return ["FILE:inter.csv", *argv]


SWEEP = "variant: slifmr\nscheduler: {type: asha, grace_period: 2, max_t: 4, reduction_factor: 2}\n"

CASES: dict[str, tuple[Setup, str]] = {
    # data files
    "interactions missing": (_info(lambda d: (d / "interactions.parquet").unlink()), "interactions.parquet: file is missing"),
    "interactions truncated": (_info(_truncate("interactions.parquet")), "not a readable Parquet file"),
    "kg truncated": (_info(_truncate("kg.parquet")), "kg.parquet: not a readable Parquet file"),
    "meta not json": (_info(lambda d: (d / "meta.json").write_text("{oops")), "meta.json"),
    "meta schema version": (_info(_meta(schema_version=99)), "schema version 99 is not supported"),
    "feature file garbage": (_info(lambda d: (d / "features" / "text.npy").write_bytes(b"garbage")), "text.npy"),
    "feature NaN": (_info(lambda d: np.save(d / "features" / "text.npy",
                                             np.full((40, 8), np.nan, dtype=np.float32))), "NaN or inf"),
    "feature beyond float32 range": (_info(lambda d: np.save(d / "features" / "text.npy",
                                                             np.full((40, 8), 3e38, dtype=np.float32))), "beyond +-1e+15"),
    "kg tail out of range": (_info(_kg_tail), "kg.parquet, column 'tail', row 0"),
    "dataset is a file": (_file("f.txt", "x", "data", "info", "FILE"), "f.txt"),
    "recbole header without types": (_recbole("user_id\titem_id\n1\t2\n"), "rb.inter"),
    "recbole empty": (_recbole(""), "rb.inter"),
    "table null user id": (_table({"i.parquet": pa.table({"user_id": ["a", None, "b"], "item_id": [1, 2, 3]})},
                                  "FILE:i.parquet"), "i.parquet, row 1, column 'user_id': missing id"),
    "table float ids": (_table({"i.parquet": pa.table({"user_id": [1.5, 2.0], "item_id": [1, 2]})}, "FILE:i.parquet"),
                        "ids must be strings or integers, found double"),
    "table empty csv id": (_table({"e.csv": "user_id,item_id\nu1,i1\n  ,i2\n"}, "FILE:e.csv"), "e.csv, row 1 (line 3), column 'user_id': empty id"),
    "table text timestamps": (_table({"t.csv": "user_id,item_id,ts\nu1,i1,2020-01-03\n"}, "FILE:t.csv", "--time-col", "ts",
                                     "--split", "temporal"), "convert dates first"),
    "table bad split value": (_table({"s.csv": "user_id,item_id,part\nu1,i1,train\nu1,i2,training\n"}, "FILE:s.csv",
                                     "--split-col", "part"), "row 1 (line 3), column 'part': split 'training' is not train"),
    "table missing column": (_table({}, *_table_args("--user-col", "customer")), "column 'customer': column is missing"),
    "table not a table": (_table({"x.txt": "a"}, "FILE:x.txt"), "is neither Parquet"),
    "table threshold on text": (_table({}, *_table_args("--threshold", "user_id=3")), "is an id or split column"),
    "table vector lengths differ": (_table({"f.parquet": pa.table({"item_id": ["i0", "i1"], "v": [[1.0, 2.0], [1.0]]})},
                                           *_table_args("--features", "image=FILE:f.parquet")),
                                    "f.parquet, row 1, column 'v': vector of length 1, expected 2"),
    "table NaN vector": (_table({"f.parquet": pa.table({"item_id": ["i0", "i1"], "v": [[1.0, float("nan")], [1.0, 2.0]]})},
                                *_table_args("--features", "image=FILE:f.parquet")), "vector entry 1 is nan"),
    "table item metadata twice": (_table({"items.csv": "item_id,title\ni1,A\ni2,B\ni1,C\n"},
                                         *_table_args("--items", "FILE:items.csv")), "items.csv, row 2 (line 4), column 'item_id': item 'i1' has a second row"),
    "table kg without links": (_table({"kg.csv": "head,relation,tail\na,r,b\n"}, *_table_args("--kg", "FILE:kg.csv")),
                               "needs both --kg"),
    "table item linked twice": (_table({"kg.csv": "head,relation,tail\na,r,b\n", "l.csv": "item_id,entity\ni1,a\ni1,b\n"},
                                       *_table_args("--kg", "FILE:kg.csv", "--kg-links", "FILE:l.csv")),
                                "l.csv, row 1 (line 3), column 'item_id': item 'i1' is linked to a second entity"),
    "add-features unknown ids": (lambda tmp: ["data", "add-features", str(_imported(tmp)), "--name", "image", "--from",
                                              str(_write(tmp / "f.parquet", pa.table({"item_id": ["zz"], "v": [[1.0]]})))],
                                 "0 row(s) match an item"),
    "add-features without raw ids": (lambda tmp: ["data", "add-features", str(_dataset(tmp)), "--name", "image", "--from",
                                                  str(_write(tmp / "f.parquet", pa.table({"item_id": ["i1"], "v": [[1.0]]})))],
                                     "has no raw item ids"),
    "recbole folder missing": (lambda tmp: ["data", "import", "recbole", str(tmp / "none"), "--out", "OUT"], "folder does not exist"),
    # configs
    "config invalid yaml": (_file("c.yaml", "model: [", "train", "--config", "FILE", "--out", "OUT"), "invalid YAML"),
    "config not a mapping": (_file("c.yaml", "- 1\n- 2\n", "train", "--config", "FILE", "--out", "OUT"), "expected a mapping"),
    "config unknown key": (_file("c.yaml", "model: {nope: 1}\n", "train", "--config", "FILE", "--out", "OUT"), "unknown config key 'model.nope'"),
    "config wrong type": (_file("c.yaml", "model: {k_corr: ten}\n", "train", "--config", "FILE", "--out", "OUT"), "expected an integer"),
    "config beta out of range": (lambda tmp: ["train", "--set", "model.beta=1.5", "--out", "OUT"], "model.beta must be in [0, 1]"),
    "config zero epochs": (lambda tmp: ["train", "--epochs", "0", "--out", "OUT"], "argument --epochs: must be an integer >= 1, got 0"),
    "config infinite lr": (lambda tmp: ["train", "--set", "train.lr=inf", "--out", "OUT"], "train.lr must be a finite number"),
    "config nan tau": (lambda tmp: ["train", "--set", "model.tau=nan", "--out", "OUT"], "model.tau must be a finite number"),
    "config negative gamma": (lambda tmp: ["train", "--set", "model.gamma=-0.5", "--out", "OUT"], "model.gamma must be >= 0"),
    "config repeated topk": (lambda tmp: ["train", "--set", "train.topk=20,20", "--out", "OUT"], "distinct positive cutoffs"),
    "config zero eval chunk": (lambda tmp: ["train", "--set", "train.eval_chunk=0", "--out", "OUT"], "train.eval_chunk must be positive"),
    "unknown variant": (lambda tmp: ["train", "--variant", "bogus", "--out", "OUT"], "unknown variant 'bogus'"),
    # sweep files
    "sweep unknown parameter": (_file("s.yaml", SWEEP + "space: {model.nope: {uniform: [0, 1]}}\n", "tune", "FILE", "--storage", "OUT"),
                                "unknown config key 'model.nope'"),
    "sweep empty range": (_file("s.yaml", SWEEP + "space: {model.beta: {uniform: [0.5, 0.1]}}\n", "tune", "FILE", "--storage", "OUT"),
                          "empty range"),
    "sweep unsupported distribution": (_file("s.yaml", SWEEP + "space: {model.beta: {normal: [0.5, 0.1]}}\n", "tune", "FILE",
                                             "--storage", "OUT"), "unsupported distribution 'normal'"),
    "sweep max_t below grace": (_file("s.yaml", "scheduler: {grace_period: 9, max_t: 3}\nspace: {model.beta: {uniform: [0.1, 0.5]}}\n",
                                      "tune", "FILE", "--storage", "OUT"), "is below its grace_period"),
    "sweep selects on test": (_file("s.yaml", SWEEP + "metric: test_recall@20\nspace: {model.beta: {uniform: [0.1, 0.5]}}\n",
                                    "tune", "FILE", "--storage", "OUT"), "not a validation metric"),
    "sweep file missing": (lambda tmp: ["tune", str(tmp / "none.yaml"), "--storage", "OUT"], "does not exist"),
    "sweep resume not a sweep": (lambda tmp: ["tune", "--resume", str(tmp)], "is not a sweep folder"),
    # command-line options
    "negative workers": (lambda tmp: ["train", "--workers", "-1", "--out", "OUT"], "argument --workers: must be an integer >= 0, got -1"),
    "zero stage 3": (lambda tmp: ["train", "--workers", "2", "--strategy", "deepspeed", "--zero-stage", "3", "--out", "OUT"],
                     "argument --zero-stage: must be an integer in [1, 2], got 3"),
    "fanout too shallow": (lambda tmp: ["train", "--sampling", "neighbor", "--fanout", "10", "--out", "OUT"],
                           "has 1 hop(s); the cf view has 2 layers"),
    "fanout unknown relation": (lambda tmp: ["train", "--sampling", "neighbor", "--fanout", "10,5;images=3,1", "--out", "OUT"],
                                "is not relation=fan-outs"),
    "sampling with deepspeed": (lambda tmp: ["train", "--workers", "2", "--strategy", "deepspeed", "--sampling", "neighbor",
                                             "--out", "OUT"], "use --strategy ddp"),
    "unknown knn method": (lambda tmp: ["train", "--set", "model.knn=lsh", "--out", "OUT"], "model.knn must be 'exact' or 'approx'"),
    "zero stage without deepspeed": (lambda tmp: ["train", "--zero-stage", "1", "--out", "OUT"],
                                     "--zero-stage applies to --strategy deepspeed only"),
    "fanout without sampling": (lambda tmp: ["train", "--fanout", "5,5", "--out", "OUT"], "--fanout applies to --sampling neighbor"),
    "history fanout all zero": (lambda tmp: ["train", "--sampling", "history", "--fanout", "0", "--out", "OUT"],
                                "must not be 0 everywhere"),
    "history grad unknown": (lambda tmp: ["train", "--sampling", "history", "--set", "train.history_grad=all",
                                          "--out", "OUT"], "train.history_grad"),
    "sample device unknown": (lambda tmp: ["train", "--sampling", "history", "--set", "train.sample_device=gpu",
                                           "--out", "OUT"], "train.sample_device"),
    "history option without history": (lambda tmp: ["train", "--sampling", "neighbor", "--set", "train.history_refresh=5",
                                                     "--out", "OUT"], "apply to train.sampling=history only"),
    "history with user_aux": (lambda tmp: ["train", "--sampling", "history", "--set", "model.user_aux=true", "--out", "OUT"],
                              "cannot be used with train.sampling=history"),
    "fanout deeper than the views": (lambda tmp: ["train", "--sampling", "neighbor", "--fanout", "10,5,3", "--out", "OUT"],
                                     "has 3 hop(s); the cf view has 2 layers"),
    "max failures in-process": (lambda tmp: ["train", "--max-failures", "2", "--out", "OUT"], "--max-failures applies to Ray Train"),
    "resume changes the model": (lambda tmp: ["train", "--resume", str(_run_folder(tmp)), "--set", "model.k_corr=5"],
                                 "model.k_corr (3 -> 5) would change what is trained"),
    "resume changes the variant": (lambda tmp: ["train", "--resume", str(_run_folder(tmp)), "--variant", "static"],
                                   "variant (slifmr -> static)"),
    "recommend out without all": (lambda tmp: ["recommend", str(_run_folder(tmp)), "--users", "0", "--out", "OUT"],
                                  "--out applies to --all"),
    "ease with gradient options": (lambda tmp: ["train", "--variant", "ease", "--epochs", "3", "--set", "train.lr=0.1",
                                                "--out", "OUT"], "--epochs, train.lr do(es) not apply to variant ease"),
    "synth zero interactions": (lambda tmp: ["data", "synth", "--interactions", "0", "--out", "OUT"], "argument --interactions: must be an integer >= 1, got 0"),
    # an existing --out is refused before the input is read (the input here does not even exist)
    "import into an existing folder": (lambda tmp: ["data", "import", "table", str(tmp / "none.csv"), "--out", str(tmp)],
                                       "already exists"),
    "synth into an existing folder": (lambda tmp: ["data", "synth", "--out", str(tmp)], "already exists"),
    "resume without checkpoint": (lambda tmp: ["train", "--resume", str(tmp)], "is not a run folder"),
    "recommend all without out": (lambda tmp: ["recommend", str(_run_folder(tmp)), "--all"], "--out"),
    "recommend unknown user": (lambda tmp: ["recommend", str(_run_folder(tmp)), "--users", "nobody"], "unknown user id 'nobody'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    setup, message = CASES[case]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in setup(scratch)]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = int(e.code)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # no partial output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_the_sweep_covers_enough_cases() -> None:
    assert len(CASES) >= 25
