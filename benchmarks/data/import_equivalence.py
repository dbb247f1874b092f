"""Do two versions of slifmr's importers give the same datasets? Imports a fixed set of inputs
(ml-100k's RecBole files, and seeded RecBole, MMRec and table folders covering pre-splits,
repeated pairs, thresholds, labels, timestamps, features and KGs) and writes, per input, a
digest of every array the Dataset holds (or the error line it gave). The measuring part imports
slifmr only, so run in another checkout it digests that checkout's importers:

    python -m benchmarks.data.import_equivalence --out /tmp/imp-new.json
    (cd /path/to/old/checkout && python -c "import runpy, sys; sys.argv[1:] = ['--out', '/tmp/imp-old.json']; runpy.run_path('/path/to/this/checkout/benchmarks/data/import_equivalence.py', run_name='__main__')")
    python -m benchmarks.data.import_equivalence --compare /tmp/imp-old.json /tmp/imp-new.json --old-label 'commit X'

--compare writes results/import-equivalence.json and the IMPORT_EQUIVALENCE block of RESULTS.md
(exit status: the number of inputs that differ).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _write(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def _recbole_folder(root: Path, rng: np.random.Generator, presplit: bool) -> Path:
    folder = root / ("pre" if presplit else "rb")
    folder.mkdir()
    name = folder.name
    users, items = 60, 40
    rows = [f"u{rng.integers(users)}\ti{rng.integers(items)}\t{rng.integers(1, 6)}\t{1000 + k}" for k in range(900)]
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    if presplit:
        first = [f"u{u}\ti{u % items}\t5\t1" for u in range(users)]  # every user has a training row
        _write(folder / f"{name}.train.inter", head, first + rows[:700])
        _write(folder / f"{name}.valid.inter", head, rows[700:800])
        _write(folder / f"{name}.test.inter", head, rows[800:])
    else:
        _write(folder / f"{name}.inter", head, rows)
    vec = [f"i{i}\tTitle {i}\t" + " ".join(f"{v:.3f}" for v in rng.normal(size=4)) for i in range(items)]
    _write(folder / f"{name}.item", "item_id:token\tmovie_title:token_seq\tvec:float_seq", vec)
    _write(folder / f"{name}.kg", "head_id:token\trelation_id:token\ttail_id:token",
           [f"e{i}\tr{i % 3}\te{(i * 7) % 25}" for i in range(40)])
    _write(folder / f"{name}.link", "item_id:token\tentity_id:token", [f"i{i}\te{i}" for i in range(0, items, 2)])
    return folder


def _mmrec_folder(root: Path, rng: np.random.Generator, features: bool) -> Path:
    folder = root / ("mm" if features else "mm_nofeat")
    folder.mkdir()
    items = 30
    rows = [f"{u * 3}\t{u % items}\t5\t{u}\t0" for u in range(50)]
    rows += [f"{rng.integers(50) * 3}\t{rng.integers(items)}\t{rng.integers(1, 6)}\t{100 + k}\t{rng.integers(3)}"
             for k in range(600)]
    _write(folder / f"{folder.name}.inter", "userID\titemID\trating\ttimestamp\tx_label", rows)
    if features:
        np.save(folder / "image_feat.npy", rng.normal(size=(items + 5, 3)).astype(np.float32))
    return folder


def _table_file(root: Path, rng: np.random.Generator) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 3000
    path = root / "events.parquet"
    pq.write_table(pa.table({
        "user_id": pa.array([f" u{u}" if u % 7 == 0 else f"u{u}" for u in rng.integers(200, size=n)]),
        "item_id": pa.array(rng.integers(300, size=n)),
        "rating": pa.array(rng.integers(1, 6, size=n).astype(np.float64)),
        "ts": pa.array(np.arange(n, dtype=np.float64)),
        "split": pa.array(np.where(np.arange(n) < 300, "train", rng.choice(["train", "valid", "test"], size=n))),
    }), path)
    return path


def cases(root: Path) -> dict[str, Callable[[], object]]:
    from slifmr.data.mmrec import import_mmrec
    from slifmr.data.recbole import import_recbole
    from slifmr.data.table import InteractionColumns, import_table

    rng = np.random.default_rng(7)
    rb, pre = _recbole_folder(root, rng, False), _recbole_folder(root, rng, True)
    mm, mm_plain = _mmrec_folder(root, rng, True), _mmrec_folder(root, rng, False)
    table = str(_table_file(root, rng))
    out: dict[str, Callable[[], object]] = {}
    ml100k = Path.home() / ".cache/slifmr/raw/ml-100k"
    if (ml100k / "ml-100k.inter").exists():
        out["recbole ml-100k"] = lambda: import_recbole(ml100k, "ml-100k", split_seed=2026)
    out["recbole random split"] = lambda: import_recbole(rb)
    out["recbole random split, rating >= 4"] = lambda: import_recbole(rb, thresholds={"rating": 4})
    out["recbole pre-split"] = lambda: import_recbole(pre)
    out["recbole pre-split, rating >= 3"] = lambda: import_recbole(pre, thresholds={"rating": 3})
    out["mmrec features"] = lambda: import_mmrec(mm)
    out["mmrec no features, rating >= 2"] = lambda: import_mmrec(mm_plain, thresholds={"rating": 2})
    for split in ("random", "temporal", "global-temporal", "column"):
        cols = InteractionColumns(time="ts", split="split" if split == "column" else None)
        out[f"table {split}"] = lambda cols=cols, split=split: import_table(table, columns=cols, split=split)
    out["table random, rating >= 4"] = lambda: import_table(table, columns=InteractionColumns(thresholds={"rating": 4}))
    return out


def digest(ds: object) -> dict[str, str]:
    """A short hash of every array field of a Dataset (ids as text)."""
    out = {}
    for key in ("num_users", "num_items", "user", "item", "split", "timestamp", "kg", "item_entity", "num_entities"):
        value = getattr(ds, key)
        out[key] = str(value) if isinstance(value, int) else hashlib.sha256(
            np.ascontiguousarray(np.asarray(value)).tobytes() if value is not None else b"").hexdigest()[:16]
    for kind, ids in sorted(ds.ids.items()):
        out[f"ids.{kind}"] = hashlib.sha256("\n".join(map(str, np.asarray(ids).tolist())).encode()).hexdigest()[:16]
    for name, x in sorted(ds.features.items()):
        out[f"features.{name}"] = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
    return out


def run() -> dict[str, dict[str, str]]:
    """Each input's digest, or {"error": its error line}."""
    from slifmr.errors import SlifmrError

    logging.disable(logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, importer in cases(Path(tmp)).items():
            try:
                results[name] = digest(importer())
            except SlifmrError as e:
                results[name] = {"error": str(e).replace(tmp, "TMP")}
            print(f"{name}: {'error' if 'error' in results[name] else 'ok'}", flush=True)
    return results


def compare(old: Path, new: Path, old_label: str) -> int:
    """Each input's fields that differ; writes results/import-equivalence.json and the
    IMPORT_EQUIVALENCE block of RESULTS.md."""
    import platform

    from benchmarks.lib import results  # the comparing checkout's library (never imported by --out)

    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    rows = []
    for name in a:
        fields = sorted(k for k in set(a[name]) | set(b.get(name, {})) if a[name].get(k) != b.get(name, {}).get(k))
        renumbered = bool(fields) and not any(k.startswith("by_raw_id") or k == "error" for k in fields)
        rows.append({"mode": "import", "input": name, "identical": not fields, "differs_in": fields,
                     "same_content_by_raw_id": not fields or renumbered,
                     "old_error": a[name].get("error"), "new_error": b.get(name, {}).get("error")})
    same = sum(r["identical"] for r in rows)
    command = results.this_command()
    lines = ["### The importers' datasets, this checkout against an earlier one", "",
             f"Command: `{command}` (the two --out files written by each checkout, as the script's docstring says)  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores. Old: {old_label}. Each input's arrays (users, items, "
             "split, timestamps, KG, links, features) and id maps compared by sha256, and again keyed by raw id "
             "(numbering aside).", "",
             "| input | arrays | same rows, features and links by raw id |", "|---|---|---|"]
    lines += [f"| {r['input']} | {'identical' if r['identical'] else 'differs in ' + ', '.join(r['differs_in'])} | "
              f"{'yes' if r['same_content_by_raw_id'] else 'no'} |" for r in rows]
    lines += ["", f"{same} of {len(rows)} inputs give identical datasets."]
    results.publish("IMPORT_EQUIVALENCE", "import-equivalence", {"old": old_label, "rows": rows}, lines)
    return len(rows) - same


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write this checkout's digests here")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"), help="compare two --out files")
    p.add_argument("--old-label", default="an earlier checkout")
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare, args.old_label)
    if not args.out:
        p.error("give --out (digest) or --compare OLD NEW")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
