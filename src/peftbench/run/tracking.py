"""Experiment trackers through accelerate's tracker classes: TensorBoard, MLflow, W&B, trackio.

Usage:
    problems = check(["tensorboard", "mlflow"])          # plan time: unknown or not installed
    with Trackers(["tensorboard"], out_dir=out, project="demo", run_name=run_id) as t:
        t.start(config_dict)                              # hyperparameters: the resolved config
        t.log({"train/loss": 2.1, "train/learning_rate": 2e-4}, step=10)
        t.log(final_numbers, step=last_step)

One tracker run per peftbench run (experiment x seed x rate), named by its run id, in a project
named after the suite. All work offline: TensorBoard event files under ``<out>/trackers/tensorboard``,
MLflow's file store under ``<out>/trackers/mlruns`` (unless ``MLFLOW_TRACKING_URI`` is set), W&B in
offline mode (unless ``WANDB_MODE`` is set) under ``<out>/trackers``, trackio's local store.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}  # -> module


def parse(values: list[str] | str | None) -> list[str]:
    """``--log-with a,b --log-with c`` or a suite's list -> ["a", "b", "c"] (lower-case, in order, once)."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name and name not in out:
                out.append(name)
    return out


def check(names: list[str]) -> list[str]:
    problems = []
    for name in names:
        if name not in TRACKERS:
            problems.append(f"log_with: unknown tracker {name!r} (known: {', '.join(TRACKERS)})")
        elif importlib.util.find_spec(TRACKERS[name]) is None:
            problems.append(f"log_with: {name} is not installed (pip install 'peftbench[tracking]')")
    return problems


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"train.learning_rate": 2e-4, ...} with scalars only (lists as text)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[key] = "null" if v is None else v
        else:
            out[key] = str(v)
    return out


def numbers(d: dict) -> dict[str, float]:
    """Only the finite numbers of a flat dict (what every tracker's ``log`` accepts)."""
    return {
        k: float(v)
        for k, v in d.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def final_values(result) -> dict[str, Any]:
    """A result's quality, efficiency and storage numbers, as logged at a tracker run's last step: every
    metric with a tracker name (``report.metrics``: each metric declared once), the task's quality only."""
    from peftbench.report.metrics import METRICS

    d = result.to_dict()
    tracked = [m for m in METRICS.values() if m.tracked_as and (m.kind != "quality" or m.key in (result.quality or {}))]
    return {
        **{m.tracked_as: m.get(d) for m in tracked},
        **{f"validation/{k}": v for k, v in (result.validation or {}).items()},
        "params/total": result.params["total"],
    }


class Trackers:
    def __init__(self, names: list[str], *, out_dir: Path, project: str, run_name: str):
        self.names, self.trackers = names, []
        self.out_dir, self.project, self.run_name = Path(out_dir) / "trackers", project, run_name

    def _make(self, name: str):
        from accelerate import tracking

        if name == "tensorboard":
            return tracking.TensorBoardTracker(self.run_name, self.out_dir / "tensorboard")
        if name == "mlflow":
            if "MLFLOW_TRACKING_URI" not in os.environ:
                import mlflow

                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # local, offline: the file store
                mlflow.set_tracking_uri((self.out_dir / "mlruns").resolve().as_uri())
            return tracking.MLflowTracker(experiment_name=self.project, run_name=self.run_name)
        if name == "wandb":
            os.environ.setdefault("WANDB_MODE", "offline")
            self.out_dir.mkdir(parents=True, exist_ok=True)
            return tracking.WandBTracker(self.project, name=self.run_name, dir=str(self.out_dir))
        return tracking.TrackioTracker(self.project, name=self.run_name)

    def start(self, config: dict) -> None:
        for name in self.names:
            t = self._make(name)
            t.start()
            t.store_init_configuration(flatten(config))
            self.trackers.append(t)

    def log(self, values: dict, step: int) -> None:
        values = numbers(values)
        for t in self.trackers:
            if values:
                t.log(values, step=step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.finish()
