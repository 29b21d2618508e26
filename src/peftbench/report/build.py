"""Build report.md, report.html (images embedded), summary.csv, verdict.json and plots/ from result JSON only.

Usage:
    paths = build_report(Path("runs/demo"))     # also: peftbench report runs/demo

Runs are aggregated per experiment id (seeds; a learning-rate sweep resolved on validation) and
grouped by (model, task). Each group gets a table of means with 95 % intervals (the winners of a
column in bold: more than one bold cell is a tie), a verdict per measure that names one winner
only when the difference is significant, plots with error bars, and Pareto fronts. Quality claims
are never made from random-weight models.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from peftbench.catalog.methodspecs import CURATED, is_zero_shot
from peftbench.report import deploy, stages, tuning
from peftbench.report.aggregate import (
    Agg,
    against_base,
    aggregate,
    label,
    learning_forgetting,
    summarize,
    unmerged_overhead,
    verdicts,
)
from peftbench.report.cards import write_cards
from peftbench.report.metrics import (
    METRICS,
    PARETO_AXES,
    PRIMARY_QUALITY,
    QUALITY,
    TABLE_COLUMNS,
    fmt,
    get_in,
    is_random,
)
from peftbench.report.plots import pareto_sets, plot_group
from peftbench.report.render import html_page, markdown
from peftbench.report.scaling import scaling_blocks
from peftbench.report.summary import csv_fields, csv_rows
from peftbench.results import load_results, to_json, write_text_atomic

METHOD_ORDER = list(CURATED)  # baseline first, then the curated methods in the registry's order
VERDICT_SCHEMA = "peftbench.verdict/1"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _order(a: Agg) -> tuple:
    m = a.method
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), a.id)


def groups(aggs: list[Agg]) -> dict[tuple[str, str], list[Agg]]:
    out: dict[tuple[str, str], list[Agg]] = {}
    for a in aggs:
        out.setdefault((a.model, a.task), []).append(a)
    return {k: sorted(v, key=_order) for k, v in sorted(out.items())}


# ---------------------------------------------------------------- tables


def cell(key: str, s: dict | None) -> str:
    if s is None:
        return "–"
    text = fmt(key, s["mean"])
    if s.get("low") is not None and s.get("high") is not None and s["how"] != "exact":
        text += f" ({fmt(key, s['low'])}–{fmt(key, s['high'])})"
    return text


def group_columns(aggs: list[Agg], task: str) -> list[str]:
    cols = []
    for c in TABLE_COLUMNS:
        if c == "QUALITY":
            cols += [k for k in QUALITY if any(summarize(a, k) for a in aggs)]
        elif any(summarize(a, c) for a in aggs):
            cols.append(c)
    return cols


def group_table(aggs: list[Agg], task: str, verdict_list: list[dict]) -> tuple[list[str], list[list[str]]]:
    cols = group_columns(aggs, task)
    winners = {v["measure"]: set(v["winners"]) for v in verdict_list}
    header = ["method"] + [METRICS[c].label for c in cols]
    rows = []
    for a in aggs:
        cells = [label(a, aggs)]
        for c in cols:
            s = summarize(a, c)
            text = cell(c, s)
            if s is not None and a.id in winners.get(c, ()) and len(aggs) > 1:
                text = f"**{text}**"
            cells.append(text)
        rows.append(cells)
    return header, rows


# ---------------------------------------------------------------- verdict lines


def _fixed(v: float) -> str:
    """Two decimals, or three significant digits below 1 (forgetting is thousandths of a nat per token)."""
    return f"{v:.2f}" if v == 0 or abs(v) >= 0.995 else f"{v:.3g}"


def _effect_text(v: dict, labels: dict[str, str]) -> str:
    e = v.get("effect")
    if not e:
        return ""
    other = labels[e["versus"]]
    if e.get("low") is None:  # exact counts
        return f"; next: {other} with {fmt(v['measure'], v['values'][e['versus']]['mean'])}"
    if e["unit"] == "%":
        amount = f"{e['estimate']:.1f} %"
        interval = f"95 % interval {e['low']:.1f} to {e['high']:.1f} %"
    else:
        amount = f"{_fixed(e['estimate'])} {e['unit']}".rstrip()
        interval = f"95 % interval {_fixed(e['low'])} to {_fixed(e['high'])}"
    if e["low"] == e["high"] == e["estimate"] == 0 and "interleaved rounds" in v.get("test", ""):
        interval = "bit-identical models, timed once for both"
    elif e["low"] == e["high"]:  # measured once per run: no spread to show
        interval = f"one measurement per run; gaps under {e.get('margin') or 0:g} % are ties"
    higher = v["better"] == "higher"
    if e["unit"] == "%":  # effect: best / other - 1 (higher is better), other / best - 1 (lower is better)
        gap = f"{amount} higher than {other}" if higher else f"{other} is {amount} higher"
    else:
        gap = f"{amount} {'above' if higher else 'below'} {other}"
    if e.get("significant"):
        return f"; {gap} ({interval})"
    family = (v.get("correction") or {}).get("family_size") or 0
    outside = e["low"] > 0 or e["high"] < 0
    if (
        outside
        and family > 1
        and (e.get("p_holm") or 0) >= v["correction"]["alpha"]
        and abs(e["estimate"]) >= (e.get("margin") or 0)
    ):
        return f"; {gap} ({interval}): not significant once the group's {family} comparisons are corrected (Holm)"
    return f"; {gap} ({interval}): inside the noise"


def verdict_lines(aggs: list[Agg], task: str, verdict_list: list[dict]) -> list[str]:
    labels = {a.id: label(a, aggs) for a in aggs}
    lines = []
    if all(is_random(a.runs[0]) for a in aggs):
        lines.append(
            "Quality: not compared: the model has random weights (`random:`), so only the efficiency "
            "numbers below are meaningful."
        )
    for v in verdict_list:
        if len(v["values"]) < 2:  # nothing to compare against
            continue
        names = ", ".join(labels[w] for w in v["winners"])
        best = v["values"][v["winners"][0]]
        value_text = fmt(v["measure"], best["mean"]) + (f" {v['unit']}" if v["unit"] in ("ms", "tokens/s") else "")
        if len(v["winners"]) == len(v["values"]) > 1:
            lines.append(
                f"{v['label']}: a tie between all ({names}): no difference beyond the noise{_effect_text(v, labels)}."
            )
        elif len(v["winners"]) > 1:
            lines.append(
                f"{v['label']} ({v['better']} is better): a tie between {names} ({value_text} best)"
                f"{_effect_text(v, labels)}."
            )
        else:
            lines.append(
                f"{v['label']} ({v['better']} is better): **{names}** with {value_text}{_effect_text(v, labels)}."
            )
    base = against_base(aggs)
    if base:
        parts = []
        for row in base:
            bits = [
                f"{k} {row[k]['percent']:+.1f} % ({row[k]['low']:+.1f} to {row[k]['high']:+.1f})"
                + ("" if row[k]["significant"] else ", a tie")
                for k in ("unmerged", "merged")
                if k in row
            ]
            parts.append(f"{labels[row['id']]}: " + "; ".join(bits))
        lines.append("Latency against the zero-shot base model (p50, 95 % intervals): " + " · ".join(parts) + ".")
    over = unmerged_overhead(aggs)
    if over:
        lines.append(
            "Unmerged adapters against their merged form (p50 latency): "
            + ", ".join(
                f"{labels[o['id']]} {o['percent']:+.1f} % ({o['low']:+.1f} to {o['high']:+.1f})"
                + ("" if o["significant"] else ", a tie")
                for o in over
            )
            + "."
        )
    q = PRIMARY_QUALITY.get(task)
    if q and not all(is_random(a.runs[0]) for a in aggs):
        fronts = pareto_sets(aggs, task)
        for key, name, _ in PARETO_AXES:
            if fronts.get(key):
                lines.append(
                    f"Pareto-optimal for {QUALITY[q]} vs {name.split(' (')[0]} (on means): "
                    f"{', '.join(labels[i] for i in fronts[key])}."
                )
    return lines


# ---------------------------------------------------------------- documents


def _chat_sentence(aggs: list[Agg]) -> str:
    """What ``model.chat_template`` decided, said where it changes the prompts (wrapping a base model's prompts
    in its folder's template moves zero-shot quality and how labels split into tokens)."""
    used = {bool(get_in(r, "resolved", "chat_template")) for a in aggs for r in a.runs if get_in(r, "resolved")}
    setting = get_in(aggs[0].runs[0], "config", "model", "chat_template") or "auto"
    if used == {True}:
        return (
            f" Prompts wrapped in the tokenizer's chat template (model.chat_template: {setting}); "
            "model.chat_template: off scores the plain prompts."
        )
    if used == {True, False}:
        return " Some runs wrapped their prompts in the chat template and some did not (see resolved.chat_template)."
    return ""


def _describe(aggs: list[Agg], task: str) -> str:
    first = aggs[0].runs[0]
    data = get_in(first, "config", "data") or {}
    desc = f"Dataset `{data.get('spec')}`."
    shapes = next((get_in(r, "inference", "shapes") for a in aggs for r in a.runs if get_in(r, "inference")), None)
    if shapes:
        desc += (
            f" Inference shapes: batch {shapes['batch_size']}, {shapes['seq_len']} input tokens, "
            f"{shapes['new_tokens']} new tokens."
        )
    trained = [a for a in aggs if not is_zero_shot(a.method)]
    if trained:
        t = get_in(trained[0].runs[0], "config", "train") or {}
        seen = get_in(trained[0].runs[0], "train", "examples_seen")
        lrs = ", ".join(
            f"{label(a, aggs)} {a.selected_lr:g}" + (" (selected)" if a.sweep else "")
            for a in trained
            if a.selected_lr is not None
        )
        desc += (
            f" Training: {t.get('max_steps')} steps of batch {t.get('batch_size')} × "
            f"{t.get('gradient_accumulation_steps')} accumulation"
            + (f" ({seen:,} examples seen)" if seen else "")
            + f"; learning rates {lrs}."
        )
    seeds = sorted({len(a.runs) for a in aggs})
    desc += f" Seeds per experiment: {', '.join(map(str, seeds))}."
    desc += _chat_sentence(aggs)
    left = sum(a.left_out for a in aggs)
    if left:
        desc += f" {left} older run{'s' * (left != 1)} of another configuration left out."
    test_n = get_in(first, "data", "test_examples")
    if any(is_random(a.runs[0]) for a in aggs):
        desc += " Random weights: quality is not meaningful and is not reported."
    elif test_n:
        desc += f" Quality on {test_n} test examples."
        base = get_in(first, "quality_baselines")
        if base:
            desc += (
                f" Baselines: always '{base['majority_class']}' (the majority class) scores "
                f"{base['majority_accuracy']:.1f} % accuracy; chance is {base['chance_accuracy']:.1f} %."
            )
    return desc


def _sweep_block(aggs: list[Agg]) -> tuple | None:
    rows = []
    for a in aggs:
        if a.search is not None:  # a search has its own tables
            continue
        for row in a.sweep:
            rows.append(
                [
                    label(a, aggs),
                    f"{row['learning_rate']:g}",
                    str(row["n"]),
                    "–" if row["validation"] is None else f"{row['validation']:.4g}",
                    "–" if row["test"] is None else f"{row['test']:.4g}",
                    "selected" if row["selected"] else "",
                ]
            )
    if not rows:
        return None
    crit = next(a.selection for a in aggs if a.sweep and a.search is None)
    return ("table", ["method", "learning rate", "seeds", crit, "test (not used to select)", ""], rows)


def _group(model: str, task: str, gaggs: list[Agg], plots_dir: Path) -> tuple[list[tuple], dict]:
    """One (model, task) group: its section of the report and its entry of verdict.json."""
    blocks: list[tuple] = []
    title = f"{model} · {task}"
    blocks.append(("h2", title))
    blocks.append(("p", _describe(gaggs, task)))
    vlist = verdicts(gaggs, task)
    header, rows = group_table(gaggs, task, vlist)
    blocks.append(("table", header, rows))
    blocks += [("p", line) for line in stages.notes([r for a in gaggs for r in a.runs])]
    blocks.append(("h3", "Verdict"))
    blocks.append(("ul", verdict_lines(gaggs, task, vlist)))
    sweep = _sweep_block(gaggs)
    if sweep:
        blocks.append(("h3", "Learning-rate sweep (selected on validation)"))
        blocks.append(sweep)
    blocks += tuning.blocks(gaggs, label)
    for name, path in plot_group(
        gaggs, folder=plots_dir, slug=_slug(f"{model}--{task}"), title=title, task=task
    ).items():
        blocks.append(("img", name, path))
    deployed = [t for t in deploy.targets(gaggs)]
    for target in deployed:
        blocks += _deploy_blocks(gaggs, target, task, plots_dir / f"{_slug(f'{model}--{task}')}--{target}.png", title)
    verdict_group = {
        "model": model,
        "task": task,
        "experiments": [a.id for a in gaggs],
        "random_weights": all(is_random(a.runs[0]) for a in gaggs),
        "measures": vlist,
        "latency_against_base": against_base(gaggs),
        "unmerged_overhead": unmerged_overhead(gaggs),
        "deploy": [deploy.verdict(gaggs, t, task) for t in deployed],
        "learning_forgetting": learning_forgetting(gaggs, task),
        "tuning": {a.id: a.search for a in gaggs if a.search is not None} or None,
        "tuning_budget": tuning.budget(gaggs),
        "learning_rates": {
            a.id: {"selected": a.selected_lr, "selected_by": a.selection, "sweep": a.sweep} for a in gaggs
        },
    }
    return blocks, verdict_group


def _deploy_blocks(gaggs: list[Agg], target: str, task: str, plot_path: Path, title: str) -> list[tuple]:
    """A target's table (winners bold), what its quality change says, and its plot."""
    from peftbench.deploy.targets import TARGETS

    t = TARGETS[target]
    out: list[tuple] = [("h3", f"Deployed: {target} ({t.runtime}, {t.weights})")]
    threads = {e.get("threads") for a in gaggs for e in deploy._entries(a, target) if e.get("threads")}
    out.append(
        (
            "p",
            f"{t.description}. Timed in the stage's rounds beside the PyTorch candidates"
            + (f", {'/'.join(map(str, sorted(threads)))} CPU threads" if threads else "")
            + "; quality re-scored on the same test examples, its change against the run's PyTorch result "
            "with a paired 95 % interval"
            + (
                ". Generation on ONNX Runtime re-runs the sequence per token (no KV cache)."
                if "ONNX" in t.runtime
                else "."
            ),
        )
    )
    header, rows = deploy.table(gaggs, target, task)
    out.append(("table", header, rows))
    drops = []
    for a in gaggs:
        c = deploy.cells(a, target, task)["quality_change"]
        if c is not None and c.get("low") is not None:
            sig = "a significant change" if c["low"] > 0 or c["high"] < 0 else "no significant change"
            drops.append(f"{a.id}: {c['mean']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}] ({sig})")
    if drops:
        out.append(("p", f"What {target} does to {PRIMARY_QUALITY[task]}: " + "; ".join(drops) + "."))
    path = deploy.plot(gaggs, target, task, plot_path, f"{title} · {target}")
    if path is not None:
        out.append(("img", f"deploy {target}", path))
    return out


def phase_totals(results: list[dict]) -> dict | None:
    """Every run's ``phases`` summed over the suite: seconds (and joules) per phase, and the process wall time
    no phase holds (interpreter start, imports, writing the result)."""
    with_phases = [r["phases"] for r in results if isinstance(r.get("phases"), dict)]
    if not with_phases:
        return None
    seconds: dict[str, float] = {}
    joules: dict[str, float] = {}
    for p in with_phases:
        for k, v in (p.get("seconds") or {}).items():
            seconds[k] = seconds.get(k, 0.0) + v
        for k, v in (p.get("joules") or {}).items():
            joules[k] = joules.get(k, 0.0) + v
        if p.get("outside_phases_seconds") is not None:
            seconds["outside the phases"] = seconds.get("outside the phases", 0.0) + p["outside_phases_seconds"]
    return {"runs": len(with_phases), "seconds": seconds, "joules": joules or None}


def phase_blocks(results: list[dict]) -> list[tuple]:
    totals = phase_totals(results)
    if totals is None:
        return []
    whole = sum(totals["seconds"].values()) or 1.0
    rows = [
        [
            name,
            f"{s:.1f}",
            f"{100 * s / whole:.1f} %",
            "–" if not totals["joules"] or name not in totals["joules"] else f"{totals['joules'][name]:,.0f}",
        ]
        for name, s in sorted(totals["seconds"].items(), key=lambda kv: -kv[1])
    ]
    return [
        ("h2", "Where the time went"),
        (
            "p",
            f"Each run's phases summed over its {totals['runs']} runs (seconds of wall time; joules from NVML's "
            f"energy counter on GPUs that have one). 'plan' is each run's share of reading and checking the suite, "
            f"'startup' its process's interpreter and imports, 'outside the phases' what its process spent beyond.",
        ),
        ("table", ["phase", "seconds", "share", "joules"], rows),
    ]


def _blocks(out_dir: Path, results: list[dict], aggs: list[Agg]) -> tuple[list[tuple], list[dict]]:
    blocks: list[tuple] = [("h1", f"peftbench report: {out_dir.name}")]
    ok = [r for r in results if r.get("status") == "success"]
    bad = [r for r in results if r.get("status") != "success"]
    envs = {get_in(r, "env", "gpu") or f"CPU ({get_in(r, 'env', 'cpu_count')} cores)" for r in ok}
    n_skip = sum(r.get("status") == "skipped" for r in bad)
    n_pruned = sum(r.get("status") == "pruned" for r in bad)
    n_ok, n_bad = len(ok), len(bad) - n_skip - n_pruned
    skipped = f", {n_skip} skipped (cannot run on this machine)" if n_skip else ""
    skipped += f", {n_pruned} search trials pruned (below the earlier trials' median)" if n_pruned else ""
    blocks.append(
        (
            "p",
            f"{n_ok} run{'s' * (n_ok != 1)} succeeded, {n_bad} failed or cancelled{skipped}. Hardware: "
            f"{', '.join(sorted(str(e) for e in envs)) or 'n/a'}. Cells are means with 95 % intervals "
            f"(Student's t over seeds, or a bootstrap over test examples / timed calls for one seed). "
            f"Bold marks the winners of a column: one bold cell is a significant win, several are a "
            f"tie; a win holds for the group: each measure's comparisons with its best are corrected together "
            f"(Holm-Bonferroni, family-wise 5 %). Storage, trainable parameters and training numbers exclude "
            f"the zero-shot baseline. Storage counts every file the adapter folder holds (its config included); "
            f"peft counts the weights file alone, which summary.csv gives as adapter_weights_bytes. "
            f"Latency is the forward pass; 'merged' is the model after merging the adapter.",
        )
    )
    plots_dir = out_dir / "plots"
    verdict_groups = []
    for (model, task), gaggs in groups(aggs).items():
        group_blocks, verdict_group = _group(model, task, gaggs, plots_dir)
        blocks += group_blocks
        verdict_groups.append(verdict_group)
    blocks += scaling_blocks(results, plots_dir)
    blocks += phase_blocks(results)
    if bad:
        blocks.append(("h2", "Failed, cancelled, skipped or pruned"))
        blocks.append(
            (
                "table",
                ["run", "status", "error"],
                [[r.get("run_id", "?"), r.get("status", "?"), str(r.get("error", ""))[:300]] for r in bad],
            )
        )
    attempts = load_results(out_dir / "attempts") if (out_dir / "attempts").is_dir() else []
    if attempts:  # a rerun that did not succeed: its run's last success is what the tables above report
        blocks.append(("h2", "Later attempts that did not succeed (the last success is reported)"))
        blocks.append(
            (
                "table",
                ["run", "attempt", "finished", "error"],
                [[a["run_id"], a["status"], a.get("finished_at") or "", str(a.get("error"))[:300]] for a in attempts],
            )
        )
    return blocks, verdict_groups


def build_report(out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    results = stages.attach(load_results(out_dir), out_dir)
    aggs = aggregate(results)
    blocks, verdict_groups = _blocks(out_dir, results, aggs)
    paths = {
        "md": out_dir / "report.md",
        "html": out_dir / "report.html",
        "csv": out_dir / "summary.csv",
        "verdict": out_dir / "verdict.json",
    }
    write_text_atomic(paths["md"], markdown(blocks, out_dir))
    write_text_atomic(paths["html"], html_page(blocks))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=csv_fields(aggs))
    w.writeheader()
    for row in csv_rows(results, aggs):
        w.writerow(row)
    write_text_atomic(paths["csv"], buf.getvalue())
    verdict = {"schema": VERDICT_SCHEMA, "level": 0.95, "groups": verdict_groups, "phases": phase_totals(results)}
    write_text_atomic(paths["verdict"], to_json(verdict))
    write_cards(out_dir, results, verdict_groups)  # adapters/<run>/README.md, now that the verdict is known
    return paths
