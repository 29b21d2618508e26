"""summary.csv: one row per experiment id, its selected runs aggregated (mean and 95 % interval per measure).

Usage:
    rows = csv_rows(results, aggregate(results)); fields = csv_fields()
"""

from __future__ import annotations

import json

from peftbench.report import deploy
from peftbench.report.aggregate import Agg, summarize
from peftbench.report.metrics import CSV_METRICS, get_in, method_of

CSV_HEAD = [
    "id",
    "status",
    "model",
    "task",
    "dataset",
    "method",
    "learning_rate",
    "selected_by",
    "tuning_trials",
    "tuning_train_seconds",
    "selected_params",
    "n_seeds",
    "seeds",
    "total_params",
    "full_model_bytes",
    "device",
]


def csv_rows(results: list[dict], aggs: list[Agg]) -> list[dict]:
    """One row per experiment id: its selected runs aggregated (mean, 95 % interval, n_seeds)."""
    rows = []
    for a in sorted(aggs, key=lambda a: a.id):
        r = a.runs[0]
        row = {
            "id": a.id,
            "status": "success",
            "model": a.model,
            "task": a.task,
            "dataset": get_in(r, "config", "data", "spec"),
            "method": a.method,
            "learning_rate": a.selected_lr,
            "selected_by": a.selection,
            "tuning_trials": None if a.search is None else a.search["done"],
            "tuning_train_seconds": None if a.search is None else a.search["train_seconds"],
            "selected_params": None
            if a.search is None
            else json.dumps(a.search["selected"]["params"], sort_keys=True, default=str),
            "n_seeds": len(a.runs),
            "seeds": " ".join(str(x) for x in a.seeds),
            "total_params": get_in(r, "params", "total"),
            "full_model_bytes": get_in(r, "storage", "full_model_bytes"),
            "device": get_in(r, "env", "gpu") or get_in(r, "env", "device"),
        }
        for key in CSV_METRICS:
            s = summarize(a, key)
            row.update(
                {
                    f"{key}_mean": None if s is None else s["mean"],
                    f"{key}_ci95_low": None if s is None else s["low"],
                    f"{key}_ci95_high": None if s is None else s["high"],
                }
            )
        for target in deploy.targets([a]):
            row.update(deploy.csv_cells(a, target, a.task))
        rows.append(row)
    done = {a.id for a in aggs}
    for r in results:  # experiments without a successful run still get their row
        if r["id"] not in done:
            done.add(r["id"])
            rows.append(
                {
                    "id": r["id"],
                    "status": r.get("status"),
                    "method": method_of(r),
                    "model": get_in(r, "config", "model", "spec"),
                    "task": get_in(r, "config", "data", "task"),
                    "dataset": get_in(r, "config", "data", "spec"),
                    "n_seeds": 0,
                }
            )
    return rows


def csv_fields(aggs: list[Agg] | None = None) -> list[str]:
    """The columns: the fixed head, every metric's mean and interval, and each deployment target present."""
    base = CSV_HEAD + [f"{k}_{part}" for k in CSV_METRICS for part in ("mean", "ci95_low", "ci95_high")]
    return base + deploy.csv_fields(deploy.targets(aggs or []))
