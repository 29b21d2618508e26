"""Plots of one (model, task) group, as PNG files (matplotlib, Agg backend; no torch).

Usage:
    files = plot_group(aggs, folder=Path("runs/demo/plots"), slug="random-gpt2--summarization", title="...",
                       task="summarization")        # aggs: report.aggregate.aggregate(results)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from peftbench.catalog.methodspecs import is_zero_shot  # noqa: E402
from peftbench.fs import human_bytes  # noqa: E402
from peftbench.report import interactive  # noqa: E402
from peftbench.report.aggregate import label as table_label  # noqa: E402
from peftbench.report.aggregate import learning_forgetting, summarize  # noqa: E402
from peftbench.report.metrics import (  # noqa: E402
    METRICS,
    PARETO_AXES,
    PRIMARY_QUALITY,
    QUALITY,
    fmt,
    is_random,
    pareto,
    spread,
    value,
)

COLORS = {
    "none": "#7f7f7f",
    "full": "#d62728",
    "lora": "#1f77b4",
    "ia3": "#2ca02c",
    "dora": "#9467bd",
    "loha": "#8c564b",
    "lokr": "#e377c2",
    "vera": "#bcbd22",
}
DPI = 110


def _color(method: str) -> str:
    return COLORS.get(method, "#17becf")


def _save(fig, path: Path) -> Path:
    """The PNG, and its interactive figure beside it (report.html draws that one)."""
    fig.tight_layout()
    return interactive.save(fig, path, dpi=DPI)


def _err(s: dict | None) -> tuple[float, float]:
    """(below, above) error-bar lengths from a summary; zero where there is no interval."""
    if not s or s.get("low") is None or s.get("high") is None:
        return 0.0, 0.0
    return max(0.0, s["mean"] - s["low"]), max(0.0, s["high"] - s["mean"])


def exp_label(a, aggs: list) -> str:
    """A plot's name for an experiment: the tables' (``aggregate.label``), without the group's shared prefix."""
    return table_label(a, aggs, short=True)


def plot_loss(aggs: list, path: Path, title: str) -> Path | None:
    if not any((r.get("train") or {}).get("loss_curve") for a in aggs for r in a.runs):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for a in aggs:
        for i, r in enumerate(a.runs):  # one thin line per seed
            curve = (r.get("train") or {}).get("loss_curve") or []
            if curve:
                ax.plot(
                    [p["step"] for p in curve],
                    [p["loss"] for p in curve],
                    color=_color(a.method),
                    lw=1.2,
                    alpha=0.85 if len(a.runs) == 1 else 0.5,
                    label=exp_label(a, aggs) if i == 0 else None,
                )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"Training loss (one line per seed): {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _majority(aggs: list) -> float | None:
    return next(
        (
            a.runs[0]["quality_baselines"]["majority_accuracy"]
            for a in aggs
            if (a.runs[0].get("quality_baselines") or {}).get("majority_accuracy") is not None
        ),
        None,
    )


def plot_quality(aggs: list, path: Path, title: str, task: str) -> Path | None:
    """Test quality per method with 95 % intervals; classification shows the majority baseline."""
    keys = [k for k in QUALITY if any(summarize(a, k) for a in aggs)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys) + 0.8, 3.6), squeeze=False)
    majority = _majority(aggs)
    for ax, key in zip(axes[0], keys):
        rows = [(a, summarize(a, key)) for a in aggs]
        rows = [(a, s) for a, s in rows if s]
        errs = list(zip(*[_err(s) for _, s in rows]))
        ax.bar(
            range(len(rows)),
            [s["mean"] for _, s in rows],
            color=[_color(a.method) for a, _ in rows],
            yerr=errs,
            capsize=4,
            edgecolor="black",
            lw=0.5,
        )
        ax.set_xticks(range(len(rows)), [exp_label(a, aggs) for a, _ in rows], fontsize=8)
        if majority is not None and key == "accuracy":
            ax.axhline(majority, color="black", ls="--", lw=1, label=f"majority class ({majority:.1f})")
            ax.legend(fontsize=7)
        ax.set_ylabel(QUALITY[key] + (" (lower is better)" if METRICS[key].better == "min" else ""))
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Test quality, 95 % intervals: {title}", fontsize=10)
    return _save(fig, path)


def plot_quality_curve(aggs: list, path: Path, title: str, task: str) -> Path | None:
    """Validation quality against step. The zero-shot baseline (`none`, step 0) is every method's
    starting point: LoRA and IA3 start as the identity and full fine-tuning from the same weights."""
    curves = {a.id: (a.runs[0].get("train") or {}).get("eval_curve") or [] for a in aggs}
    metrics = [k for k in QUALITY if any(k in p for c in curves.values() for p in c)]
    if not metrics or not any(curves[a.id] for a in aggs if not is_zero_shot(a.method)):
        return None
    baseline = next((curves[a.id][0] for a in aggs if is_zero_shot(a.method) and curves[a.id]), None)
    majority = _majority(aggs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 0.6, 3.6), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        if baseline and baseline.get(key) is not None:
            ax.axhline(baseline[key], color=_color("none"), ls="--", lw=1, label="none (zero-shot)")
        if majority is not None and key == "accuracy":
            ax.axhline(majority, color="black", ls=":", lw=1, label="majority class")
        for a in aggs:
            if is_zero_shot(a.method):
                continue
            pts = [p for p in curves[a.id] if p.get(key) is not None]
            if baseline and baseline.get(key) is not None:
                pts = [{"step": 0, key: baseline[key]}] + pts
            if pts:
                ax.plot(
                    [p["step"] for p in pts],
                    [p[key] for p in pts],
                    marker="o",
                    ms=3,
                    label=exp_label(a, aggs),
                    color=_color(a.method),
                )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(QUALITY[key] + (" (lower is better)" if METRICS[key].better == "min" else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Validation quality during training (first seed): {title}", fontsize=10)
    return _save(fig, path)


def plot_learning_rates(aggs: list, path: Path, title: str) -> Path | None:
    """Validation score against learning rate per method; the selected rate ringed."""
    swept = [a for a in aggs if a.sweep]
    if not swept:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for a in swept:
        pts = [
            (row["learning_rate"], row["validation"], row["selected"])
            for row in a.sweep
            if row["validation"] is not None
        ]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=_color(a.method), label=exp_label(a, aggs))
        for lr, v, sel in pts:
            if sel:
                ax.scatter([lr], [v], s=140, facecolor="none", edgecolor="black", lw=1.5, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(swept[0].selection)
    ax.set_title(f"Learning-rate sweep: {title}\n(ringed: the rate selected on validation)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_params_storage(aggs: list, path: Path, title: str) -> Path | None:
    rows = [(a, value(a.runs[0], "trainable"), value(a.runs[0], "adapter_bytes")) for a in aggs]
    rows = [(exp_label(a, aggs), t, b, a.method) for a, t, b in rows if t or b]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6))
    for ax, idx, label in ((axes[0], 1, "trainable parameters"), (axes[1], 2, "storage to ship")):
        names = [r[0] for r in rows]
        vals = [r[idx] or 0 for r in rows]
        bars = ax.bar(names, vals, color=[_color(r[3]) for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel(label + " (log scale)")
        if idx == 2:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
        for b, v in zip(bars, vals):
            text = f"{v:,.0f}" if idx == 1 else human_bytes(v)
            ax.annotate(text, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        ax.margins(y=0.15)
    fig.suptitle(f"Trainable parameters and storage (exact): {title}", fontsize=10)
    return _save(fig, path)


def _paired_bars(ax, aggs: list, unmerged: str, merged: str) -> None:
    """Per method, the unmerged bar and (hatched, where measured) the merged bar beside it, with
    95 % interval whiskers."""
    w = 0.38
    for offset, key, hatch in ((-w / 2, unmerged, ""), (w / 2, merged, "//")):
        present = [(i, a, s) for i, a in enumerate(aggs) if (s := summarize(a, key))]
        if not present:
            continue
        errs = list(zip(*[_err(s) for _, _, s in present]))
        ax.bar(
            [i + offset for i, _, _ in present],
            [s["mean"] for _, _, s in present],
            w,
            color=[_color(a.method) for _, a, _ in present],
            hatch=hatch,
            edgecolor="black",
            lw=0.5,
            yerr=errs,
            capsize=3,
        )
    ax.set_xticks(range(len(aggs)), [exp_label(a, aggs) for a in aggs])
    ax.grid(alpha=0.3, axis="y")


def plot_latency(aggs: list, path: Path, title: str) -> Path | None:
    have = [a for a in aggs if summarize(a, "latency_p50_ms")]
    if not have:
        return None
    shapes = next(a.runs[0]["inference"]["shapes"] for a in have)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    _paired_bars(axes[0], have, "latency_p50_ms", "merged_p50_ms")
    axes[0].set_ylabel("forward latency p50 (ms), 95 % interval")
    axes[0].set_title(f"batch {shapes['batch_size']}, {shapes['seq_len']} tokens", fontsize=9)
    axes[0].legend(
        handles=[
            Patch(facecolor="white", edgecolor="black", label="unmerged (as trained)"),
            Patch(facecolor="white", edgecolor="black", hatch="//", label="merged into base"),
        ],
        fontsize=8,
    )
    _paired_bars(axes[1], have, "throughput", "merged_throughput")
    unit = have[0].runs[0]["inference"].get("throughput_unit", "tokens/s")
    axes[1].set_ylabel(unit)
    axes[1].set_title(f"throughput, batch {shapes['batch_size']}, {shapes['new_tokens']} new tokens", fontsize=9)
    fig.suptitle(f"Inference: {title}", fontsize=10)
    return _save(fig, path)


def _marked(ax, xs: dict, ys: dict, color: str, on_front: bool, hover_text: str | None = None) -> None:
    """One experiment on a Pareto plane: its means, both 95 % intervals as bars, ringed when non-dominated;
    ``hover_text``: what report.html shows on hovering the point."""
    ax.errorbar(
        [xs["mean"]],
        [ys["mean"]],
        xerr=[[v] for v in _err(xs)],
        yerr=[[v] for v in _err(ys)],
        fmt="none",
        ecolor=color,
        lw=1,
        capsize=3,
        zorder=2,
    )
    ax.scatter(
        [xs["mean"]],
        [ys["mean"]],
        s=90 if on_front else 40,
        color=color,
        edgecolor="black" if on_front else "none",
        lw=1.5,
        zorder=3,
        marker="o" if on_front else "X",
        gid=hover_text,
    )


def _points(aggs: list, x_key: str, y_key: str) -> list[tuple]:
    """(agg, x summary, y summary) for the experiments that have both measures."""
    pts = [(a, summarize(a, x_key), summarize(a, y_key)) for a in aggs]
    return [p for p in pts if p[1] is not None and p[2] is not None]


def pareto_sets(aggs: list, task: str) -> dict[str, list[str]]:
    q = PRIMARY_QUALITY.get(task)
    out = {}
    for key, _, _ in PARETO_AXES:
        pts = [(a.id, x["mean"], y["mean"]) for a, x, y in _points(aggs, key, q)]
        if len(pts) >= 2:
            out[key] = pareto(pts, (METRICS[key].better, METRICS[q].better))
    return out


def plot_pareto(aggs: list, path: Path, title: str, task: str) -> Path | None:
    q = PRIMARY_QUALITY.get(task)
    if q is None or all(is_random(a.runs[0]) for a in aggs):
        return None
    fronts = pareto_sets(aggs, task)
    if not fronts:
        return None
    fig, axes = plt.subplots(1, len(PARETO_AXES), figsize=(12, 3.9))
    for ax, (key, label, log) in zip(axes, PARETO_AXES):
        pts = _points(aggs, key, q)
        front = set(fronts.get(key, []))
        for a, xs, ys in pts:
            on = a.id in front
            x, y = spread(xs, lambda v, k=key: fmt(k, v)), spread(ys, lambda v: fmt(q, v))
            tip = interactive.hover(table_label(a, aggs), label, x, QUALITY[q], y, on_front=on)
            _marked(ax, xs, ys, _color(a.method), on, tip)
            ax.annotate(
                exp_label(a, aggs), (xs["mean"], ys["mean"]), textcoords="offset points", xytext=(6, 4), fontsize=8
            )
        fp = sorted((xs["mean"], ys["mean"]) for a, xs, ys in pts if a.id in front)
        if len(fp) > 1:
            ax.plot([p[0] for p in fp], [p[1] for p in fp], ls="--", color="black", lw=0.8, zorder=2)
        if log:
            ax.set_xscale("log")
        if METRICS[key].fmt == "bytes":
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
            if not log:  # "1.5 GB" labels are wide: fewer ticks so they do not run together
                ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_xlabel(label + " — lower is better")
        ax.set_ylabel(QUALITY[q] + (" (lower is better)" if METRICS[q].better == "min" else " (higher is better)"))
        ax.grid(alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    fig.suptitle(f"Pareto fronts on means, 95 % intervals as bars (ringed: non-dominated): {title}", fontsize=10)
    return _save(fig, path)


def plot_learning_forgetting(aggs: list, path: Path, title: str, task: str) -> Path | None:
    """Target quality against forgetting on general text, one point per method with both 95 % intervals,
    the Pareto front (least forgetting, best quality) ringed and joined; the zero-shot base at 0."""
    lf = learning_forgetting(aggs, task)
    if lf is None:
        return None
    q, front = lf["quality"], set(lf["pareto"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    by_id = {a.id: a for a in aggs}
    for p in lf["points"]:
        xs, ys, on = p["forgetting"], p["quality"], p["id"] in front
        name = table_label(by_id[p["id"]], aggs)
        x, y = spread(xs, lambda v: fmt("forgetting", v)), spread(ys, lambda v: fmt(q, v))
        tip = interactive.hover(name, "forgetting (nats/token)", x, QUALITY[q], y, on_front=on)
        _marked(ax, xs, ys, _color(p["method"]), on, tip)
        ax.annotate(name, (xs["mean"], ys["mean"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    fp = sorted((p["forgetting"]["mean"], p["quality"]["mean"]) for p in lf["points"] if p["id"] in front)
    if len(fp) > 1:
        ax.plot([x for x, _ in fp], [y for _, y in fp], ls="--", color="black", lw=0.8, zorder=1)
    ax.axvline(0, color="#7f7f7f", lw=0.6, ls=":")
    spec = next((r["forgetting"]["spec"] for a in aggs for r in a.runs if r.get("forgetting")), "general text")
    ax.set_xlabel(f"forgetting: NLL increase on {spec} (nats/token) — lower is better")
    ax.set_ylabel(QUALITY[q] + (" (lower is better)" if METRICS[q].better == "min" else " (higher is better)"))
    ax.grid(alpha=0.3)
    note = "(95 % intervals as bars; ringed: the Pareto front)"
    ax.set_title(f"Learning against forgetting: {title}\n{note}", fontsize=9)
    return _save(fig, path)


def plot_group(aggs: list, *, folder: Path, slug: str, title: str, task: str, workers: int | None = None) -> dict:
    """Every plot of one (model, task) group: name -> PNG path (plots with nothing to show are left out).
    ``workers``: processes drawing them side by side (default ``plot_workers``); 1 draws them here, in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    random_weights = all(is_random(a.runs[0]) for a in aggs)
    jobs = {
        "loss": (plot_loss, aggs, folder / f"{slug}-loss.png", title),
        "quality": None if random_weights else (plot_quality, aggs, folder / f"{slug}-quality.png", title, task),
        "quality_curve": (plot_quality_curve, aggs, folder / f"{slug}-quality-vs-step.png", title, task),
        "learning_rates": (plot_learning_rates, aggs, folder / f"{slug}-learning-rates.png", title),
        "params_storage": (plot_params_storage, aggs, folder / f"{slug}-params-storage.png", title),
        "latency": (plot_latency, aggs, folder / f"{slug}-latency-throughput.png", title),
        "pareto": (plot_pareto, aggs, folder / f"{slug}-pareto.png", title, task),
        "learning_forgetting": (
            plot_learning_forgetting, aggs, folder / f"{slug}-learning-forgetting.png", title, task,
        ),
    }  # fmt: skip
    jobs = {k: v for k, v in jobs.items() if v is not None}
    workers = plot_workers(len(jobs)) if workers is None else workers
    if workers <= 1:
        made = {k: fn(*args) for k, (fn, *args) in jobs.items()}
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {k: pool.submit(fn, *args) for k, (fn, *args) in jobs.items()}
            made = {k: f.result() for k, f in futures.items()}
    return {k: v for k, v in made.items() if v is not None}


def plot_workers(n_plots: int) -> int:
    """Processes for a group's plots: one each (at most 8) on a machine of 4 or more cores, where this process runs
    no other thread (a forked copy of a thread's held lock would never be released); else 1. Each plot costs
    0.4-0.8 s of matplotlib's drawing, and a report has up to 8 a group, after the last run."""
    import multiprocessing
    import os
    import threading

    forks = "fork" in multiprocessing.get_all_start_methods()
    if (os.cpu_count() or 1) < 4 or threading.active_count() > 1 or not forks:
        return 1
    return max(1, min(n_plots, 8, (os.cpu_count() or 1) - 1))
