"""The report's deployment section: per target, each method's shipped size, deployed speed and quality after
export, the winners with intervals, the Pareto fronts, and what export cost in quality. Reads JSON only.

Usage:
    targets(gaggs)                                  # the deployment targets a group's runs were measured on
    rows = table(gaggs, "onnx-int8", task)          # one row per experiment (cells with intervals)
    v = verdict(gaggs, "onnx-int8", task)           # verdict.json's deploy entry for the target
    csv_cells(agg, "onnx-int8", task)               # summary.csv's <target>_<measure>_mean/_ci95_low/_ci95_high

A run's numbers on a target are ``inference.deploy.<target>`` (written by the measurement stage). Latency is
compared over the stage's rounds (paired: every candidate was timed in every round, so the machine's drift
cancels); quality after export against another method by the paired bootstrap over the same test examples;
the quality change is the stage's own paired comparison with the run's PyTorch result.
"""

from __future__ import annotations

import statistics

from peftbench import stats
from peftbench.fs import human_bytes
from peftbench.report import stages
from peftbench.report.metrics import LOWER_IS_BETTER, PRIMARY_QUALITY, pareto, spread
from peftbench.report.stages import STAGE

MEASURES = ("latency_p50_ms", "tokens_per_second", "bytes", "peak_memory_bytes", "quality", "quality_change")


def targets(gaggs) -> list[str]:
    seen: dict[str, None] = {}
    for a in gaggs:
        for r in a.runs:
            seen.update(dict.fromkeys((r.get("inference") or {}).get("deploy") or {}))
    return list(seen)


def _entries(a, target: str) -> list[dict]:
    return [((r.get("inference") or {}).get("deploy") or {}).get(target) or {} for r in a.runs]


def _rounds(a, target: str) -> list[float] | None:
    """Per round, the geometric mean over the experiment's seeds of its candidate's median forward time."""
    doc = a.runs[0].get(STAGE)
    if doc is None or any(r.get(STAGE) is not doc for r in a.runs):
        return None
    scenario = f"forward_b{a.runs[0]['inference']['shapes']['batch_size']}"
    return stages.per_round(doc, scenario, [e.get("candidate") for e in _entries(a, target)])


def _log_interval(values: list[float]) -> dict | None:
    """Geometric mean with a t interval on the log scale (never below zero)."""
    if not values or min(values) <= 0:
        return None
    m, lo, hi = stats.log_t_interval(values)
    return {"mean": m, "low": lo, "high": hi}


def cells(a, target: str, task: str) -> dict[str, dict | None]:
    """The experiment's numbers on a target: {measure: {mean, low, high}} (None where it has none)."""
    es = _entries(a, target)
    if not es or any(e.get("status") != "built" for e in es):
        return dict.fromkeys(MEASURES)
    out: dict[str, dict | None] = {}
    rounds = _rounds(a, target)
    out["latency_p50_ms"] = _log_interval(rounds) if rounds else None
    out["tokens_per_second"] = _mean([e.get("throughput_tokens_per_second") for e in es])
    out["bytes"] = _mean([e.get("bytes") for e in es])
    out["peak_memory_bytes"] = _mean([e.get("peak_memory_bytes") for e in es])
    key = PRIMARY_QUALITY[task]
    if all(e.get("quality") for e in es):
        samples = [e["quality_samples"] for e in es]
        point = statistics.fmean(e["quality"][key] for e in es)
        _, lo, hi = stats.bootstrap_interval(samples[0], key) if len(samples) == 1 else (None, None, None)
        out["quality"] = {"mean": point, "low": lo, "high": hi}
        ch = [e["quality_change"][key] for e in es]
        out["quality_change"] = (
            {"mean": ch[0]["effect"], "low": ch[0]["low"], "high": ch[0]["high"]}
            if len(ch) == 1
            else _mean([c["effect"] for c in ch])
        )
    else:
        out["quality"] = out["quality_change"] = None
    return out


def _mean(values) -> dict | None:
    if not values or any(v is None for v in values):
        return None
    return {"mean": statistics.fmean(values), "low": None, "high": None}


def _status(a, target: str) -> str:
    es = _entries(a, target)
    bad = next((e for e in es if e.get("status") != "built"), None)
    return "built" if bad is None else (bad.get("reason") or bad.get("status") or "not measured")


def _winners(gaggs, target: str, task: str, measure: str) -> dict | None:
    """The best experiment on one measure and those it does not separate from (a tie), with each effect."""
    built = [a for a in gaggs if _status(a, target) == "built"]
    vals = {a.id: cells(a, target, task)[measure] for a in built}
    vals = {k: v for k, v in vals.items() if v is not None}
    if len(vals) < 2:
        return None
    lower = measure in ("latency_p50_ms", "bytes", "peak_memory_bytes") or (
        measure == "quality" and PRIMARY_QUALITY[task] in LOWER_IS_BETTER
    )
    best = (min if lower else max)(vals, key=lambda k: vals[k]["mean"])
    by_id = {a.id: a for a in built}
    comps = {o: _compare(by_id[best], by_id[o], target, task, measure) for o in vals if o != best}
    family = stats.correct(comps)  # one family per target and measure, as the suite's verdicts
    effects, ties = {}, [best]
    for other, c in comps.items():
        if c is None:
            if vals[other]["mean"] == vals[best]["mean"]:
                ties.append(other)
            effects[other] = None
            continue
        effects[other] = {
            "effect": c.effect,
            "low": c.low,
            "high": c.high,
            "test": c.test,
            "p_value": round(c.p_value, 4),
            "p_holm": round(family["p_holm"][other], 4),
        }
        if not c.significant:
            ties.append(other)
    correction = {k: v for k, v in family.items() if k != "p_holm"}
    return {
        "measure": measure,
        "best": best,
        "winners": ties,
        "lower_is_better": lower,
        "against_best": effects,
        "correction": correction,
    }


def _compare(best, other, target: str, task: str, measure: str):
    if measure == "latency_p50_ms":
        a, b = _rounds(other, target), _rounds(best, target)
        if a is None or b is None or len(a) != len(b) or other.runs[0].get(STAGE) is not best.runs[0].get(STAGE):
            return None
        return stats.compare_rounds(a, b)
    if measure == "quality":
        key = PRIMARY_QUALITY[task]
        return stats.compare(
            [e["quality_samples"] for e in _entries(best, target)],
            [e["quality_samples"] for e in _entries(other, target)],
            key,
        )
    return None  # bytes, memory and rates without per-call samples: exact values, compared as such


def verdict(gaggs, target: str, task: str) -> dict:
    """verdict.json's entry for one target: winners per measure, the Pareto fronts, the quality change."""
    experiments = {}
    for a in gaggs:
        c = cells(a, target, task)
        experiments[a.id] = {"status": _status(a, target), **{k: v for k, v in c.items()}}
    return {
        "target": target,
        "measures": [w for m in ("quality", "latency_p50_ms", "bytes") if (w := _winners(gaggs, target, task, m))],
        "pareto": fronts(gaggs, target, task),
        "experiments": experiments,
    }


def fronts(gaggs, target: str, task: str) -> dict[str, list[str]]:
    better_q = "min" if PRIMARY_QUALITY[task] in LOWER_IS_BETTER else "max"
    out = {}
    for axis in ("latency_p50_ms", "bytes"):
        points = []
        for a in gaggs:
            c = cells(a, target, task)
            if c[axis] and c["quality"]:
                points.append((a.id, c[axis]["mean"], c["quality"]["mean"]))
        if points:
            out[f"quality_vs_{axis}"] = pareto(points, ("min", better_q))
    return out


FORMATS = {  # a measure's numbers in the deployment tables and hover texts
    "latency_p50_ms": lambda v: f"{v:.2f}",
    "tokens_per_second": lambda v: f"{v:,.1f}",
    "bytes": human_bytes,
    "peak_memory_bytes": human_bytes,
    "quality": lambda v: f"{v:.2f}",
    "quality_change": lambda v: f"{v:+.2f}",
}


def _fmt(measure: str, s: dict | None) -> str:
    return "n/a" if s is None else spread(s, FORMATS[measure])


def table(gaggs, target: str, task: str) -> tuple[list[str], list[list[str]]]:
    key = PRIMARY_QUALITY[task]
    header = ["experiment", "method", "p50 forward ms", "tokens/s", "shipped", "peak memory", key, f"{key} change"]
    v = {w["measure"]: set(w["winners"]) for w in verdict(gaggs, target, task)["measures"]}
    rows = []
    for a in gaggs:
        status = _status(a, target)
        if status != "built":
            rows.append([a.id, a.method, status, "", "", "", "", ""])
            continue
        c = cells(a, target, task)
        row = [a.id, a.method]
        for m in MEASURES:
            text = _fmt(m, c[m])
            bold = {"latency_p50_ms": "latency_p50_ms", "bytes": "bytes", "quality": "quality"}.get(m)
            row.append(f"**{text}**" if bold and a.id in v.get(bold, ()) and len(v[bold]) < len(gaggs) else text)
        rows.append(row)
    return header, rows


def csv_fields(present: list[str]) -> list[str]:
    return [f"{t}_{m}_{p}" for t in present for m in MEASURES for p in ("mean", "ci95_low", "ci95_high")]


def csv_cells(a, target: str, task: str) -> dict:
    out = {}
    for m, s in cells(a, target, task).items():
        out[f"{target}_{m}_mean"] = None if s is None else s["mean"]
        out[f"{target}_{m}_ci95_low"] = None if s is None else s["low"]
        out[f"{target}_{m}_ci95_high"] = None if s is None else s["high"]
    return out


def short_labels(ids: list[str]) -> dict[str, str]:
    """Experiment ids without the part they all share (a suite's matrix ids repeat the model and task)."""
    if len(ids) < 2:
        return {i: i for i in ids}
    head = ids[0]
    for i in ids[1:]:
        while not i.startswith(head):
            head = head[:-1]
    cut = head.rfind("--") + 2 if "--" in head else 0
    return {i: i[cut:] or i for i in ids}


def plot(gaggs, target: str, task: str, path, title: str):
    """Quality after export against deployed latency (both intervals, the front joined) where quality is
    scored; else latency against shipped bytes. None when fewer than one experiment was built."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from peftbench.report import interactive

    pts = [(a, cells(a, target, task)) for a in gaggs if _status(a, target) == "built"]
    pts = [(a, c) for a, c in pts if c["latency_p50_ms"]]
    if not pts:
        return None
    scored = all(c["quality"] for _, c in pts)
    ykey = "quality" if scored else "bytes"
    fig, ax = plt.subplots(figsize=(6, 4))
    front = set(fronts(gaggs, target, task).get("quality_vs_latency_p50_ms", []))
    short = short_labels([a.id for a, _ in pts])
    ylabel = f"{PRIMARY_QUALITY[task]} after export" if scored else "shipped bytes"
    for a, c in pts:
        x, y = c["latency_p50_ms"], c[ykey]
        xerr = [[x["mean"] - x["low"]], [x["high"] - x["mean"]]] if x.get("low") is not None else None
        yerr = [[y["mean"] - y["low"]], [y["high"] - y["mean"]]] if y.get("low") is not None else None
        x_text, y_text = _fmt("latency_p50_ms", x), _fmt(ykey, y)
        tip = interactive.hover(a.id, f"p50 latency on {target} (ms)", x_text, ylabel, y_text, on_front=a.id in front)
        ax.errorbar(x["mean"], y["mean"], xerr=xerr, yerr=yerr, fmt="o", capsize=3, gid=tip)
        ax.annotate(short[a.id] + (" *" if a.id in front else ""), (x["mean"], y["mean"]), fontsize=8)
    if front:
        line = sorted((c["latency_p50_ms"]["mean"], c["quality"]["mean"]) for a, c in pts if a.id in front)
        ax.plot([p[0] for p in line], [p[1] for p in line], "--", color="grey", linewidth=1)
    ax.set_xlabel(f"p50 forward latency on {target} (ms)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + ("  (* Pareto front)" if front else ""), fontsize=10)
    fig.tight_layout()
    return interactive.save(fig, path, dpi=110)
