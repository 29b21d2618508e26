"""The report's tuning section: each searched method's tuned result beside its default, the values chosen,
the tuning cost, and whether the group's methods were tuned at an equal budget.

Usage:
    blocks(aggs, label)          # report blocks (h3, table, p) for one (model, task) group
    budget(aggs)                 # verdict.json's tuning_budget: {equal, trials, untuned}
"""

from __future__ import annotations

from peftbench.catalog.methodspecs import is_zero_shot
from peftbench.report.aggregate import Agg


def shown(params: dict | None) -> str:
    """A trial's values as `name=value` (the section dropped), or a dash."""
    if not params:
        return "–"
    return ", ".join(
        f"{k.partition('.')[2]}={v:.3g}" if isinstance(v, float) else f"{k.partition('.')[2]}={v}"
        for k, v in params.items()
    )


def _num(v) -> str:
    return "–" if v is None else f"{v:.4g}"


def budget(aggs: list[Agg]) -> dict | None:
    """Whether the group's methods were tuned at an equal budget: trials per searched experiment, and the
    trained experiments that were not searched at all."""
    searched = {a.id: (a.search or {}).get("trials") for a in aggs if a.search is not None}
    if not searched:
        return None
    untuned = [a.id for a in aggs if a.search is None and not is_zero_shot(a.method)]
    return {"equal": len(set(searched.values())) == 1 and not untuned, "trials": searched, "untuned": untuned}


def _gain(g: dict | None) -> str:
    if g is None or g.get("low") is None:
        return "–"
    if g["test"] == "the default was selected":
        return "0 (the default was selected)"
    text = f"{g['estimate']:+.2f} {g['unit']} ({g['low']:+.2f} to {g['high']:+.2f})".replace("  ", " ")
    return text + ("" if g["significant"] else ", inside the noise")


def _summary_row(a: Agg, name: str) -> list[str]:
    s = a.search
    d, c = s["default"], s["selected"]
    return [
        name,
        f"{s['done']} of {s['trials']}"
        + (f", {s['pruned']} pruned" if s.get("pruned") else "")
        + (f", {s['failed']} failed" if s["failed"] else ""),
        f"{s['train_seconds']:.1f}",
        shown(d["params"]) if d else "–",
        f"{_num(d['validation'])} / {_num(d['test'])}" if d else "–",
        shown(c["params"]),
        f"{_num(c['validation'])} / {_num(c['test'])}",
        _gain(s["gain"]),
    ]


def _trial_rows(a: Agg, name: str) -> list[list[str]]:
    return [
        [
            name,
            str(row["trial"]) + (" (default)" if row["default"] else ""),
            shown(row["params"]),
            _num(row["validation"]),
            _num(row["test"]),
            f"{row['train_seconds']:.1f}",
            "selected" if row["selected"] else "",
        ]
        for row in a.sweep
    ]


def blocks(aggs: list[Agg], label) -> list[tuple]:
    """Each searched method's tuned result beside its default, the chosen values and the tuning cost (a
    note where the budgets differ); then every trial. ``label(agg, aggs)`` names a method in the group."""
    searched = [a for a in aggs if a.search is not None]
    if not searched:
        return []
    crit = searched[0].selection
    head = ["method", "trials", "training s (all trials)", "default", f"default: {crit} / test", "selected"]
    head += [f"selected: {crit} / test", "test gain over the default (95 % interval)"]
    out = [
        ("h3", f"Tuning at an equal budget (Optuna {searched[0].search['sampler']}; selected on {crit}, never test)"),
        ("table", head, [_summary_row(a, label(a, aggs)) for a in searched]),
    ]
    b = budget(aggs)
    if b and not b["equal"]:
        by_id = {a.id: a for a in aggs}
        parts = [f"{label(by_id[k], aggs)} {n} trials" for k, n in b["trials"].items()]
        parts += [f"{label(by_id[k], aggs)} untuned" for k in b["untuned"]]
        out.append(
            ("p", f"Unequal tuning budgets ({', '.join(parts)}): the comparison favours the methods tuned more.")
        )
    trials = [row for a in searched for row in _trial_rows(a, label(a, aggs))]
    out.append(("h3", "Every trial"))
    out.append(("table", ["method", "trial", "values", crit, "test (not used to select)", "training s", ""], trials))
    return out
