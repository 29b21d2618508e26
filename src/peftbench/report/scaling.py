"""How memory and speed grow with model size, per method and GPU count, and the largest model that fits.

Usage:
    rows = scaling_rows(results)                    # one per run: size, method, GPUs, fits, tokens/s, memory
    fit = power_fit([1e8, 1e9, 7e9], [2e9, 1.6e10, 1.1e11])   # {"exponent", "low", "high", ...}
    blocks = scaling_blocks(results, plots_dir)     # report blocks; [] unless some method has 3 sizes

A run that stopped with an out-of-memory error is a data point too: that model does not fit that
method on that many GPUs. Fits are least squares on log-log axes; the exponent's 95 % interval is
Student's t on the slope's standard error. Reads result dicts only (no torch).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from peftbench.report.metrics import get_in, train_rate
from peftbench.stats import LEVEL

MIN_SIZES = 3  # model sizes a (method, GPUs) series needs before a fit is drawn
SPAN = 1.5  # the largest model at least this many times the smallest's parameters, for a power law
OOM_WORDS = ("out of memory", "outofmemoryerror")


def _oom(r: dict) -> bool:
    return r.get("status") == "failed" and any(w in str(r.get("error", "")).lower() for w in OOM_WORDS)


def scaling_rows(results: list[dict]) -> list[dict]:
    """One row per trained or out-of-memory run with a parameter count. ``workload`` names what every
    run of a series must share besides the model: task, data, batch and length."""
    rows = []
    for r in results:
        total = get_in(r, "params", "total")
        trained = r.get("status") == "success" and get_in(r, "train", "steps")
        if not total or not (trained or _oom(r)):
            continue
        per_gpu = get_in(r, "train", "memory", "per_process_peak_bytes") or []
        peak = max(per_gpu) if per_gpu else get_in(r, "train", "peak_memory_bytes")
        world = get_in(r, "resolved", "distributed", "world_size") or get_in(r, "resolved", "num_processes") or 1
        rows.append(
            {
                "model": get_in(r, "config", "model", "spec"),
                "workload": _workload(r),
                "method": get_in(r, "config", "method", "name"),
                "params": int(total),
                "gpus": int(world),
                "fits": r.get("status") == "success",
                "strategy": get_in(r, "resolved", "distributed", "strategy") or ("ddp" if world > 1 else "single"),
                "tokens_per_second": train_rate(r),
                "peak_gpu_bytes": peak,
                "adapter_bytes": get_in(r, "storage", "adapter_bytes"),
                "latency_p50_ms": get_in(r, "inference", "latency_ms", "p50_ms"),
            }
        )
    return sorted(rows, key=lambda x: (x["method"] or "", x["gpus"], x["params"]))


def _workload(r: dict) -> str:
    """Task, data, batch and length, after the model family where the result names it: an
    encoder-decoder's tokens are not a decoder's, so T5 and GPT shapes are not one power law."""
    data, train = get_in(r, "config", "data") or {}, get_in(r, "config", "train") or {}
    parts = [data.get("task"), data.get("spec"), train.get("batch_size"), data.get("max_source_length")]
    if all(p is None for p in parts):
        return ""
    task, spec, batch, length = (str(p) for p in parts)
    family = get_in(r, "model", "family")
    return f"{family + ' ' if family else ''}{task}, {spec}, {batch} × {length}"


def power_fit(xs, ys, *, level: float = LEVEL) -> dict | None:
    """y = c * x**exponent by least squares on logs; the exponent with its t interval (n >= 3)."""
    from scipy import stats as st

    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    n = len(pts)
    if n < MIN_SIZES or len({p[0] for p in pts}) < 2:
        return None
    if max(p[0] for p in pts) - min(p[0] for p in pts) < math.log(SPAN):  # not model sizes (a rank search, say)
        return None
    lx, ly = np.array(pts).T
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    se = math.sqrt(float(resid @ resid) / (n - 2) / float(((lx - lx.mean()) ** 2).sum())) if n > 2 else math.inf
    half = float(st.t.ppf(0.5 + level / 2, n - 2)) * se
    return {
        "exponent": round(float(slope), 4),
        "low": round(float(slope) - half, 4),
        "high": round(float(slope) + half, 4),
        "prefactor": float(math.exp(intercept)),
        "n": n,
        "level": level,
    }


def series(rows: list[dict], key: str) -> dict[tuple[str, str, int, str], list[dict]]:
    """(workload, method, GPUs, strategy) -> runs that fit and have ``key``, smallest model first: a
    power law is fitted where only the model changes (one task and data, one way of training: data
    parallel and sharded runs do not share one)."""
    out: dict[tuple[str, str, int, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["fits"] and row.get(key):
            out[(row["workload"], row["method"], row["gpus"], row["strategy"])].append(row)
    return dict(out)


def _series_name(workload: str, method: str, gpus: int, strategy: str) -> str:
    name = f"{method} on {gpus} GPU{'s' * (gpus != 1)}" + (f" ({strategy})" if gpus > 1 else "")
    return f"{name}, {workload}" if workload else name


def largest_fits(rows: list[dict]) -> list[dict]:
    """Per method and GPU count: the largest model that trained, and the smallest that ran out of memory."""
    by: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for row in rows:
        by[(row["workload"], row["method"], row["gpus"])].append(row)
    out = []
    for (workload, method, gpus), group in sorted(by.items()):
        ok = [r for r in group if r["fits"]]
        oom = [r for r in group if not r["fits"]]
        best = max(ok, key=lambda r: r["params"]) if ok else None
        first_oom = min(oom, key=lambda r: r["params"]) if oom else None
        out.append(
            {
                "workload": workload,
                "method": method,
                "gpus": gpus,
                "largest": best
                and {
                    "model": best["model"],
                    "params": best["params"],
                    "strategy": best["strategy"],
                    "peak_gpu_bytes": best["peak_gpu_bytes"],
                },
                "out_of_memory": first_oom and {"model": first_oom["model"], "params": first_oom["params"]},
            }
        )
    return out


def fits_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "GPUs", "largest that trained", "per-GPU peak", "smallest out of memory"]
    body = []
    several = len({r["workload"] for r in rows}) > 1
    for f in largest_fits(rows):
        big, oom = f["largest"], f["out_of_memory"]
        body.append(
            [
                f"{f['method']} ({f['workload']})" if several else f["method"],
                str(f["gpus"]),
                f"{big['model']} ({big['params'] / 1e9:.2f} B, {big['strategy']})" if big else "none",
                f"{big['peak_gpu_bytes'] / 2**30:.1f} GiB" if big and big["peak_gpu_bytes"] else "n/a",
                f"{oom['model']} ({oom['params'] / 1e9:.2f} B)" if oom else "none tried",
            ]
        )
    return header, body


def fits_lines(rows: list[dict]) -> list[str]:
    """One line per fitted series: memory and speed exponents against parameters, with intervals."""
    lines = []
    for key, what in (("peak_gpu_bytes", "per-GPU peak memory"), ("tokens_per_second", "training tokens/s")):
        for name, pts in sorted(series(rows, key).items()):
            fit = power_fit([p["params"] for p in pts], [p[key] for p in pts])
            if fit:
                lines.append(
                    f"{what}, {_series_name(*name)}: ∝ parameters^{fit['exponent']:.2f} "
                    f"(95 % interval {fit['low']:.2f} to {fit['high']:.2f}, {fit['n']} sizes)"
                )
    return lines


def plot_scaling(rows: list[dict], path: Path, key: str, ylabel: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from peftbench.report import interactive

    groups = {k: v for k, v in series(rows, key).items() if len(v) >= MIN_SIZES}
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    workloads = {name[0] for name in groups}
    shared = workloads.pop() if len(workloads) == 1 else None  # one workload: the title, not every label
    for name, pts in sorted(groups.items()):
        xs, ys = [p["params"] for p in pts], [p[key] for p in pts]
        fit = power_fit(xs, ys)
        interval = f" (∝ N^{fit['exponent']:.2f}, 95 %: {fit['low']:.2f} to {fit['high']:.2f})" if fit else ""
        label = _series_name("" if shared is not None else name[0], *name[1:])
        line = ax.plot(xs, ys, "o", label=label + interval)
        if fit:
            grid = np.geomspace(min(xs), max(xs), 20)
            ax.plot(grid, fit["prefactor"] * grid ** fit["exponent"], "-", color=line[0].get_color(), alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # parameters at 1-2-5 steps, in billions (matplotlib's minor log labels collide on this axis)
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e9:g} B"))
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if shared:
        ax.set_title(shared, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return interactive.save(fig, path, dpi=110, metadata={"Software": None})


def scaling_blocks(results: list[dict], plots_dir: Path) -> list[tuple]:
    """The report's scaling section, or nothing when no series has three model sizes."""
    rows = scaling_rows(results)
    if not any(len({r["model"] for r in v}) >= MIN_SIZES for v in series(rows, "params").values()):
        return []  # three models, not three runs of one model (a search's ranks change its parameter count)
    blocks: list[tuple] = [
        ("h2", "Scaling with model size"),
        (
            "p",
            "Per-GPU peak training memory and steady training tokens/s against parameters, on "
            "log-log axes, per method, GPU count and strategy; lines are least-squares power laws. A run "
            "that ran out of memory marks a model that does not fit.",
        ),
    ]
    blocks.append(("ul", fits_lines(rows) or ["no series has three sizes with both numbers"]))
    header, body = fits_table(rows)
    blocks.append(("h3", "Largest model that fits"))
    blocks.append(("table", header, body))
    for key, ylabel, name in (
        ("peak_gpu_bytes", "per-GPU peak memory (bytes)", "scaling_memory"),
        ("tokens_per_second", "training tokens/s", "scaling_speed"),
    ):
        path = plot_scaling(rows, plots_dir / f"{name}.png", key, ylabel)
        if path:
            blocks.append(("img", ylabel, path))
    return blocks
