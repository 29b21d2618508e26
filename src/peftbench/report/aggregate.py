"""From runs to answers: seeds aggregated, learning-rate sweeps resolved on validation, and
verdicts that name a winner only when its interval says so. Reads result dicts only (no torch).

Usage:
    exps = aggregate(load_results(out_dir))          # one Agg per experiment id
    summarize(exps[0], "accuracy")                   # {"mean", "low", "high", "n", "how"}
    verdicts(exps_of_one_group, task)                # list of measure verdicts (verdict.json)

A sweep (several ``train.learning_rate`` values) is resolved per experiment id: the rate whose
runs have the best mean validation score wins (the task's primary metric on validation when the
model is pretrained, else the validation loss) and only that rate's runs, one per seed, enter
tables and verdicts. Test numbers never pick a rate.
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

from peftbench import stats
from peftbench.catalog.methodspecs import is_zero_shot
from peftbench.report import stages
from peftbench.report.metrics import (
    METRICS,
    PRIMARY_QUALITY,
    QUALITY,
    VERDICT_MEASURES,
    drift_percent,
    get_in,
    is_random,
    margin,
    method_of,
    model_of,
    pareto,
    task_of,
    value,
)


@dataclass
class Agg:
    """One experiment id: its selected runs (one per seed) and how the rate was selected."""

    id: str
    runs: list[dict]
    all_runs: list[dict]
    sweep: list[dict] = field(default_factory=list)  # per rate: lr, n, validation score, selected
    selected_lr: float | None = None
    selection: str | None = None  # what picked the rate, e.g. "validation accuracy"
    left_out: int = 0  # older runs of the same id under another configuration

    @property
    def method(self) -> str:
        return method_of(self.runs[0])

    @property
    def model(self) -> str:
        return model_of(self.runs[0])

    @property
    def task(self) -> str:
        return task_of(self.runs[0])

    @property
    def seeds(self) -> list:
        return [r.get("seed") for r in self.runs]

    @property
    def device(self) -> str:
        return str(get_in(self.runs[0], "env", "device") or "cpu")


def _lr(r: dict):
    return get_in(r, "config", "train", "learning_rate")


def _config_key(r: dict) -> str:
    """The configuration without what varies inside one experiment (seed, learning rate)."""
    c = copy.deepcopy(r.get("config") or {})
    c.pop("id", None)
    c.pop("description", None)
    for key in ("seed", "learning_rate"):
        (c.get("train") or {}).pop(key, None)
    return json.dumps(c, sort_keys=True, default=str)


def aggregate(results: list[dict]) -> list[Agg]:
    """One Agg per experiment id. Runs left in the folder from another configuration of the same id
    (an earlier --set, say) are left out: the newest run's configuration decides."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r.get("status") == "success":
            by_id[r["id"]].append(r)
    out = []
    for exp_id, runs in sorted(by_id.items()):
        key = _config_key(max(runs, key=lambda r: str(r.get("finished_at") or "")))
        current = [r for r in runs if _config_key(r) == key]
        left_out = len(runs) - len(current)
        runs = sorted(current, key=lambda r: (str(_lr(r)), r.get("seed") or 0))
        rates = sorted({_lr(r) for r in runs}, key=lambda x: (x is None, x or 0))
        if len(rates) < 2:
            out.append(Agg(exp_id, runs, runs, selected_lr=rates[0] if rates else None, left_out=left_out))
            continue
        table, criterion = _sweep_table(runs, rates)
        best = next(row for row in table if row["selected"])
        chosen = [r for r in runs if _lr(r) == best["learning_rate"]]
        out.append(Agg(exp_id, chosen, runs, table, best["learning_rate"], criterion, left_out))
    return out


def _sweep_table(runs: list[dict], rates: list) -> tuple[list[dict], str]:
    task = task_of(runs[0])
    q = PRIMARY_QUALITY.get(task)
    use_quality = q is not None and all(get_in(r, "validation", q) is not None for r in runs)
    key, better = (q, METRICS[q].better) if use_quality else ("loss", "min")
    criterion = f"validation {QUALITY[q]}" if use_quality else "validation loss"
    table = []
    for lr in rates:
        vals = [get_in(r, "validation", key) for r in runs if _lr(r) == lr]
        vals = [v for v in vals if isinstance(v, (int, float))]
        test = [value(r, q) for r in runs if _lr(r) == lr and q and value(r, q) is not None]
        table.append(
            {
                "learning_rate": lr,
                "n": len(vals),
                "validation": sum(vals) / len(vals) if vals else None,
                "test": sum(test) / len(test) if test else None,
                "selected": False,
            }
        )
    scored = [row for row in table if row["validation"] is not None]
    pick = (max if better == "max" else min)(scored, key=lambda row: row["validation"]) if scored else table[0]
    pick["selected"] = True
    return table, criterion


# ---------------------------------------------------------------- one measure of one experiment


def summarize(agg: Agg, key: str) -> dict | None:
    """Mean over seeds with a 95 % interval: Student's t across seeds when there are several,
    else the run's own bootstrap interval (examples or timed calls); exact counts have none. Computed
    once per experiment and measure (tables, plots, CSV and verdicts all ask)."""
    cache = agg.__dict__.setdefault("_summaries", {})
    if key not in cache:
        cache[key] = _summarize(agg, key)
    return cache[key]


def _summarize(agg: Agg, key: str) -> dict | None:
    metric = METRICS[key]
    vals = [value(r, key) for r in agg.runs]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    if metric.kind == "exact":
        return {"mean": vals[0], "low": vals[0], "high": vals[0], "n": len(vals), "how": "exact"}
    if len(vals) == 2:  # Student's t on one degree of freedom: wider than the value itself, below zero
        mean = sum(vals) / 2
        return {"mean": mean, "low": None, "high": None, "n": 2, "how": "2 seeds: too few for an interval"}
    if len(vals) > 2 and metric.relative and min(vals) > 0:  # a time, rate or size: a ratio's interval
        g, lo, hi = stats.log_t_interval(vals)
        how = f"t over {len(vals)} seeds on the log scale (geometric mean)"
        return {"mean": g, "low": lo, "high": hi, "n": len(vals), "how": how}
    if len(vals) > 2:
        mean, lo, hi = stats.t_interval(vals)
        return {"mean": mean, "low": lo, "high": hi, "n": len(vals), "how": f"t over {len(vals)} seeds"}
    samples = metric.samples(agg.runs[0]) if metric.samples else None
    if samples and samples["n"] >= 2 and metric.statistic:
        _, lo, hi = stats.bootstrap_interval(samples, metric.statistic)
        return {"mean": vals[0], "low": lo, "high": hi, "n": 1, "how": f"bootstrap over {samples['n']} samples"}
    return {"mean": vals[0], "low": None, "high": None, "n": 1, "how": "single measurement"}


def _by_seed(a: Agg, b: Agg) -> tuple[list[dict], list[dict], bool]:
    """The two sides' runs, lined up by seed when both ran the same seeds (paired across seeds)."""
    if sorted(map(str, a.seeds)) == sorted(map(str, b.seeds)):
        key = lambda r: str(r.get("seed"))  # noqa: E731
        return sorted(a.runs, key=key), sorted(b.runs, key=key), True
    return a.runs, b.runs, False


def _samples(runs: list[dict], key: str) -> list[dict] | None:
    """Each run's samples of a measure, or None when a run lacks them."""
    out = [METRICS[key].samples(r) for r in runs]
    return None if any(s is None or s["n"] == 0 for s in out) else out


def _latency_ratio(
    a_runs: list[dict], a_key: str, b_runs: list[dict], b_key: str, *, device: str, paired_seeds: bool | None = None
) -> dict | None:
    """p50 latency of A against B in percent, with its interval; None where either lacks samples. Timed
    together in a stage: paired round by round."""
    c = stages.ratio(a_runs, METRICS[a_key].stage, b_runs, METRICS[b_key].stage)
    sa, sb = _samples(a_runs, a_key), _samples(b_runs, b_key)
    if c is None and (sa is None or sb is None):
        return None
    if c is None:
        m = margin(METRICS[a_key], device)
        c = stats.compare(sa, sb, "median", relative=True, margin=m, paired_seeds=paired_seeds)
    return {
        "percent": round(c.effect, 3),
        "low": round(c.low, 3),
        "high": round(c.high, 3),
        "significant": c.significant,
    }


def compare_aggs(best: Agg, other: Agg, key: str) -> stats.Comparison | None:
    """``best`` against ``other``; a positive effect means ``best`` is better (points, or percent)."""
    metric = METRICS[key]
    ra, rb, paired = _by_seed(best, other)
    if metric.stage and (c := stages.paired(ra, rb, metric.stage)) is not None:
        return c  # timed together, interleaved: paired round by round, no drift margin
    sa, sb = _samples(ra, key), _samples(rb, key)
    if sa is None or sb is None:
        return None
    m = margin(metric, best.device, ra + rb)
    if metric.better == "max":
        return stats.compare(sa, sb, metric.statistic, relative=metric.relative, margin=m, paired_seeds=paired)
    return stats.compare(sb, sa, metric.statistic, relative=metric.relative, margin=m, paired_seeds=paired)


def _margin_text(used: float, runs: list[dict]) -> str:
    if math.isinf(used):
        return (
            f"; not compared: the machine's speed moved {drift_percent(runs):g} % between these runs (their "
            f"reference timings before and after training), so their training speeds measure the moments"
        )
    return f"; effects under {used:g} % are ties (between-process drift)"


def verdict_for(aggs: list[Agg], key: str) -> dict | None:
    """Winners of one measure: the best mean, and every experiment not significantly worse (ties)."""
    metric = METRICS[key]
    cands = [(a, s) for a in aggs if (s := summarize(a, key)) is not None]
    if not cands:
        return None
    sign = -1 if metric.better == "max" else 1
    cands.sort(key=lambda c: (sign * c[1]["mean"], c[0].id))
    best, best_s = cands[0]
    entry = {
        "measure": key,
        "label": metric.label,
        "better": "higher" if metric.better == "max" else "lower",
        "unit": metric.unit,
        "values": {a.id: _round(s) for a, s in cands},
        "n": {"experiments": len(cands), "seeds": {a.id: len(a.runs) for a, _ in cands}},
    }
    if len(cands) == 1:
        return {**entry, "winners": [best.id], "effect": None, "test": "only one experiment measured it"}
    if metric.kind == "exact":
        winners = [a.id for a, s in cands if s["mean"] == best_s["mean"]]
        runner = next(((a, s) for a, s in cands if a.id not in winners), None)
        effect = (
            None
            if runner is None
            else {
                "versus": runner[0].id,
                "estimate": runner[1]["mean"] - best_s["mean"],
                "low": None,
                "high": None,
                "unit": metric.unit,
                "relative": False,
                "significant": True,
            }
        )
        return {**entry, "winners": winners, "effect": effect, "test": "exact count (no noise)"}
    comps = {a.id: compare_aggs(best, a, key) for a, _ in cands[1:]}
    family = stats.correct(comps)
    winners = [best.id] + [aid for aid, c in comps.items() if c is None or not c.significant]
    runner_id = next((a.id for a, _ in cands[1:] if a.id not in winners), cands[1][0].id)
    c = comps[runner_id]
    effect = (
        None
        if c is None
        else {
            "versus": runner_id,
            "estimate": round(c.effect, 4),
            "low": round(c.low, 4),
            "high": round(c.high, 4),
            "unit": "%" if c.relative else metric.unit,
            "relative": c.relative,
            "significant": c.significant,
            "p_value": round(c.p_value, 4),
            "p_holm": round(family["p_holm"][runner_id], 4),
            "margin": c.margin,
        }
    )
    test = c.test if c is not None else "no per-sample data: not compared"
    if c is not None and c.margin:
        test += _margin_text(c.margin, best.runs + next(a for a, _ in cands if a.id == runner_id).runs)
    correction = {k: v for k, v in family.items() if k != "p_holm"}
    return {**entry, "winners": winners, "effect": effect, "test": test, "correction": correction}


def _round(s: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items()}


def verdicts(aggs: list[Agg], task: str) -> list[dict]:
    """Every comparable measure of one (model, task) group; quality only for pretrained models."""
    random_weights = all(is_random(a.runs[0]) for a in aggs)
    keys = []
    for k in VERDICT_MEASURES:
        if k == "QUALITY":
            if not random_weights:
                keys += [q for q in QUALITY if any(value(a.runs[0], q) is not None for a in aggs)]
        else:
            keys.append(k)
    return [v for k in keys if (v := verdict_for(aggs, k)) is not None]


def forgetting_of(agg: Agg) -> dict | None:
    """An experiment's forgetting summary; the zero-shot base forgets nothing by definition (0, [0, 0])
    where its runs measured the probe, so it sits on the learning-forgetting plane as the reference."""
    if is_zero_shot(agg.method):
        if all(get_in(r, "forgetting", "increase") == 0 for r in agg.runs):
            return {"mean": 0.0, "low": 0.0, "high": 0.0, "n": len(agg.runs), "how": "the base itself"}
        return None
    return summarize(agg, "forgetting")


def learning_forgetting(aggs: list[Agg], task: str) -> dict | None:
    """Target quality against forgetting, one point per experiment with both intervals, and the Pareto
    front (least forgetting, best quality); None where forgetting or quality was not measured."""
    q = PRIMARY_QUALITY.get(task)
    points = []
    for a in aggs:
        f, s = forgetting_of(a), summarize(a, q) if q else None
        if f is not None and s is not None:
            points.append({"id": a.id, "method": a.method, "forgetting": _round(f), "quality": _round(s)})
    if len(points) < 2:
        return None
    front = pareto(
        [(p["id"], p["forgetting"]["mean"], p["quality"]["mean"]) for p in points], ("min", METRICS[q].better)
    )
    return {"quality": q, "unit": "nats/token", "points": points, "pareto": front}


def against_base(aggs: list[Agg], key: str = "latency_p50_ms") -> list[dict]:
    """Each trained experiment's latency relative to the zero-shot base (the `none` experiment),
    unmerged and merged, with intervals: a fully fine-tuned model has the base's architecture, so
    anything beyond the noise would be a measurement artefact."""
    base = next((a for a in aggs if is_zero_shot(a.method)), None)
    if base is None:
        return []
    out = []
    for a in aggs:
        if a is base:
            continue
        row = {"id": a.id, "method": a.method}
        for label, k in (("unmerged", key), ("merged", "merged_p50_ms")):
            ratio = _latency_ratio(a.runs, k, base.runs, key, device=a.device)
            if ratio is not None:
                row[label] = ratio
        if len(row) > 2:
            out.append(row)
    return out


def unmerged_overhead(aggs: list[Agg]) -> list[dict]:
    """Unmerged against merged latency of the same runs, in percent, with its interval."""
    out = []
    for a in aggs:
        ratio = _latency_ratio(a.runs, "latency_p50_ms", a.runs, "merged_p50_ms", device=a.device, paired_seeds=True)
        if ratio is not None:
            out.append({"id": a.id, "method": a.method, **ratio})
    return out
