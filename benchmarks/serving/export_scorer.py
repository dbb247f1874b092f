"""The servable scorer (slifmr/scorer.py, numpy + faiss): its lists against the model's, its
users/s, and what fold-in of unseen users costs in accuracy.

    python -m benchmarks.serving.export_scorer --items 100000 --users 50000

Part 1, ml-100k: a default slifmr run (seed 0, trained here unless --run names one) is exported;
the scorer's top 20 is compared with `slifmr recommend`'s for every user, timed on one thread,
and the test metrics of three ways to serve a user are evaluated under slifmr's protocol
(`slifmr.evaluate_recs`): the trained embedding, the same user folded in from their training
history as if unseen at training, and the popularity fallback.
Part 2, a synthetic export (benchmarks/scale/inference_scale.py: random 64-d embeddings, the ridge head
over random 100-item neighbourhoods) with an HNSW index (exact_limit 0): recall of the scorer's
two-stage top 20 against the exact fused top 20 (torch, every item scored) over 1,000 users,
and users/s with HNSW and with an exact IndexFlatIP over the same items.
Writes benchmarks/results/serving.json, serving.png and the SERVING block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lib import results
from benchmarks.scale.inference_scale import make_export

K = 20


def _timed(scorer: Any, users: list[str], **options: Any) -> tuple[dict[str, list[str]], float]:
    start = time.perf_counter()
    lists = {u: [i for i, _ in scorer.recommend(u, k=K, **options)] for u in users}
    return lists, len(users) / (time.perf_counter() - start)


def _served_metrics(scorer: Any, ds: Any, work: Path) -> dict[str, dict[str, float]]:
    """Test metrics@20 of the trained embeddings, fold-in from the training history and popularity,
    each list made without the user's train and valid items (the protocol's mask)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slifmr.data.format import TEST
    from slifmr.evaluate_recs import evaluate_recommendations

    ids = np.asarray(scorer.item_ids).astype(str)
    out = {}
    for way in ("trained", "fold-in", "popularity"):
        rows: dict[str, list[Any]] = {"user": [], "rank": [], "item": [], "score": []}
        for u in range(ds.num_users):
            known = scorer.seen.row(u)
            test = ds.item[(ds.user == u) & (ds.split == TEST)]
            masked = set(np.setdiff1d(known, test).tolist())  # train and valid
            depth = K + len(masked)
            if way == "trained":
                got = scorer.recommend(str(scorer.user_ids[u]), k=depth, exclude_seen=False)
            elif way == "fold-in":
                got = scorer.recommend(None, k=depth, exclude_seen=False, history=ids[scorer.train.row(u)].tolist())
            else:
                got = scorer.recommend(None, k=depth, exclude_seen=False)
            kept = [(i, s) for i, s in got if scorer.item_rows[i] not in masked][:K]
            for rank, (i, s) in enumerate(kept, 1):
                rows["user"].append(str(scorer.user_ids[u]))
                rows["rank"].append(rank)
                rows["item"].append(i)
                rows["score"].append(s)
        path = work / f"{way}.parquet"
        pq.write_table(pa.table(rows), path)
        metrics = evaluate_recommendations(path, ds, [K])["metrics"]
        out[way] = {m: float(metrics[f"{m}@{K}"]) for m in ("recall", "ndcg")}
    return out


def ml100k(run_path: str | None, work: Path) -> dict[str, Any]:
    import slifmr
    from slifmr.scorer import Scorer

    run = slifmr.load_run(run_path) if run_path else slifmr.train(out=work / "run", seed=0)
    exp = run.export(work / "ml100k-export")
    scorer = Scorer.load(exp)
    users = [str(u) for u in np.asarray(scorer.user_ids)]
    expected = run.recommend(users, k=K).to_pydict()
    want: dict[str, list[str]] = {}
    for u, i in zip(expected["user"], expected["item"]):
        want.setdefault(u, []).append(i)
    lists, rate = _timed(scorer, users)
    same = sum(lists[u] == want.get(u, []) for u in users)
    print(f"ml-100k: {same}/{len(users)} lists identical, {rate:,.0f} users/s", flush=True)
    return {"users": len(users), "items": int(scorer.items.shape[0]), "identical_lists": same,
            "users_per_second": rate, "index": scorer.manifest["index"]["kind"],
            "served_test_metrics": _served_metrics(scorer, run.dataset, work), "run": str(run.path)}


def synthetic(users: int, items: int, sample: int, work: Path) -> dict[str, Any]:
    from slifmr.export import build_index, load_export

    export = load_export(make_export(users, items, work, exact_limit=0))
    scorer = export.scorer
    rows = np.random.default_rng(0).choice(users, sample, replace=False)
    names = [str(scorer.user_ids[r]) for r in rows]
    exact = export.recommend_batch(rows, K)
    want: dict[str, list[str]] = {}
    for u, i in zip(exact["user"], exact["item"]):
        want.setdefault(str(u), []).append(str(i))
    hnsw, hnsw_rate = _timed(scorer, names)
    scorer.index = build_index(np.asarray(scorer.items))  # exact: IndexFlatIP
    flat, flat_rate = _timed(scorer, names)
    recall = float(np.mean([len(set(hnsw[u]) & set(want[u])) / len(want[u]) for u in names]))
    flat_same = sum(flat[u] == want[u] for u in names)
    print(f"synthetic: two-stage recall@{K} {recall:.4f} (HNSW), {hnsw_rate:,.0f} vs {flat_rate:,.0f} users/s; "
          f"flat identical {flat_same}/{sample}", flush=True)
    return {"users": users, "items": items, "sampled_users": sample, "index_recall_at_export":
            scorer.manifest["index"][f"recall@{K}"], f"two_stage_recall@{K}": recall,
            "hnsw_users_per_second": hnsw_rate, "flat_users_per_second": flat_rate,
            "flat_identical_lists": flat_same}


def plot(rows: list[dict[str, Any]]) -> None:
    """Test metrics of the three ways to serve ml-100k users, and the two indexes' users/s."""
    plt = results.pyplot()
    small, large = rows
    ways = list(small["served_test_metrics"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.bar(ways, [small["served_test_metrics"][w]["recall"] for w in ways])
    a.set(ylabel=f"test Recall@{K}", title="ml-100k: how a user is served")
    b.bar(["HNSW", "exact (IndexFlatIP)"], [large["hnsw_users_per_second"], large["flat_users_per_second"]])
    b.set(ylabel="users / s, one thread", title=f"{large['items']:,} items: two-stage scorer")
    fig.tight_layout()
    results.save_figure(fig, "serving")


def publish_rows(rows: list[dict[str, Any]], command: str, machine: str) -> None:
    """The SERVING block, results/serving.json and its PNG."""
    small, large = rows
    m = small["served_test_metrics"]
    lines = ["### Serving from an export: numpy + faiss (issue 30, part 1)", "", f"Command: `{command}`  ",
             f"Machine: {machine}.", "",
             f"ml-100k, a default slifmr run (seed 0) exported ({small['index']}): the scorer "
             f"(`slifmr_scorer.py` in the export) gave **{small['identical_lists']} of {small['users']}** top-{K} "
             f"lists identical to `slifmr recommend`'s, at {small['users_per_second']:,.0f} users/s on one thread. "
             f"Test metrics@{K} of three ways to serve the same users (lists without their train and valid "
             "items, scored by `slifmr.evaluate_recs`):", "",
             f"| served as | Recall@{K} | NDCG@{K} |", "|---|---|---|"]
    lines += [f"| {way} | {v['recall']:.4f} | {v['ndcg']:.4f} |" for way, v in m.items()]
    lines += ["", "'fold-in' treats every user as unseen at training: u = the mean of their training items' "
              "vectors, x_u = their training items (the ridge head's part is exact for any history).", "",
              f"Synthetic, {large['users']:,} users x {large['items']:,} items (64-d random embeddings, ridge head "
              f"over random 100-item neighbourhoods), HNSW index (M 32, efSearch 128; its own recall@{K} at export: "
              f"{large['index_recall_at_export']:.3f}). Over {large['sampled_users']:,} sampled users:", "",
              "| index | two-stage recall@20 vs exact fused top 20 | users/s |", "|---|---|---|",
              f"| HNSW | {large[f'two_stage_recall@{K}']:.4f} | {large['hnsw_users_per_second']:,.0f} |",
              f"| IndexFlatIP (exact) | {large['flat_identical_lists'] / large['sampled_users']:.4f} "
              f"(identical lists: {large['flat_identical_lists']}) | {large['flat_users_per_second']:,.0f} |"]
    lines += ["", "![serving](results/serving.png)"]
    results.publish("SERVING", "serving", {"rows": rows}, lines, note=machine, command=command)
    plot(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained ml-100k run (default: train slifmr, seed 0)")
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "slifmr-serving"))
    ap.add_argument("--replot", action="store_true",
                    help="measure nothing: redraw the block and its PNG from results/serving.json")
    args = ap.parse_args()
    if args.replot:
        saved = results.read_results("serving")
        machine = saved["machine"] if isinstance(saved["machine"], str) else saved["machine"]["note"]
        publish_rows(saved["rows"], saved["command"], machine)
        return 0
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)  # users/s of one serving thread
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for old in ("ml100k-export", "run"):
        shutil.rmtree(work / old, ignore_errors=True)
    small = ml100k(args.run, work)
    large = synthetic(args.users, args.items, args.sample, work)
    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, one thread (torch and faiss), nothing else running"
    publish_rows([{"mode": "ml-100k", **small}, {"mode": "synthetic", **large}], command, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
