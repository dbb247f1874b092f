"""A sweep's results: one row per trial, the selection of the best (validation metric only),
and the files people compare: trials.csv/.parquet/.md, sweep.png, best.json, sweep.json.
`slifmr report SWEEP_DIR` re-draws the Markdown and the PNG from trials.parquet."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slifmr.atomic import atomic_path
from slifmr.errors import SlifmrError
from slifmr.report import read_run
from slifmr.run_layout import RunLayout

TABLE, BEST, SUMMARY, PNG, MARKDOWN = "trials.parquet", "best.json", "sweep.json", "sweep.png", "trials.md"


def trial_rows(grid: Any, spec: Any, sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial of a Ray Tune ResultGrid: its parameters, how far it ran, and its
    validation metrics at its best epoch (read from the trial's own metrics.jsonl)."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial = metrics.get("trial_id") or Path(result.path).name
        run_dir = Path(sweep_dir) / "runs" / trial if metrics.get("trial_id") else None
        records = read_run(run_dir)["records"] if run_dir is not None and RunLayout(run_dir).metrics.exists() else []
        row: dict[str, Any] = {"trial": trial, "status": "ERROR" if result.error is not None else "TERMINATED",
                               "epochs": len(records)}
        best = max(records, key=lambda r: r["valid"][spec.metric.removeprefix("valid_")], default=None)
        row["best_epoch"] = best["epoch"] if best else None
        row["stopped_early"] = row["status"] == "TERMINATED" and 0 < len(records) < spec.scheduler.max_t
        valid = best["valid"] if best else {}
        for key in sorted({f"valid_{k}" for r in records for k in r["valid"]} | {spec.metric}):
            row[key] = valid.get(key.removeprefix("valid_"))
        row.update({k: result.config.get(k) for k in spec.space})
        rows.append(row)
    return rows


def select_best(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The finished trial with the highest `metric`. Only validation metrics may select:
    the test split is evaluated once, on the trial this returns."""
    if not metric.startswith("valid_"):
        raise SlifmrError(f"selection by '{metric}' refused: only validation metrics (valid_...) select a trial")
    done = [r for r in rows if r["status"] == "TERMINATED" and r.get(metric) is not None]
    if not done:
        raise SlifmrError(f"no finished trial reported {metric}")
    return max(done, key=lambda r: (r[metric], -done.index(r)))


def _atomic_write(path: Path, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict[str, Any]], params: list[str], metric: str) -> str:
    cols = ["trial", "status", "epochs", "best_epoch", metric, *[c for c in rows[0] if c.startswith("valid_") and c != metric], *params] if rows else []
    lines = ["| rank | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _numeric(values: list[Any]) -> np.ndarray:
    if all(isinstance(v, (int, float, bool, np.number)) for v in values):
        return np.asarray(values, dtype=float)
    levels = sorted({str(v) for v in values})
    return np.asarray([levels.index(str(v)) for v in values], dtype=float)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def importance(rows: list[dict[str, Any]], params: list[str], metric: str) -> dict[str, float]:
    """|Spearman rank correlation| of each parameter with the metric over finished trials."""
    done = [r for r in rows if r.get(metric) is not None]
    y = np.asarray([r[metric] for r in done], dtype=float)
    return {p: abs(_spearman(_numeric([r[p] for r in done]), y)) for p in params}


def plot_sweep(rows: list[dict[str, Any]], params: list[str], metric: str, out: Path, top: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imp = importance(rows, params, metric)
    chosen = sorted(params, key=lambda p: -imp[p])[:top]
    done = [r for r in rows if r.get(metric) is not None]
    fig, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 3.4), squeeze=False)
    for ax, p in zip(axes[0], chosen):
        x = [r[p] for r in done]
        xs = _numeric(x)
        color = ["tab:orange" if r["stopped_early"] else "tab:blue" for r in done]
        ax.scatter(xs, [r[metric] for r in done], c=color, s=22)
        if not all(isinstance(v, (int, float, bool, np.number)) for v in x):
            levels = sorted({str(v) for v in x})
            ax.set_xticks(range(len(levels)), levels)
        elif xs.min() > 0 and xs.max() / xs.min() > 50:
            ax.set_xscale("log")
        ax.set_xlabel(f"{p}  (|rho| {imp[p]:.2f})")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} of each trial (orange: stopped early by ASHA)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(out, buf.getvalue())
    return out


def write_sweep_outputs(sweep_dir: Path, rows: list[dict[str, Any]], params: list[str], metric: str,
                        best: dict[str, Any], summary: dict[str, Any]) -> None:
    rows = sorted(rows, key=lambda r: (r.get(metric) is None, -(r.get(metric) or 0.0)))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    _atomic_write(sweep_dir / TABLE, buf.getvalue())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(sweep_dir / "trials.csv", text.getvalue())
    _atomic_write(sweep_dir / BEST, json.dumps(best, indent=2))
    _atomic_write(sweep_dir / SUMMARY, json.dumps({**summary, "params": params}, indent=2))
    draw(sweep_dir)


def best_test_line(test: dict[str, float], metric: str) -> str:
    """The best trial's test Recall and NDCG at the K of the sweep's `metric` (valid_<name>@K):
    the K every trial reports, whatever its train.topk."""
    k = metric.rpartition("@")[2]
    return f"Recall@{k} {test[f'recall@{k}']:.4f}, NDCG@{k} {test[f'ndcg@{k}']:.4f}"


def draw(sweep_dir: Path) -> tuple[Path, Path]:
    """(Re)write trials.md and sweep.png from trials.parquet, best.json and sweep.json."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / TABLE).exists():
        raise SlifmrError(f"{sweep_dir} is not a finished sweep folder (no {TABLE})")
    rows = pq.read_table(sweep_dir / TABLE).to_pylist()
    summary = json.loads((sweep_dir / SUMMARY).read_text())
    best = json.loads((sweep_dir / BEST).read_text())
    metric, params = summary["metric"], summary["params"]
    md = (f"# Sweep {sweep_dir.name}\n\n{summary['trials']} trials in {summary['seconds']:.0f} s (all invocations); "
          f"{summary['stopped_by_asha']} stopped early by ASHA, {summary['errored']} errored. Selected by {metric} "
          f"(validation) only: trial {best['trial']}, {metric} {best['valid'][metric.removeprefix('valid_')]:.4f}; "
          f"its test {best_test_line(best['test'], metric)} "
          f"(the sweep's one test evaluation).\n\n" + markdown_table(rows, params, metric))
    _atomic_write(sweep_dir / MARKDOWN, md)
    png = plot_sweep(rows, params, metric, sweep_dir / PNG)
    return sweep_dir / MARKDOWN, png
