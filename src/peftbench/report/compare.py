"""Two or more studies side by side: ``peftbench compare runs/a runs/b [...]`` — the same suite on two GPUs, or
before and after an upgrade.

Usage:
    text, data = compare_dirs([Path("runs/a"), Path("runs/b")])     # markdown, and the same as a dict

Experiments are paired across studies by id and config hash (the configuration alone: the hardware is not in
it), so a changed configuration is listed, never compared. For every measure both sides have samples of, the
later study against the first: the difference (quality, in its own unit) or the ratio (speed, memory, in
percent) with a 95 % bootstrap interval — paired over test examples where both scored the same examples
(fingerprints equal), unpaired over timed calls otherwise (two studies never share a measurement stage, so
their timings are not paired round by round). Exact counts (parameters, bytes) are compared exactly. What
changed in the environment (GPU, versions, machine) is listed first.
"""

from __future__ import annotations

from pathlib import Path

from peftbench.errors import ConfigError
from peftbench.report import stages
from peftbench.report.aggregate import aggregate, compare_samples, summarize
from peftbench.report.metrics import METRICS, drift_percent, get_in
from peftbench.results import load_results

ENV_KEYS = ("gpu", "gpu_count", "cuda", "device", "torch", "transformers", "peft", "accelerate", "python", "node")
ENV_KEYS += ("cpu_count", "platform", "peftbench", "git_commit")


def _study(d: Path) -> dict:
    if not (d / "results").is_dir():
        raise ConfigError(f"compare: {d} holds no results/ folder (is it a suite's --out?)")
    results = [r for r in stages.attach(load_results(d), d) if r.get("status") == "success"]
    if not results:
        raise ConfigError(f"compare: {d} holds no successful run")
    return {"dir": str(d), "aggs": {a.id: a for a in aggregate(results)}, "env": results[0].get("env") or {}}


def _hash(agg) -> str:
    return str(agg.runs[0].get("config_hash"))


def compare_measure(a, b, key: str) -> dict | None:
    """B against A on one measure: its means and the difference (or percent) with an interval; None without data."""
    metric = METRICS[key]
    ma, mb = summarize(a, key), summarize(b, key)
    if ma is None or mb is None:
        return None
    out = {"measure": key, "label": metric.label, "a": ma["mean"], "b": mb["mean"], "relative": metric.relative}
    if metric.kind == "exact":
        eff = (mb["mean"] - ma["mean"]) if ma["mean"] is not None and mb["mean"] is not None else None
        return {**out, "effect": eff, "low": eff, "high": eff, "test": "exact", "changed": eff not in (0, None)}
    # how far the machine moved between the two sides' timings: the inference timings' references, or training's
    drift = machine_drift(a, b) if metric.stage else drift_percent(a.runs + b.runs) if metric.across_runs else None
    c = compare_samples(b, a, key, device=a.device, drift=drift)  # a change under the machine's drift is no change
    if c is None:
        return None  # shown in each study's report, but nothing to compare with an interval
    return {
        **out,
        "effect": c.effect,
        "low": c.low,
        "high": c.high,
        "test": c.test,
        "changed": c.significant,
        "margin": c.margin,
        **({"machine_drift_percent": drift} if drift is not None else {}),
    }


def machine_drift(a, b) -> float | None:
    """How far the machine's speed moved between the two studies' inference timings of A and B, in percent (max
    over min, less one): their stages' reference workload where a stage timed every run, else the reference each
    run timed after its training, just before its own inference timings (``train.reference_ms.after``); None where
    a run has neither. Past the timing margin the studies' timings are not compared (a busy machine under one of
    them is not a slower method)."""
    runs = a.runs + b.runs
    refs = [stages.reference_ms(r.get(stages.STAGE)) for r in runs]
    if any(v is None for v in refs):
        refs = [get_in(r, "train", "reference_ms", "after") for r in runs]
    if not refs or not all(refs):
        return None
    return round(100 * (max(refs) / min(refs) - 1), 2)


def compare_dirs(dirs: list[Path]) -> tuple[str, dict]:
    if len(dirs) < 2:
        raise ConfigError("compare: name two studies or more (their --out folders)")
    studies = [_study(Path(d)) for d in dirs]
    first = studies[0]
    data = {"base": first["dir"], "against": []}
    lines = [f"# peftbench compare: {first['dir']} against {', '.join(s['dir'] for s in studies[1:])}", ""]
    for other in studies[1:]:
        block = _pair_studies(first, other)
        data["against"].append(block)
        lines += _markdown(first, other, block)
    return "\n".join(lines) + "\n", data


def _pair_studies(first: dict, other: dict) -> dict:
    env = {k: (first["env"].get(k), other["env"].get(k)) for k in ENV_KEYS}
    changed_env = {k: list(v) for k, v in env.items() if v[0] != v[1]}
    paired, unpaired = [], []
    for id_, a in first["aggs"].items():
        b = other["aggs"].get(id_)
        if b is None or _hash(a) != _hash(b):
            unpaired.append({"id": id_, "why": "absent" if b is None else "configuration changed"})
            continue
        rows = [c for key in METRICS if (c := compare_measure(a, b, key)) is not None]
        paired.append({"id": id_, "config_hash": _hash(a), "measures": rows})
    unpaired += [{"id": i, "why": "absent from the first"} for i in other["aggs"] if i not in first["aggs"]]
    return {"dir": other["dir"], "environment_changed": changed_env, "paired": paired, "unpaired": unpaired}


def _fmt(v, relative: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.1f} %" if relative else f"{v:+.4g}"


def _markdown(first: dict, other: dict, block: dict) -> list[str]:
    out = [f"## {other['dir']} against {first['dir']}", ""]
    env = block["environment_changed"]
    out.append(
        "What changed: " + "; ".join(f"{k} {a!s} → {b!s}" for k, (a, b) in env.items())
        if env
        else "What changed: nothing the results record (the same machine and versions)."
    )
    out += [
        "",
        "| experiment | measure | first | this | difference (95 % interval) | changed |",
        "|---|---|---:|---:|---|---|",
    ]
    for p in block["paired"]:
        for m in p["measures"]:
            rel = m["relative"]
            ci = f"{_fmt(m['effect'], rel)} [{_fmt(m['low'], rel)}, {_fmt(m['high'], rel)}]"
            ci = ci if m["test"] != "exact" else _fmt(m["effect"])
            mark = {True: "**yes**", False: "no (tie)", None: "–"}[m["changed"]]
            if m.get("margin") == float("inf"):
                mark = f"not compared: the machine's speed moved {m.get('machine_drift_percent', '?')} %"
            out.append(f"| {p['id']} | {m['label']} | {m['a']:.4g} | {m['b']:.4g} | {ci} | {mark} |")
    for u in block["unpaired"]:
        out.append(f"| {u['id']} | not compared: {u['why']} | | | | |")
    out.append("")
    return out
