"""The methods suite's table from its results folder: one row per run of experiments/methods.yaml.

    peftbench run experiments/methods.yaml --device cuda --out runs/methods
    python benchmarks/methods_table.py runs/methods/results --out benchmarks/results/methods_h200.md

Per run: status (and why not, for a failure), trainable parameters, adapter bytes, steady training
tokens/s, peak training memory, the batches it trained on (padded, packed or grouped by length: rates
compare within one kind), p50 forward latency unmerged and merged (where the method merges).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _mb(x):
    return f"{x / 1e6:,.2f}" if x else ""


def batching(r: dict) -> str:
    speed = ((r.get("resolved") or {}).get("speed")) or {}
    if not speed:
        return ""
    return "packed" if speed.get("packing") else "grouped" if speed.get("group_by_length") else "padded"


def row(r: dict) -> str:
    cfg, train = r.get("config") or {}, r.get("train") or {}
    inf = r.get("inference") or {}
    merged = (inf.get("merged") or {}).get("latency_ms", {}).get("p50_ms")
    unmerged = (inf.get("latency_ms") or {}).get("p50_ms")
    rate = train.get("steady_tokens_per_second") or train.get("tokens_per_second")
    peak = train.get("peak_memory_bytes")
    status = r["status"] if r["status"] == "success" else f"{r['status']}: {(r.get('error') or '')[:90]}"
    note = "" if merged or r["status"] != "success" else (inf.get("merge_note") or "")
    name = cfg.get("method", {}).get("name", r["id"])
    quant = (cfg.get("model") or {}).get("quantization")
    if quant and name != "qlora":  # qlora names its NF4 base; another method on a quantised base says so
        name = f"{name} ({quant} base)"
    return (
        f"| {name} | {status} | "
        f"{(r.get('params') or {}).get('trainable', '') if r['status'] == 'success' else ''} | "
        f"{_mb((r.get('storage') or {}).get('adapter_bytes'))} | {f'{rate:,.0f}' if rate else ''} | "
        f"{f'{peak / 2**30:.1f}' if peak else ''} | {batching(r)} | {f'{unmerged:.2f}' if unmerged else ''} | "
        f"{f'{merged:.2f}' if merged else note[:60]} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="the suite's results folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="Methods suite")
    ap.add_argument("--preamble", default="", help="text under the title (how and where it ran)")
    a = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in sorted(Path(a.results).glob("*.json"))]
    lines = [f"# {a.title}", "", a.preamble, ""] if a.preamble else [f"# {a.title}", ""]
    for model in sorted({r["config"]["model"]["spec"] for r in runs}):
        group = [r for r in runs if r["config"]["model"]["spec"] == model]
        task = group[0]["config"]["data"]["task"]
        ok = sum(r["status"] == "success" for r in group)
        lines += [
            f"## {model} · {task} ({ok} of {len(group)} ran)",
            "",
            "| method | status | trainable | adapter MB | train tok/s | train peak GiB | batches | p50 ms | "
            "merged p50 ms (or why not) |",
            "|---|---|---:|---:|---:|---:|---|---:|---|",
        ]
        lines += [row(r) for r in group]
        lines.append("")
    Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
