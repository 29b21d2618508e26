"""Plots of one (model, task) group, as PNG files (matplotlib, Agg backend; no torch).

Usage:
    files = plot_group(results, folder=Path("runs/demo/plots"), slug="random-gpt2--summarization", task="summarization")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from peftbench.report.metrics import (METRICS, PRIMARY_QUALITY, QUALITY, human_bytes, is_random,  # noqa: E402
                                      method_of, pareto, value)

COLORS = {"none": "#7f7f7f", "full": "#d62728", "lora": "#1f77b4", "ia3": "#2ca02c", "dora": "#9467bd",
          "loha": "#8c564b", "lokr": "#e377c2", "vera": "#bcbd22"}
DPI = 110


def _color(method: str) -> str:
    return COLORS.get(method, "#17becf")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_loss(results: list[dict], path: Path, title: str) -> Path | None:
    curves = [(method_of(r), r["train"]["loss_curve"]) for r in results if (r.get("train") or {}).get("loss_curve")]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for m, curve in curves:
        ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], label=m, color=_color(m), lw=1.6)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"Training loss: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_quality_curve(results: list[dict], path: Path, title: str, task: str) -> Path | None:
    """Validation quality against step. The zero-shot baseline (`none`, step 0) is every method's
    starting point: LoRA and IA3 start as the identity and full fine-tuning from the same weights."""
    curves = {r["id"]: (r.get("train") or {}).get("eval_curve") or [] for r in results}
    metrics = [k for k in QUALITY if any(k in p for c in curves.values() for p in c)]
    if not metrics or not any(curves[r["id"]] for r in results if method_of(r) != "none"):
        return None
    baseline = next((curves[r["id"]][0] for r in results if method_of(r) == "none" and curves[r["id"]]), None)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 0.6, 3.6), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        if baseline and baseline.get(key) is not None:
            ax.axhline(baseline[key], color=_color("none"), ls="--", lw=1, label="none (zero-shot)")
        for r in results:
            m = method_of(r)
            if m == "none":
                continue
            pts = [p for p in curves[r["id"]] if p.get(key) is not None]
            if baseline and baseline.get(key) is not None:
                pts = [{"step": 0, key: baseline[key]}] + pts
            if pts:
                ax.plot([p["step"] for p in pts], [p[key] for p in pts], marker="o", ms=3, label=m, color=_color(m))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(QUALITY[key] + (" (lower is better)" if METRICS[key].better == "min" else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Validation quality during training: {title}", fontsize=10)
    return _save(fig, path)


def plot_params_storage(results: list[dict], path: Path, title: str) -> Path | None:
    rows = [(method_of(r), value(r, "trainable"), value(r, "adapter_bytes")) for r in results]
    rows = [row for row in rows if row[1] or row[2]]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6))
    for ax, idx, label in ((axes[0], 1, "trainable parameters"), (axes[1], 2, "storage to ship")):
        names = [r[0] for r in rows]
        vals = [r[idx] or 0 for r in rows]
        bars = ax.bar(names, vals, color=[_color(n) for n in names])
        ax.set_yscale("log")
        ax.set_ylabel(label + " (log scale)")
        if idx == 2:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
        for b, v in zip(bars, vals):
            text = f"{v:,.0f}" if idx == 1 else human_bytes(v)
            ax.annotate(text, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        ax.margins(y=0.15)
    fig.suptitle(f"Trainable parameters and storage: {title}", fontsize=10)
    return _save(fig, path)


def _paired_bars(ax, rows: list[tuple], unmerged: int, merged: int, *, height, whisker=None) -> None:
    """Per method, the unmerged bar and (hatched, where measured) the merged bar beside it."""
    w = 0.38
    for offset, idx, hatch in ((-w / 2, unmerged, ""), (w / 2, merged, "//")):
        present = [(i, row) for i, row in enumerate(rows) if row[idx]]
        if not present:
            continue
        extra = {"yerr": [[0] * len(present), [whisker(row[idx]) for _, row in present]], "capsize": 3} if whisker else {}
        ax.bar([i + offset for i, _ in present], [height(row[idx]) for _, row in present], w,
               color=[_color(row[0]) for _, row in present], hatch=hatch, edgecolor="black", lw=0.5, **extra)
    ax.set_xticks(range(len(rows)), [row[0] for row in rows])
    ax.grid(alpha=0.3, axis="y")


def plot_latency(results: list[dict], path: Path, title: str) -> Path | None:
    rows = []
    for r in results:
        inf = r.get("inference") or {}
        if not inf.get("latency_ms"):
            continue
        merged = inf.get("merged") or {}
        rows.append((method_of(r), inf["latency_ms"], (merged.get("latency_ms") or None),
                     inf.get("throughput_tokens_per_second"), merged.get("throughput_tokens_per_second")))
    if not rows:
        return None
    shapes = next((r.get("inference") or {}).get("shapes") for r in results if r.get("inference"))
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    _paired_bars(axes[0], rows, 1, 2, height=lambda lat: lat["p50_ms"], whisker=lambda lat: lat["p95_ms"] - lat["p50_ms"])
    axes[0].set_ylabel("forward latency p50 (ms), whisker to p95")
    axes[0].set_title(f"batch {shapes['batch_size']}, {shapes['seq_len']} tokens", fontsize=9)
    axes[0].legend(handles=[Patch(facecolor="white", edgecolor="black", label="unmerged (as trained)"),
                            Patch(facecolor="white", edgecolor="black", hatch="//", label="merged into base")], fontsize=8)
    _paired_bars(axes[1], rows, 3, 4, height=lambda tps: tps)
    unit = next(((r.get("inference") or {}).get("throughput_unit") for r in results if r.get("inference")), "tokens/s")
    axes[1].set_ylabel(unit)
    axes[1].set_title(f"throughput, batch {shapes['batch_size']}, {shapes['new_tokens']} new tokens", fontsize=9)
    fig.suptitle(f"Inference: {title}", fontsize=10)
    return _save(fig, path)


PARETO_AXES = [("adapter_bytes", "storage to ship (log scale)", True),
               ("deploy_p50_ms", "deployed latency p50 (ms)", False),
               ("train_peak_memory_bytes", "training peak memory", False)]


def _points(results: list[dict], x_key: str, y_key: str) -> list[tuple[dict, float, float]]:
    """(result, x, y) for the results that have both metrics."""
    pts = [(r, value(r, x_key), value(r, y_key)) for r in results]
    return [p for p in pts if p[1] is not None and p[2] is not None]


def pareto_sets(results: list[dict], task: str) -> dict[str, list[str]]:
    q = PRIMARY_QUALITY.get(task)
    out = {}
    for key, _, _ in PARETO_AXES:
        pts = [(r["id"], x, y) for r, x, y in _points(results, key, q)]
        if len(pts) >= 2:
            out[key] = pareto(pts, (METRICS[key].better, METRICS[q].better))
    return out


def plot_pareto(results: list[dict], path: Path, title: str, task: str) -> Path | None:
    q = PRIMARY_QUALITY.get(task)
    if q is None or all(is_random(r) for r in results):
        return None
    fronts = pareto_sets(results, task)
    if not fronts:
        return None
    fig, axes = plt.subplots(1, len(PARETO_AXES), figsize=(12, 3.9))
    for ax, (key, label, log) in zip(axes, PARETO_AXES):
        pts = _points(results, key, q)
        front = set(fronts.get(key, []))
        for r, x, y in pts:
            on = r["id"] in front
            m = method_of(r)
            ax.scatter([x], [y], s=90 if on else 40, color=_color(m), edgecolor="black" if on else "none",
                       lw=1.5, zorder=3, marker="o" if on else "X")
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        fp = sorted(((x, y) for r, x, y in pts if r["id"] in front))
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
    fig.suptitle(f"Pareto fronts (ringed: non-dominated, dashed: front): {title}", fontsize=10)
    return _save(fig, path)


def plot_group(results: list[dict], *, folder: Path, slug: str, title: str, task: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        "loss": plot_loss(results, folder / f"{slug}-loss.png", title),
        "quality_curve": plot_quality_curve(results, folder / f"{slug}-quality-vs-step.png", title, task),
        "params_storage": plot_params_storage(results, folder / f"{slug}-params-storage.png", title),
        "latency": plot_latency(results, folder / f"{slug}-latency-throughput.png", title),
        "pareto": plot_pareto(results, folder / f"{slug}-pareto.png", title, task),
    }
    return {k: v for k, v in made.items() if v is not None}
