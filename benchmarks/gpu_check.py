"""The GPU path in one short script (run it where a CUDA device exists):

    python benchmarks/gpu_check.py --data ~/.cache/slifmr/ml-100k --epochs 5 --json $OUT/gpu.json

1. training on the dataset in-process on cuda:0 with `--sampling history` (the default
   seeds-only one hop over the epoch's historical embeddings; sparse table gradients and
   row-wise Adam on CUDA), full-graph and `--sampling neighbor`, then `--gpu --workers 1`
   through Ray Train (nccl, world size 1): interactions per second and validation Recall@20;
2. the CUDA exact kNN (chunked matmul + top-k, slifmr.data.graphs.knn) of 10^5 and 10^6
   random 64-d items, k = 10;
3. cost against size on the GPU: `slifmr train --workers 0 --gpu` in history mode (its
   subgraphs drawn on the GPU, the default, and on the CPU: train.sample_device=cpu) and the
   BPR-MF floor (mode mf) on benchmarks/scale/scale.py's synthetic graphs of --scale-users users,
   capped at --scale-steps steps of batch 8192 (epoch 2 reported, exact CUDA kNN).

Each part is guarded: one that fails is recorded with its error and the others still run.
The JSON (default benchmarks/results/gpu.json) is rewritten after every row, so a run cut
short keeps what it measured; it starts with the results library's metadata keys (command,
machine, commit, dirty, written). `--render PATH` reads such a JSON (e.g. one brought back from
the GPU machine) and writes benchmarks/results/gpu.json and the GPU block of RESULTS.md.

This file stays at the top of benchmarks/ and runs as a file (the device tool's
`python benchmarks/gpu_check.py`): it imports slifmr only, and loads the results library
(benchmarks/lib/results.py, which imports nothing of this package) by its path. Its synthetic
graphs and `slifmr train` measurement are benchmarks.scale.scale's (`dataset`, `measure`),
restated here in the few lines the GPU rows need.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from slifmr.atomic import write_text


def _results_library() -> ModuleType:
    """benchmarks/lib/results.py, imported by its path (this file runs outside the package too)."""
    if __package__:
        from benchmarks.lib import results

        return results
    spec = importlib.util.spec_from_file_location("benchmarks_results", Path(__file__).resolve().parent / "lib" / "results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


results = _results_library()


def cuda_knn(n: int, d: int = 64, k: int = 10, chunk: int = 8192) -> dict[str, Any]:
    from slifmr.data.graphs import knn

    x = torch.randn(n, d, device="cuda")
    knn(x[:1000], k)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    t = time.perf_counter()
    nbrs, _ = knn(x, k, chunk_size=chunk)
    torch.cuda.synchronize()
    return {"items": n, "dim": d, "k": k, "seconds": time.perf_counter() - t, "shape": list(nbrs.shape)}


def train(data: str, epochs: int, ray_workers: int, run_dir: Path, sampling: str = "full") -> dict[str, Any]:
    from slifmr.config import load_config
    from slifmr.data.format import TRAIN, read_dataset
    from slifmr.distributed.collectives import Comm
    from slifmr.training import train_loop

    cfg = load_config(overrides=[f"train.epochs={epochs}", "train.patience=1000", f"train.sampling={sampling}"])
    cfg.data = data
    if ray_workers:
        from slifmr.launch import ray_train

        results = ray_train(cfg, run_dir, workers=ray_workers, gpu=True)
    else:
        results = train_loop(cfg, run_dir, Comm.current("cuda"))
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    n_train = int((read_dataset(data).split == TRAIN).sum())
    per_epoch = statistics.median(r["epoch_seconds"] for r in records)
    return {"ray_workers": ray_workers, "sampling": sampling, "epochs": len(records), "seconds_per_epoch": per_epoch,
            "interactions_per_second": n_train / per_epoch, "valid_recall@20": results["valid"]["recall@20"]}


def dataset(users: int, root: Path) -> tuple[Path, int]:
    """benchmarks.scale.scale's synthetic graph at `users` users (cached under root) and its
    training interactions."""
    from slifmr.data.format import TRAIN, read_dataset, write_dataset
    from slifmr.data.synth import synthesize

    path = root / f"u{users}"
    if not (path / "meta.json").exists():
        ds = synthesize(users=users, items=users // 10, interactions=13 * users, entities=users // 5, triples=users,
                        relations=8, modalities=(("text", 64),), clusters=50, seed=0)
        write_dataset(ds, path, overwrite=True)
    return path, int((read_dataset(path).split == TRAIN).sum())


def measure(data: Path, n_train: int, mode: str, steps: int, out: Path, batch: int, threads: int,
            extra: tuple[str, ...]) -> dict[str, Any]:
    """One in-process `slifmr train` run (2 epochs of `steps` steps, history sampling; mode mf:
    variant mf) and its epoch 2, as benchmarks.scale.scale's `measure` reports it."""
    cmd = [sys.executable, "-m", "slifmr", "train", "--data", str(data), "--out", str(out), "--epochs", "2",
           "--workers", "0", "--sampling", "history", "--fanout", "10,5", "--set", "train.eval_users=2000",
           "--set", "train.patience=100", "--set", f"train.batch_size={batch}", "--set", f"train.threads={threads}",
           "--set", f"train.steps_per_epoch={steps}", *(["--variant", "mf"] if mode == "mf" else []), *extra]
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    row: dict[str, Any] = {"mode": mode, "workers": 0, "threads": threads, "batch_size": batch, "train_interactions": n_train,
                           "exit_status": rc, "command": " ".join(["slifmr", *cmd[3:]])}
    if rc != 0:
        row["error"] = log.read_text()[-2000:]
        return row
    r = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    per_step = r["train_seconds"] / r["steps"]
    outside = r["epoch_seconds"] - r["train_seconds"]
    row.update({"steps": r["steps"], "seconds_per_step": per_step,
                "interactions_per_second": r["steps"] * batch / r["train_seconds"],
                "sampling_seconds_per_step": r["sampling_seconds"] / r["steps"], "fusion_seconds": r["fusion_seconds"],
                "knn_seconds": r["knn_seconds"], "ridge_seconds": r.get("ridge_seconds", 0.0),
                "outside_steps_seconds": outside, "epoch_seconds_estimated": per_step * -(-n_train // batch) + outside})
    return row


def scale_row(users: int, mode: str, steps: int, runs: Path, sample_device: str = "model") -> dict[str, Any]:
    """benchmarks.scale.scale's measurement of one configuration, on this machine's GPU
    (`sample_device`: train.sample_device, where the steps' subgraphs are drawn)."""
    data, n_train = dataset(users, runs / "data")
    extra = ("--gpu", "--set", "model.knn=exact", "--set", "model.ridge_weight=0",
             "--set", f"train.sample_device={sample_device}")
    row = measure(data, n_train, mode, steps, runs / f"u{users}-{mode}-{sample_device}", 8192, 4, extra)
    row["users"], row["sample_device"] = users, sample_device
    if row["exit_status"] != 0:
        raise RuntimeError(row.get("error", "")[-1500:])
    return row


def preset_row(users: int, steps: int, runs: Path) -> dict[str, Any]:
    """A scale-preset run (history sampling, the ridge head on, exact kNN on the GPU) at `users`:
    epoch 2's fusion (kNN k = 100, the head's solves, the graphs) and its estimated epoch."""
    data, n_train = dataset(users, runs / "data")
    extra = ("--gpu", "--preset", "scale", "--set", "model.knn=exact", "--set", "train.eval_users=2000")
    row = measure(data, n_train, "history", steps, runs / f"u{users}-preset", 32768, 4, extra)
    row["users"] = users
    if row["exit_status"] != 0:
        raise RuntimeError(row.get("error", "")[-1500:])
    row["fusion_share"] = row["fusion_seconds"] / row["epoch_seconds_estimated"]
    return row


def guarded(label: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """fn(*args), or {"error": ...} with its traceback: one broken part does not stop the check."""
    t = time.perf_counter()
    try:
        row = fn(*args)
    except Exception as e:  # noqa: BLE001 - recorded, and the next part runs
        row = {"error": f"{type(e).__name__}: {e}"[-1500:], "traceback": traceback.format_exc()[-3000:]}
    row["part"] = label
    print(f"[{time.perf_counter() - t:6.1f} s] {label}: {json.dumps({k: v for k, v in row.items() if k != 'traceback'})[:600]}",
          flush=True)
    return row


def save(doc: dict[str, Any], path: Path) -> None:
    """The check's JSON so far (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(doc, indent=2))


def render(doc: dict[str, Any]) -> str:
    """The GPU block of RESULTS.md from the check's JSON."""
    def failed(r: dict[str, Any]) -> str:
        return f"failed: `{r['error'].splitlines()[-1][:200]}`"

    lines = []
    for t in doc["training"]:
        path = ("Ray Train, 1 worker, nccl" if t.get("ray_workers") else "in-process, cuda:0") + f", {t.get('sampling', '')}"
        if "error" in t:
            lines.append(f"| {t['part']} | {failed(t)} | | |")
        else:
            lines.append(f"| {path} | {t['interactions_per_second']:,.0f} | {t['seconds_per_epoch']:.2f} | "
                         f"{t['valid_recall@20']:.4f} |")
    knn = "; ".join(f"{r['items']:,} items, k {r['k']}: {r['seconds']:.2f} s" if "error" not in r else f"{r['part']}: {failed(r)}"
                    for r in doc["knn"])
    scale_lines = []
    floor = {r["users"]: r["interactions_per_second"] for r in doc.get("scale", []) if r.get("mode") == "mf" and "error" not in r}
    for r in doc.get("scale", []):
        if "error" in r:
            scale_lines.append(f"| {r['part']} | {failed(r)} | | | | | | |")
            continue
        ratio = f"{r['interactions_per_second'] / floor[r['users']]:.2f}" if r["users"] in floor else ""
        where = "GPU" if r.get("sample_device", "cpu") == "model" else "CPU"
        scale_lines.append(f"| {r['users']:,} | {r['mode']} | {where} | {r['seconds_per_step']:.4f} | {r['sampling_seconds_per_step']:.4f} | "
                           f"{r['interactions_per_second']:,.0f} | {ratio} | {r['epoch_seconds_estimated']:,.1f} |")
    body = (f"### GPU path (issues 4, 14)\n\nCommand (on the lent GPU machine): `{doc['command']}`  \n"
            f"Card: {doc['card']}, torch {doc['torch']}, {doc.get('cpus', '?')} CPU cores.\n\n"
            "| path | interactions/s | s/epoch | valid Recall@20 |\n|---|---|---|---|\n" + "\n".join(lines)
            + "\n\nThe GPU machine is offline: the dataset and Ray (its cp312 wheel and the few dependencies the machine "
            "lacks, less Ray's Java jar and dashboard source maps) travel with the working tree in an ignored folder, "
            "`.devcarry/`, unpacked onto PYTHONPATH before the command."
            + f"\n\nCUDA exact kNN (64-d, chunked matmul + top-k): {knn}.\n"
            + "".join(f"\nScale preset at {r['users']:,} users (history, ridge head on, exact kNN on the GPU): fusion "
                      f"{r['fusion_seconds']:.1f} s (kNN {r['knn_seconds']:.1f} s, ridge {r['ridge_seconds']:.1f} s) of an "
                      f"estimated {r['epoch_seconds_estimated']:.0f} s epoch ({100 * r['fusion_share']:.1f}%).\n"
                      if "error" not in r else f"\n{r['part']}: {failed(r)}\n" for r in doc.get("preset", [])))
    if scale_lines:
        body += ("\nCost against size on one GPU (`slifmr train --workers 0 --gpu`, benchmarks/scale/scale.py's synthetic graphs, "
                 "batch 8192, epoch 2 of capped runs, exact CUDA kNN; x MF: over the BPR-MF floor at the same size):\n\n"
                 "| users | mode | sampled on | s/step | of which sampling | interactions/s | x MF | epoch s (est.) |\n"
                 "|---|---|---|---|---|---|---|---|\n"
                 + "\n".join(scale_lines) + "\n")
        # the default (sampled on the model's device); a run from before train.sample_device sampled on the CPU
        default = max((r.get("sample_device", "cpu") for r in doc["scale"]), key=lambda d: d == "model")
        hist = {r["users"]: r for r in doc["scale"] if r.get("mode") == "history" and "error" not in r
                and r.get("sample_device", "cpu") == default}
        if len(hist) >= 2:
            lo, hi = min(hist), max(hist)
            h_lo, h_hi = hist[lo], hist[hi]
            exponent = (math.log(h_hi["epoch_seconds_estimated"] / h_lo["epoch_seconds_estimated"])
                        / math.log(h_hi["train_interactions"] / h_lo["train_interactions"]))
            mf_growth = _mf_growth(doc, lo, hi)
            body += (f"\nStep time at {hi:,} users over {lo:,}: history {h_hi['seconds_per_step'] / h_lo['seconds_per_step']:.2f}x"
                     + (f", MF {mf_growth:.2f}x" if mf_growth else "")
                     + f"; history's epoch-time exponent between the two sizes: {exponent:.2f}.\n")
    return body


def _mf_growth(doc: dict[str, Any], lo: int, hi: int) -> float | None:
    mf = {r["users"]: r["seconds_per_step"] for r in doc["scale"] if r.get("mode") == "mf" and "error" not in r}
    return mf[hi] / mf[lo] if lo in mf and hi in mf else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a prepared dataset folder (the GPU machine may be offline)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--knn-items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--scale-users", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--scale-steps", type=int, default=8)
    ap.add_argument("--preset-users", type=int, nargs="*", default=[1_000_000],
                    help="sizes of the scale-preset row (the fusion with the ridge head on)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Train row")
    ap.add_argument("--json", default=str(results.results_path("gpu")), help="where the results go (rewritten after each row)")
    ap.add_argument("--render", metavar="JSON", help="only write RESULTS.md's GPU block and results/gpu.json from this JSON")
    args = ap.parse_args()
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        # the device's metadata where the JSON has it; its commit is unknown there without git: this checkout's
        measured = {"commit": doc["commit"], "dirty": doc.get("dirty", False)} if doc.get("commit") else None
        payload = {k: v for k, v in doc.items() if k not in results.META}
        device = doc["machine"] if isinstance(doc.get("machine"), dict) else {
            "gpu": doc.get("card"), "torch": doc.get("torch"), "cpus": doc.get("cpus"), "note": "from the check's JSON"}
        results.write_results("gpu", payload, command=doc.get("command"), measured=measured, machine_info=device)
        results.write_section("GPU", render(doc))
        print(render(doc))
        return 0
    if not args.data:
        ap.error("--data is required (or --render)")
    if not torch.cuda.is_available():
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    doc: dict[str, Any] = {**results.metadata(note="the GPU check: one CUDA device"),
                           "card": torch.cuda.get_device_name(0), "torch": torch.__version__,
                           "cpus": os.cpu_count(), "training": [], "knn": [], "scale": []}
    out = Path(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        # most important first: a run cut short keeps the new mode's numbers
        for sampling in ("history", "full", "neighbor"):
            doc["training"].append(guarded(f"in-process {sampling}", train, args.data, args.epochs, 0,
                                           Path(tmp) / sampling, sampling))
            save(doc, out)
        for n in args.knn_items:
            for k in (10, 100):  # S(t) alone, and the search the ridge head shares (ridge_k 100)
                doc["knn"].append(guarded(f"knn {n} k {k}", cuda_knn, n, 64, k))
                save(doc, out)
        for users in args.preset_users:
            doc.setdefault("preset", []).append(guarded(f"preset scale {users}", preset_row, users, args.scale_steps,
                                                        Path(tmp) / "scale"))
            save(doc, out)
        for users in args.scale_users:
            # history sampled on the GPU (the default) and on the CPU (train.sample_device=cpu), and the floor
            for mode, where in (("history", "model"), ("history", "cpu"), ("mf", "model")):
                doc["scale"].append(guarded(f"scale {users} {mode} {where}", scale_row, users, mode, args.scale_steps,
                                            Path(tmp) / "scale", where))
                save(doc, out)
        if not args.no_ray:
            doc["training"].append(guarded("Ray Train 1 worker", train, args.data, args.epochs, 1, Path(tmp) / "ray", "full"))
            save(doc, out)
    print(render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
