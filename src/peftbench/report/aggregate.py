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
import os
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
    sweep: list[dict] = field(default_factory=list)  # per rate (or trial): lr, params, n, validation score, selected
    selected_lr: float | None = None
    selection: str | None = None  # what picked the rate, e.g. "validation accuracy"
    left_out: int = 0  # older runs of the same id under another configuration
    search: dict | None = None  # a search (train.search): trials, cost, the default and the selected trial

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


def _searched(r: dict) -> list[str]:
    """The ``section.field`` keys a run's search varies (none outside a search)."""
    return sorted((get_in(r, "config", "train", "search", "space") or {}).keys())


def _config_key(r: dict) -> str:
    """The configuration without what varies inside one experiment (seed, learning rate, searched keys)."""
    c = copy.deepcopy(r.get("config") or {})
    c.pop("id", None)
    c.pop("description", None)
    for key in ("seed", "learning_rate"):
        (c.get("train") or {}).pop(key, None)
    for key in _searched(r):
        section, _, name = key.partition(".")
        (c.get(section) or {}).pop(name, None)
    return json.dumps(c, sort_keys=True, default=str)


def _params(r: dict) -> dict:
    """A run's point in its experiment's space: the learning rate and every searched key."""
    out = {"train.learning_rate": _lr(r)}
    for key in _searched(r):
        section, _, name = key.partition(".")
        out[key] = get_in(r, "config", section, name)
    return out


def _point(r: dict) -> str:
    return json.dumps(_params(r), sort_keys=True, default=str)


def selection(task: str, *, pretrained: bool) -> tuple[str, str, str]:
    """What picks a sweep's rate or a search's trial: (validation key, optuna direction, label). The task's
    primary metric on validation for pretrained models, else the validation loss; never test."""
    q = PRIMARY_QUALITY.get(task)
    if pretrained and q is not None:
        return q, "maximize" if METRICS[q].better == "max" else "minimize", f"validation {QUALITY[q]}"
    return "loss", "minimize", "validation loss"


def label(a, aggs: list, *, short: bool = False) -> str:
    """What tables and plots call an experiment: its method where no other experiment of ``aggs`` has that method,
    else its id (``short``: without the group's shared ``model--task--`` prefix, for a plot's axis): two LoRA
    experiments are not both "lora"."""
    if sum(b.method == a.method for b in aggs) == 1:
        return a.method
    if not short:
        return a.id
    shared = os.path.commonprefix([b.id for b in aggs])
    shared = shared[: shared.rfind("--") + 2] if "--" in shared else ""
    return a.id[len(shared) :] or a.id


def aggregate(results: list[dict]) -> list[Agg]:
    """One Agg per experiment id. Runs left in the folder from another configuration of the same id
    (an earlier --set, say) are left out: the newest run's configuration decides. Several learning rates
    (a sweep) or several trials (a search) are resolved on validation: only the selected point's runs, one
    per seed, enter tables and verdicts."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    unfinished: dict[str, list[dict]] = defaultdict(list)  # a search's failed and pruned trials
    for r in results:
        if r.get("status") == "success":
            by_id[r["id"]].append(r)
        elif r.get("trial") is not None:
            unfinished[r["id"]].append(r)
    out = []
    for exp_id, runs in sorted(by_id.items()):
        key = _config_key(max(runs, key=lambda r: str(r.get("finished_at") or "")))
        current = [r for r in runs if _config_key(r) == key]
        left_out = len(runs) - len(current)
        runs = sorted(current, key=lambda r: (_trial_number(r), str(_lr(r)), r.get("seed") or 0))
        points = list(dict.fromkeys(_point(r) for r in runs))
        searched = any(r.get("trial") is not None for r in runs)
        if len(points) < 2 and not searched:
            lr = _lr(runs[0]) if runs else None
            out.append(Agg(exp_id, runs, runs, selected_lr=lr, left_out=left_out))
            continue
        table, criterion = _sweep_table(runs, points)
        best = next(row for row in table if row["selected"])
        chosen = [r for r in runs if _point(r) == best["point"]]
        agg = Agg(exp_id, chosen, runs, table, best["learning_rate"], criterion, left_out)
        if searched:
            agg.search = _search_summary(agg, table, unfinished[exp_id])
        out.append(agg)
    return out


def _trial_number(r: dict) -> int:
    return int((r.get("trial") or {}).get("number") or 0)


def _sweep_table(runs: list[dict], points: list[str]) -> tuple[list[dict], str]:
    task = task_of(runs[0])
    q = PRIMARY_QUALITY.get(task)
    use_quality = q is not None and all(get_in(r, "validation", q) is not None for r in runs)
    key, _, criterion = selection(task, pretrained=use_quality)
    better = METRICS[key].better if key in METRICS else "min"
    table = []
    for point in points:
        mine = [r for r in runs if _point(r) == point]
        vals = [get_in(r, "validation", key) for r in mine]
        vals = [v for v in vals if isinstance(v, (int, float))]
        test = [value(r, q) for r in mine if q and value(r, q) is not None]
        trial = mine[0].get("trial") or {}
        table.append(
            {
                "learning_rate": _lr(mine[0]),
                "params": _params(mine[0]),
                "point": point,
                "trial": trial.get("number"),
                "default": bool(trial.get("default")),
                "n": len(vals),
                "validation": sum(vals) / len(vals) if vals else None,
                "test": sum(test) / len(test) if test else None,
                "train_seconds": round(sum(get_in(r, "train", "seconds") or 0 for r in mine), 3),
                "selected": False,
            }
        )
    scored = [row for row in table if row["validation"] is not None]
    pick = (max if better == "max" else min)(scored, key=lambda row: row["validation"]) if scored else table[0]
    pick["selected"] = True
    return table, criterion


def _search_summary(agg: Agg, table: list[dict], unfinished: list[dict]) -> dict:
    """A search's cost and what it bought: trials run, training seconds over all of them, the configured
    default (trial 0) beside the selected trial, and the selected one's test gain over it with its interval."""
    setting = get_in(agg.all_runs[0], "config", "train", "search") or {}
    default = next((row for row in table if row["default"]), None)
    chosen = next(row for row in table if row["selected"])
    out = {
        "trials": setting.get("trials"),
        "done": len(table),
        "failed": sum(r.get("status") != "pruned" for r in unfinished),
        "pruned": sum(r.get("status") == "pruned" for r in unfinished),
        "sampler": setting.get("sampler"),
        "space": setting.get("space"),
        "train_seconds": round(
            sum(row["train_seconds"] for row in table) + sum(get_in(r, "train", "seconds") or 0 for r in unfinished), 3
        ),
        "selected": chosen,
        "default": default,
        "gain": None,
    }
    q = PRIMARY_QUALITY.get(agg.task)
    if default is not None and default is not chosen and q:
        d_runs = [r for r in agg.all_runs if _point(r) == default["point"]]
        tuned, base = Agg(agg.id, agg.runs, agg.runs), Agg(agg.id, d_runs, d_runs)
        c = compare_aggs(tuned, base, q) if all(value(r, q) is not None for r in agg.runs + d_runs) else None
        if c is not None:
            out["gain"] = {
                "measure": q,
                "estimate": round(c.effect, 4),
                "low": round(c.low, 4),
                "high": round(c.high, 4),
                "unit": METRICS[q].unit,
                "significant": c.significant,
                "test": c.test,
            }
    elif default is chosen:
        out["gain"] = {
            "measure": q,
            "estimate": 0.0,
            "low": 0.0,
            "high": 0.0,
            "unit": METRICS[q].unit if q else "",
            "significant": False,
            "test": "the default was selected",
        }
    return out


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
    ra, rb, _ = _by_seed(best, other)
    if metric.stage and (c := stages.paired(ra, rb, metric.stage)) is not None:
        return c  # timed together, interleaved: paired round by round, no drift margin
    if metric.better == "max":
        return compare_samples(best, other, key, device=best.device)
    return compare_samples(other, best, key, device=best.device)


def compare_samples(a: Agg, b: Agg, key: str, *, device: str, drift: float | None = None) -> stats.Comparison | None:
    """A's samples of a measure against B's (paired by seed where both ran the same seeds), a timing's change
    under the machine's drift margin a tie (``drift``: as ``metrics.margin``); None where either lacks samples."""
    metric = METRICS[key]
    if not (metric.samples and metric.statistic):
        return None
    ra, rb, paired = _by_seed(a, b)
    sa, sb = _samples(ra, key), _samples(rb, key)
    if sa is None or sb is None:
        return None
    m = margin(metric, device, ra + rb, drift=drift)
    return stats.compare(sa, sb, metric.statistic, relative=metric.relative, margin=m, paired_seeds=paired)


def _margin_text(used: float, runs: list[dict]) -> str:
    if math.isinf(used):
        return (
            f"; not compared: the machine's speed moved {drift_percent(runs):g} % between these runs (their "
            f"reference timings before and after training, or their GPU's clock), so their training speeds measure "
            f"the moments"
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
    best = cands[0][0]
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
        return _exact_verdict(entry, cands, metric)
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
    test = c.test if c else "no per-sample data: not compared"
    if c and c.margin:
        test += _margin_text(c.margin, best.runs + next(a for a, _ in cands if a.id == runner_id).runs)
    family.pop("p_holm")
    return {**entry, "winners": winners, "effect": effect, "test": test, "correction": family}


def _exact_verdict(entry: dict, cands: list, metric) -> dict:
    """Exact counts (parameters, bytes): the best value's experiments win; no noise, no test."""
    best_s = cands[0][1]
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
