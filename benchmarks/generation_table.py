"""Eager against optimised generation from a results folder (benchmarks/generation.yaml's runs, or any
suite measured with ``measure.optimized``): one row per run, batch size and merged/unmerged.

    python benchmarks/generation_table.py /tmp/gen/results --out benchmarks/results/generation_h200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from peftbench import stats  # noqa: E402


def speedup(eager: dict, opt: dict) -> tuple[float, float, float] | None:
    """Eager median latency / optimised median latency, with a bootstrap 95 % interval over the
    timed iterations of each side."""
    a, b = eager.get("latency_ms") or {}, opt.get("latency_ms") or {}
    if not a.get("samples_ms") or not b.get("samples_ms"):
        return None
    c = stats.compare([stats.samples_of(a["samples_ms"])], [stats.samples_of(b["samples_ms"])], "median", relative=True)
    return tuple(round(1 + x / 100, 3) for x in (c.effect, c.low, c.high))


def rows_of(result: dict) -> list[dict]:
    inf = result.get("inference") or {}
    out = []
    for label, part in (("unmerged", inf), ("merged", inf.get("merged") or {})):
        scen = part.get("scenarios") or {}
        for key, eager in sorted(scen.items()):
            if not key.startswith("generate_b") or key.endswith("_optimized"):
                continue
            opt = scen.get(f"{key}_optimized") or {}
            out.append(
                {
                    "id": result["id"],
                    "model": result["config"]["model"]["spec"],
                    "method": result["config"]["method"]["name"],
                    "weights": label if result["config"]["method"]["name"] not in ("none", "full") else "-",
                    "batch": eager["batch_size"],
                    "new_tokens": eager["new_tokens"],
                    "eager_tokens_per_second": eager["tokens_per_second"],
                    "eager_ms_per_token": eager["time_per_output_token_ms"],
                    "optimized_tokens_per_second": opt.get("tokens_per_second"),
                    "speedup_mean_rate": opt.get("speedup_vs_eager"),
                    "speedup": speedup(eager, opt),
                    "optimized": ("static cache" + (" + compile" if opt.get("compiled") else "")) if opt else None,
                    "error": opt.get("error"),
                }
            )
    return out


def markdown(rows: list[dict], preamble: str = "") -> str:
    lines = [
        "# Generation: eager against optimised",
        "",
        preamble,
        "",
        "Speed-up: eager median latency / optimised median latency of the whole generation, with a "
        "bootstrap interval over each side's timed iterations.",
        "",
        "| model | method | weights | batch | eager tok/s | eager ms/token | optimised tok/s "
        "| speed-up (95 % CI) | path |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        opt = f"{r['optimized_tokens_per_second']:,.0f}" if r["optimized_tokens_per_second"] else "-"
        path = r["optimized"] or (f"failed: {r['error']}" if r["error"] else "off")
        ratio = f"{r['speedup'][0]:.2f}x ({r['speedup'][1]:.2f}-{r['speedup'][2]:.2f})" if r["speedup"] else "-"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['weights']} | {r['batch']} | {r['eager_tokens_per_second']:,.0f} | "
            f"{r['eager_ms_per_token']:.2f} | {opt} | {ratio} | {path} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preamble", default="")
    a = ap.parse_args()
    results = [json.loads(p.read_text()) for p in sorted(a.results.glob("*.json"))]
    rows = [row for r in results if r.get("status") == "success" for row in rows_of(r)]
    env = next((r.get("env") for r in results if r.get("env")), {})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(markdown(rows, a.preamble))
    print(markdown(rows, a.preamble))


if __name__ == "__main__":
    main()
