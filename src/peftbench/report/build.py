"""Build report.md, report.html (images embedded), summary.csv and plots/ from result JSON only.

Usage:
    paths = build_report(Path("runs/demo"))     # also: peftbench report runs/demo

Results are grouped by (model, task); each group gets a table with the best value of each column
marked in bold, plots, and a verdict: the winner per measure and the Pareto-optimal set. Quality
claims are never made from random-weight models.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from collections import defaultdict
from pathlib import Path

from peftbench.report.metrics import (METRICS, PRIMARY_QUALITY, QUALITY, TABLE_COLUMNS, best, fmt, get_in,
                                      is_random, method_of, model_of, task_of, value)
from peftbench.report.plots import PARETO_AXES, pareto_sets, plot_group
from peftbench.results import load_results, write_text_atomic

METHOD_ORDER = ["none", "full", "lora", "ia3", "dora", "loha", "lokr", "vera"]
CSV_FIELDS = ["id", "status", "model", "task", "dataset", "method", "trainable", "total_params", "adapter_bytes",
              "full_model_bytes", *QUALITY, "train_seconds", "train_tokens_per_second", "train_peak_memory_bytes",
              "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "merged_p50_ms", "unmerged_overhead_percent",
              "max_abs_logit_diff", "throughput", "inference_peak_memory_bytes", "device", "error"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _sort_key(r: dict) -> tuple:
    m = method_of(r)
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), r.get("id", ""))


def groups(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        if r.get("status") == "success":
            out[(model_of(r), task_of(r))].append(r)
    return {k: sorted(v, key=_sort_key) for k, v in sorted(out.items())}


# ---------------------------------------------------------------- tables

def group_columns(results: list[dict], task: str) -> list[str]:
    cols = []
    for c in TABLE_COLUMNS:
        if c == "QUALITY":
            cols += [k for k in QUALITY if any(value(r, k) is not None for r in results)] or (
                [PRIMARY_QUALITY[task]] if task in PRIMARY_QUALITY else [])
        elif any(value(r, c) is not None for r in results):
            cols.append(c)
    return cols


def group_table(results: list[dict], task: str) -> tuple[list[str], list[list[str]]]:
    cols = group_columns(results, task)
    winners = {c: {r["id"] for r in best(results, c)[1]} for c in cols}
    header = ["method"] + [METRICS[c].label for c in cols]
    rows = []
    for r in results:
        cells = [method_of(r)]
        for c in cols:
            v = value(r, c)
            text = fmt(c, v)
            if v is not None and r["id"] in winners[c] and len(results) > 1:
                text = f"**{text}**"
            cells.append(text)
        rows.append(cells)
    return header, rows


def _names(rs: list[dict]) -> str:
    return ", ".join(method_of(r) for r in rs)


def noise_percent(r: dict) -> float:
    """Twice the larger relative stdev (%) of the unmerged and merged latency samples."""
    inf = r.get("inference") or {}
    cvs = []
    for lat in (inf.get("latency_ms"), (inf.get("merged") or {}).get("latency_ms")):
        if lat and lat.get("mean_ms"):
            cvs.append(100 * lat["stdev_ms"] / lat["mean_ms"])
    return 2 * max(cvs, default=0.0)


def verdict(results: list[dict], task: str) -> list[str]:
    lines = []
    random_weights = all(is_random(r) for r in results)
    q = PRIMARY_QUALITY.get(task)
    if random_weights:
        lines.append("Quality: not compared: the model has random weights (`random:`), so only the efficiency "
                     "numbers below are meaningful.")
    elif q:
        v, rs = best(results, q)
        if rs and len(rs) == len(results) > 1:
            lines.append(f"Quality ({QUALITY[q]}): every method ties at {fmt(q, v)}: no method wins on quality here.")
        elif rs:
            lines.append(f"Best quality ({QUALITY[q]}): {_names(rs)} with {fmt(q, v)}.")
    for key, what in (("adapter_bytes", "Smallest storage to ship"), ("trainable", "Fewest trainable parameters"),
                      ("train_tokens_per_second", "Fastest training"),
                      ("train_peak_memory_bytes", "Lowest training memory"),
                      ("deploy_p50_ms", "Lowest deployed latency (merged where possible)"),
                      ("throughput", "Highest generation throughput")):
        v, rs = best(results, key)
        if rs:
            lines.append(f"{what}: {_names(rs)} ({fmt(key, v)}).")
    overheads = [(method_of(r), value(r, "unmerged_overhead_percent"), noise_percent(r)) for r in results]
    overheads = [(m, o, n) for m, o, n in overheads if o is not None]
    if overheads:
        lines.append("Unmerged adapters cost " + ", ".join(
            f"{m} {o:+.1f} %" + (" (within noise)" if abs(o) < n else "") for m, o, n in overheads)
            + " latency over their merged form (p50; 'within noise': smaller than twice the relative stdev).")
    ref = next((value(r, "latency_p50_ms") for r in results if method_of(r) == "none"), None)
    if ref:
        parts = []
        for r in results:
            m, un, mg = method_of(r), value(r, "latency_p50_ms"), value(r, "merged_p50_ms")
            if m == "none" or un is None:
                continue
            parts.append(f"{m} {100 * (un / ref - 1):+.1f} %" + (f" unmerged, {100 * (mg / ref - 1):+.1f} % merged" if mg else ""))
        if parts:
            lines.append("Latency against the zero-shot base model (p50): " + ", ".join(parts) + ".")
    if not random_weights and q:
        labels = {r["id"]: method_of(r) for r in results}
        fronts = pareto_sets(results, task)
        for key, name, _ in PARETO_AXES:
            front = fronts.get(key)
            if front:
                lines.append(f"Pareto-optimal for {QUALITY[q]} vs {name.split(' (')[0]}: "
                             f"{', '.join(labels[i] for i in front)}.")
    return lines


# ---------------------------------------------------------------- documents

def _blocks(out_dir: Path, results: list[dict]) -> list[tuple]:
    blocks: list[tuple] = [("h1", f"peftbench report: {out_dir.name}")]
    ok = [r for r in results if r.get("status") == "success"]
    bad = [r for r in results if r.get("status") != "success"]
    envs = {(r.get("env") or {}).get("gpu") or f"CPU ({(r.get('env') or {}).get('cpu_count')} cores)" for r in ok}
    blocks.append(("p", f"{len(ok)} experiments succeeded, {len(bad)} failed or cancelled. Hardware: "
                        f"{', '.join(sorted(str(e) for e in envs)) or 'n/a'}. Bold marks the best value of each "
                        f"column; storage, trainable parameters and training numbers exclude the zero-shot "
                        f"baseline (nothing is trained or shipped). Latency is the forward pass; 'merged' is the same "
                        f"model after merging the adapter into the base weights."))
    plots_dir = out_dir / "plots"
    for (model, task), rs in groups(results).items():
        title = f"{model} · {task}"
        blocks.append(("h2", title))
        data = (rs[0].get("config") or {}).get("data", {})
        shapes = next(((r.get("inference") or {}).get("shapes") for r in rs if r.get("inference")), None)
        desc = f"Dataset `{data.get('spec')}`; {rs[0].get('data', {}).get('train_examples')} training examples."
        if shapes:
            desc += (f" Inference shapes: batch {shapes['batch_size']}, {shapes['seq_len']} input tokens, "
                     f"{shapes['new_tokens']} new tokens.")
        trained = [r for r in rs if method_of(r) != "none"]
        if trained:
            t = (trained[0].get("config") or {}).get("train", {})
            lrs = ", ".join(f"{method_of(r)} {(r.get('config') or {}).get('train', {}).get('learning_rate')}" for r in trained)
            desc += (f" Training: {t.get('max_steps')} steps of batch {t.get('batch_size')}"
                     f" × {t.get('gradient_accumulation_steps')} accumulation; learning rates {lrs}.")
        test_n = rs[0].get("data", {}).get("test_examples")
        if any(is_random(r) for r in rs):
            desc += " Random weights: quality is not meaningful and is not reported."
        elif test_n:
            desc += f" Quality on {test_n} test examples."
        blocks.append(("p", desc))
        header, rows = group_table(rs, task)
        blocks.append(("table", header, rows))
        blocks.append(("h3", "Verdict"))
        blocks.append(("ul", verdict(rs, task)))
        for name, path in plot_group(rs, folder=plots_dir, slug=_slug(f"{model}--{task}"), title=title, task=task).items():
            blocks.append(("img", name, path))
    if bad:
        blocks.append(("h2", "Failed or cancelled"))
        blocks.append(("table", ["id", "status", "error"],
                       [[r.get("id", "?"), r.get("status", "?"), str(r.get("error", ""))[:300]] for r in bad]))
    return blocks


def _md(blocks: list[tuple], out_dir: Path) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1] + "\n")
        elif kind == "p":
            out.append(b[1] + "\n")
        elif kind == "ul":
            out.append("\n".join(f"- {line}" for line in b[1]) + "\n")
        elif kind == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
            out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "img":
            out.append(f"![{b[1]}]({b[2].relative_to(out_dir).as_posix()})\n")
    return "\n".join(out)


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _html(blocks: list[tuple]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>peftbench report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}",
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}"
             "img{max-width:100%;display:block;margin:1em 0}code{background:#f4f4f4;padding:0 3px}",
             "</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            parts.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b[1]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in b[2]]
            parts.append("</table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[2]).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(b[1])}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _csv_row(r: dict) -> dict:
    row = {"id": r.get("id"), "status": r.get("status"), "model": model_of(r), "task": task_of(r),
           "dataset": get_in(r, "config", "data", "spec"), "method": method_of(r),
           "total_params": get_in(r, "params", "total"),
           "full_model_bytes": get_in(r, "storage", "full_model_bytes"),
           "train_seconds": get_in(r, "train", "seconds"),
           "latency_p99_ms": get_in(r, "inference", "latency_ms", "p99_ms"),
           "max_abs_logit_diff": get_in(r, "inference", "merged", "max_abs_logit_diff"),
           "device": get_in(r, "env", "gpu") or get_in(r, "env", "device"), "error": r.get("error")}
    for key in CSV_FIELDS:
        if key in METRICS and key not in row:
            row[key] = value(r, key) if r.get("status") == "success" else None
    return row


def build_report(out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    blocks = _blocks(out_dir, results)
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html", "csv": out_dir / "summary.csv"}
    write_text_atomic(paths["md"], _md(blocks, out_dir))
    write_text_atomic(paths["html"], _html(blocks))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in results:
        w.writerow(_csv_row(r))
    write_text_atomic(paths["csv"], buf.getvalue())
    return paths
