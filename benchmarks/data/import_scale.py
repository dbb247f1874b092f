"""Importing your own data at scale (issue 16): synthetic interactions with string ids written as
Parquet, then `slifmr data import table` on them, one size at a time in a fresh process.

    python -m benchmarks.data.import_scale --rows 10000000 100000000

Per size (the median of --repeat imports): rows/s of the whole command (read, encode, split, validate, write), its peak resident
memory (the child process's ru_maxrss), the size of the Parquet input and of the written
dataset folder, and the ratio peak memory / written dataset. Input: ~10 interactions per user,
users 'user-<n>', items 'item-<n>' over rows/100 items (Zipf-like popularity), a float rating;
the 1e8-row input is written in row groups of 2^20 rows and never held whole in memory.
Writes benchmarks/results/import-scale.json, its PNG and the IMPORT_SCALE block of RESULTS.md;
with --old-tree, import-scale-side-by-side.json and the IMPORT_SIDE_BY_SIDE block.

Each import runs this file as a fresh child process (`python .../import_scale.py --child SRC OUT`,
PYTHONPATH naming the checkout measured): the child imports slifmr only, never this package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROW_GROUP = 1 << 20


def write_input(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` interactions as Parquet, generated and written one row group at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    users, items = max(1, rows // 10), max(2, rows // 100)
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("rating", pa.float32())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            u = rng.integers(0, users, n)
            i = np.minimum((rng.pareto(1.2, n) * items / 50).astype(np.int64), items - 1)
            writer.write_table(pa.table({
                "user_id": pc.binary_join_element_wise("user-", pc.cast(pa.array(u), pa.string()), ""),
                "item_id": pc.binary_join_element_wise("item-", pc.cast(pa.array(i), pa.string()), ""),
                "rating": pa.array(rng.integers(1, 6, n).astype(np.float32)),
            }, schema=schema))
    tmp.replace(path)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child(source: str, out: str) -> int:
    """The measured command, in this (fresh) process: prints one JSON line."""
    from slifmr.cli import main

    start = time.perf_counter()
    code = main(["-q", "data", "import", "table", source, "--threshold", "rating=3", "--out", out])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss_bytes": peak}))
    return code


def measure(rows: int, work: Path, repeat: int, tree: Path | None = None) -> dict:
    """`repeat` imports of `rows` rows by this checkout, or by the checkout at `tree` (its
    slifmr package first on the child's path): the median run's row."""
    src = work / f"interactions-{rows}.parquet"
    if not src.exists():
        t = time.perf_counter()
        write_input(src, rows)
        print(f"wrote {rows:,} rows in {time.perf_counter() - t:.0f} s", flush=True)
    out = work / f"dataset-{rows}"
    runs = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        env = {**os.environ, "OMP_NUM_THREADS": "2"} | ({"PYTHONPATH": str(tree)} if tree else {})
        proc = subprocess.run([sys.executable, __file__, "--child", str(src), str(out)], capture_output=True, text=True,
                              env=env)
        if proc.returncode != 0:
            raise SystemExit(f"import of {rows:,} rows failed:\n{proc.stderr[-2000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{rows:,} rows: {runs[-1]['seconds']:.1f} s", flush=True)
    r = sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]  # the median run
    meta = json.loads((out / "meta.json").read_text())
    written = folder_bytes(out)
    row = {"mode": "import table", "code": str(tree) if tree else "this checkout", "rows": rows, "users": meta["num_users"], "items": meta["num_items"],
           "interactions_kept": meta["num_interactions"], "workers": 1, "threads": os.cpu_count(),
           "seconds": r["seconds"], "rows_per_second": rows / r["seconds"], "peak_rss_bytes": r["peak_rss_bytes"],
           "input_bytes": src.stat().st_size, "dataset_bytes": written,
           "peak_over_dataset": r["peak_rss_bytes"] / written, "runs_seconds": [run["seconds"] for run in runs]}
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(row), flush=True)
    return row


def plot(rows: list[dict]) -> None:
    from benchmarks.lib import results

    plt = results.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    x = [r["rows"] for r in rows]
    a.plot(x, [r["rows_per_second"] / 1e6 for r in rows], "o-", label="import table")
    a.axhline(2.0, ls="--", c="gray", label="target 2e6 rows/s")
    a.set(xscale="log", xlabel="input rows", ylabel="million rows / s", title="throughput")
    a.legend()
    b.plot(x, [r["peak_over_dataset"] for r in rows], "o-")
    b.axhline(3.0, ls="--", c="gray", label="target 3x")
    b.set(xscale="log", xlabel="input rows", ylabel="peak RSS / written dataset", title="memory")
    b.legend()
    fig.tight_layout()
    results.save_figure(fig, "import-scale")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", type=int, default=[10_000_000])
    ap.add_argument("--work", default="/tmp/slifmr-import-scale", help="where inputs and datasets go (large)")
    ap.add_argument("--repeat", type=int, default=1, help="imports per size; the median run is reported (a shared "
                    "machine's timings vary by 20%%)")
    ap.add_argument("--old-tree", help="also import with the checkout at this path (e.g. a git worktree of an earlier "
                    "commit), alternating with this one: results/import-scale-side-by-side.json and its section")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.old_tree:
        return side_by_side(args, work)
    from benchmarks.lib import results  # not at the top: the --child process imports slifmr only

    rows = [measure(n, work, args.repeat) for n in args.rows]
    command = results.this_command()
    results.write_results("import-scale", {"rows": rows}, note="nothing else running")
    plot(rows)
    gb = 1 << 30
    lines = ["### Importing your own data at scale (issue 16)", "", f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, nothing else running. Input: Parquet with string ids "
             "(~10 interactions per user, rows/100 items), `--threshold rating=3`; the whole "
             "`slifmr data import table` command (read, encode, deduplicate, split, validate, write) in a fresh process; "
             "the median of the runs listed.",
             "", "| input rows | users | items | kept | seconds | rows/s | peak RSS GiB | input GiB | dataset GiB | "
             "peak / dataset | runs (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['rows']:,} | {r['users']:,} | {r['items']:,} | {r['interactions_kept']:,} | {r['seconds']:.1f} | "
              f"{r['rows_per_second'] / 1e6:.2f}M | {r['peak_rss_bytes'] / gb:.2f} | {r['input_bytes'] / gb:.2f} | "
              f"{r['dataset_bytes'] / gb:.2f} | {r['peak_over_dataset']:.1f}x | "
              f"{', '.join(f'{x:.1f}' for x in r['runs_seconds'])} |" for r in rows]
    lines += ["", "![import scale](results/import-scale.png)"]
    results.write_section("IMPORT_SCALE", "\n".join(lines))
    print("\n".join(lines))
    return 0


def side_by_side(args: argparse.Namespace, work: Path) -> int:
    """This checkout against --old-tree, one import each in turn, --repeat times per size."""
    rows = []
    for n in args.rows:
        runs: dict[str, list[dict]] = {"new": [], "old": []}
        for _ in range(args.repeat):
            runs["old"].append(measure(n, work, 1, Path(args.old_tree)))
            runs["new"].append(measure(n, work, 1))
        for which, rs in runs.items():
            r = sorted(rs, key=lambda run: run["seconds"])[len(rs) // 2]
            rows.append({**r, "runs_seconds": [x["seconds"] for x in rs], "version": which})
    from benchmarks.lib import results

    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, nothing else running"
    lines = ["### Importing at scale, this checkout against an earlier one", "", f"Command: `{command}`  ",
             f"Machine: {machine}. The IMPORT_SCALE input and command; each repeat imports with the old tree, then "
             "with this checkout; the median run of each.", "",
             "| input rows | version | seconds | rows/s | peak RSS GiB | runs (s) | new / old time |", "|---|---|---|---|---|---|---|"]
    for n in args.rows:
        old = next(r for r in rows if r["rows"] == n and r["version"] == "old")
        new = next(r for r in rows if r["rows"] == n and r["version"] == "new")
        for r in (old, new):
            lines.append(f"| {n:,} | {r['version']} ({r['code']}) | {r['seconds']:.1f} | {r['rows_per_second'] / 1e6:.2f}M | "
                         f"{r['peak_rss_bytes'] / (1 << 30):.2f} | {', '.join(f'{x:.1f}' for x in r['runs_seconds'])} | "
                         + (f"{new['seconds'] / old['seconds']:.2f}" if r is new else "-") + " |")
    results.publish("IMPORT_SIDE_BY_SIDE", "import-scale-side-by-side", {"rows": rows}, lines, note=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
