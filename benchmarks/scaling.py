"""The scaling study: model size x method x GPU count (benchmarks/scaling.yaml), through peftbench itself.

    python benchmarks/scaling.py --gpus 1 --out benchmarks/results/scaling_h200     # one H200
    python benchmarks/scaling.py --gpus 2 --out benchmarks/results/scaling_h200     # two; rows are appended
    python benchmarks/scaling.py --gpus 1 --models tiny-gpt2,tiny-llama --device cpu --out /tmp/s   # smoke

One ``peftbench run`` per (GPU count, model), all its methods in one process (``--in-process`` on one
GPU, under ``accelerate launch`` on several), so that start-up is paid once per model; the runs'
folders (a 7B checkpoint is 30 GB) are removed once their results are read. A run that runs out of
memory is recorded as failed and marks what does not fit; larger models are still tried, since
sharding and checkpointing switch on with size. Per row: steady tokens/s, MFU (model FLOPs: 6 x
parameters per token for full fine-tuning, 4 x for adapters, whose frozen base computes no weight
gradients, against the GPU's dense bf16 peak), every GPU's peak memory, adapter bytes, p50 latency.
OUT.md gets the rows, data-parallel efficiency with 95 % intervals, the largest model that fits per
method and GPU count, and the fitted exponents; OUT_memory.png / OUT_speed.png the log-log plots.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_speed import PEAK_BF16  # noqa: E402  (the GPUs' dense bf16 peaks, one table for both benchmarks)

from peftbench import stats  # noqa: E402
from peftbench.report.scaling import fits_lines, fits_table, plot_scaling, scaling_rows  # noqa: E402


def params_of(model: str) -> int:
    from peftbench.catalog import models

    return models.count_parameters(models.build_random(model, seed=0, device="meta"))[0]


def family_of(spec: str) -> str:
    from peftbench.catalog import models

    return "seq2seq" if models.is_seq2seq_spec(spec) else "causal"


def suite_for(study: dict, model: str, methods: list[str], gpus: int) -> dict:
    n = params_of(model)
    experiments = []
    for method in methods:
        train = {}
        if n >= float(study.get("checkpointing_from_parameters", 1e30)):
            train["gradient_checkpointing"] = True
        if gpus > 1 and method == "full" and n >= float(study.get("fsdp_from_parameters", 1e30)):
            train["distributed"] = "fsdp"
        experiments.append(
            {
                "id": f"{model}--{method}--g{gpus}",
                "model": {"spec": f"random:{model}"},
                "method": {"name": method},
                "train": train,
            }
        )
    return {"name": f"scaling-{model}-g{gpus}", "defaults": study["defaults"], "experiments": experiments}


def run_group(suite: dict, *, gpus: int, work: Path, device: str, timeout: int) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{suite['name']}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    out = work / suite["name"]
    run = ["-m", "peftbench", "run", str(path), "--out", str(out), "--device", device, "--force"]
    if gpus > 1:  # one launch for the model's runs: under a launcher they run in its processes
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus), *run]
    else:
        cmd = [sys.executable, *run, "--in-process"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.time()
    try:
        subprocess.run(cmd, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"{suite['name']}: timed out after {timeout} s", flush=True)
    rows = []
    for exp in suite["experiments"]:
        f = out / "results" / f"{exp['id']}.json"
        if f.exists():
            rows.append(slim(json.loads(f.read_text()), gpus=gpus))
        else:
            rows.append(
                {
                    "id": exp["id"],
                    "status": "failed",
                    "error": "no result (the group timed out or crashed)",
                    "config": {"model": exp["model"], "method": exp["method"]},
                    "gpus": gpus,
                }
            )
    print(f"{suite['name']}: {time.time() - started:.0f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)  # checkpoints of 7B shapes are tens of GB
    return rows


def slim(r: dict, *, gpus: int) -> dict:
    """What the study keeps of a result (its laps give the tokens/s intervals)."""
    train = r.get("train") or {}
    inf = r.get("inference") or {}
    error = (str(r.get("error") or "").splitlines() or [""])[0]
    cfg = r["config"]
    return {
        "id": r.get("id"),
        "status": r.get("status"),
        "error": error,
        "config": {
            "model": {"spec": cfg["model"]["spec"]},
            "method": {"name": cfg["method"]["name"]},
            "data": cfg.get("data"),  # the workload: a series shares task, data, batch and length
            "train": {"batch_size": (cfg.get("train") or {}).get("batch_size")},
        },
        "model": {"family": (r.get("model") or {}).get("family") or family_of(cfg["model"]["spec"])},
        "params": r.get("params") or {"total": params_of(cfg["model"]["spec"].split(":", 1)[1])},
        "gpus": gpus,
        "resolved": {
            "distributed": (r.get("resolved") or {}).get("distributed"),
            "mixed_precision": (r.get("resolved") or {}).get("mixed_precision"),
        },
        "train": {
            k: train.get(k)
            for k in (
                "steady_tokens_per_second",
                "tokens_per_second",
                "peak_memory_bytes",
                "warmup_seconds",
                "seconds",
                "steps",
                "laps",
            )
        }
        | {"memory": {"per_process_peak_bytes": (train.get("memory") or {}).get("per_process_peak_bytes")}},
        "storage": {k: (r.get("storage") or {}).get(k) for k in ("adapter_bytes", "full_model_bytes")},
        "inference": {"latency_ms": {"p50_ms": (inf.get("latency_ms") or {}).get("p50_ms")}} if inf else None,
        "env": {"gpu": (r.get("env") or {}).get("gpu")},
        "traceback": (r.get("traceback") or "")[-3000:] or None,  # where an out-of-memory failure struck
    }


def mfu(row: dict) -> float | None:
    rate = row["train"].get("steady_tokens_per_second")
    gpu = (row.get("env") or {}).get("gpu") or ""
    peak = next((v for k, v in PEAK_BF16.items() if k in str(gpu)), None)
    if not rate or not peak or not row.get("params"):
        return None
    per_token = (6 if row["config"]["method"]["name"] == "full" else 4) * row["params"]["total"]
    return per_token * rate / (peak * row["gpus"])


def efficiency(one: dict, many: dict) -> tuple[float, float, float] | None:
    """tokens/s on N GPUs / (N x one GPU's), with a 95 % interval from the steady laps of both runs."""

    def samples(row, scale):
        laps = [lap for lap in row["train"].get("laps") or [] if not lap.get("warmup")]
        return stats.rate_samples([lap["tokens"] * scale for lap in laps], [lap["seconds"] for lap in laps])

    n = many["gpus"]
    a, b = samples(many, n), samples(one, 1)
    if a["n"] < 2 or b["n"] < 2:
        return None
    c = stats.compare([a], [b], "rate", relative=True)
    return tuple((1 + x / 100) / n for x in (c.effect, c.low, c.high))


def _gib(x):
    return f"{x / 2**30:.1f}" if x else ""


def markdown(rows: list[dict], device: str, notes: list[str] | None = None) -> str:
    ok = [r for r in rows if r.get("params")]
    lines = [
        f"# Scaling study ({device})",
        "",
        "`python benchmarks/scaling.py --gpus N --out benchmarks/results/scaling_h200` (benchmarks/scaling.yaml: "
        "language modelling, 8 x 512 tokens per GPU per step, 30 steps, compile off, bf16 autocast). "
        "MFU counts 6 x parameters per token for full fine-tuning and 4 x for adapters. Rows with a "
        "`note` or `source` in the JSON were completed by hand from the run's log or rule (see there).",
        "",
        "| model | params | method | GPUs | strategy | status | steady tok/s | MFU | per-GPU peak GiB | "
        "adapter MB | p50 latency ms |",
        "|---|---:|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(ok, key=lambda r: (r["params"]["total"], r["config"]["method"]["name"], r["gpus"])):
        t = r["train"]
        peaks = (t.get("memory") or {}).get("per_process_peak_bytes") or [t.get("peak_memory_bytes")]
        d = (r.get("resolved") or {}).get("distributed") or {}
        m = mfu(r)
        status = r["status"] if r["status"] == "success" else f"{r['status']}: {r['error'][:60]}"
        rate = t.get("steady_tokens_per_second")
        adapter = r["storage"].get("adapter_bytes")
        lines.append(
            f"| {r['config']['model']['spec']} | {r['params']['total'] / 1e9:.2f} B | "
            f"{r['config']['method']['name']} | {r['gpus']} | {d.get('strategy', '')}"
            f"{' + ckpt' if d.get('gradient_checkpointing') else ''} | {status} | "
            f"{f'{rate:,.0f}' if rate else ''} | {f'{m:.1%}' if m else ''} | "
            f"{_gib(max(p for p in peaks if p) if any(peaks) else None)} | "
            f"{f'{adapter / 1e6:,.1f}' if adapter else ''} | "
            f"{((r.get('inference') or {}).get('latency_ms') or {}).get('p50_ms') or ''} |"
        )
    lines += [
        "",
        "## Data-parallel efficiency (tokens/s on N GPUs / N x one GPU, same per-GPU batch)",
        "",
        "| model | method | GPUs | strategy | efficiency | 95 % interval |",
        "|---|---|---:|---|---:|---|",
    ]
    single = {
        (r["config"]["model"]["spec"], r["config"]["method"]["name"]): r
        for r in ok
        if r["gpus"] == 1 and r["status"] == "success"
    }
    for r in ok:
        key = (r["config"]["model"]["spec"], r["config"]["method"]["name"])
        if r["gpus"] > 1 and r["status"] == "success" and key in single:
            e = efficiency(single[key], r)
            if e:
                strat = ((r.get("resolved") or {}).get("distributed") or {}).get("strategy", "")
                lines.append(f"| {key[0]} | {key[1]} | {r['gpus']} | {strat} | {e[0]:.1%} | {e[1]:.1%} to {e[2]:.1%} |")
    header, body = fits_table(scaling_rows(ok))
    lines += ["", "## Largest model that fits", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(b) + " |" for b in body
    ]
    lines += ["", "## Fitted exponents (least squares on log-log axes)", ""]
    lines += [f"- {x}" for x in fits_lines(scaling_rows(ok))] or ["- fewer than three sizes per series"]
    if notes:  # what the numbers alone do not say (kept in OUT.json under "notes")
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write(out: Path, rows: list[dict], device: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    notes = old.get("notes") or []
    out.with_suffix(".json").write_text(json.dumps({"device": device, "rows": rows, "notes": notes}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, device, notes))
    srows = scaling_rows([r for r in rows if r.get("params")])
    for key, name, label in (
        ("peak_gpu_bytes", "memory", "per-GPU peak training memory (bytes)"),
        ("tokens_per_second", "speed", "training tokens/s (all GPUs)"),
    ):
        try:
            plot_scaling(srows, out.with_name(f"{out.name}_{name}.png"), key, label)
        except ImportError as e:  # a GPU image without matplotlib: `--replot` draws them from OUT.json elsewhere
            print(f"plots skipped: {e}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "benchmarks" / "scaling.yaml"))
    ap.add_argument("--gpus", default="1", help="GPU counts, e.g. 1,2")
    ap.add_argument("--models", help="override the study's models (comma-separated random: shapes)")
    ap.add_argument("--methods", help="override the study's methods")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", default="/tmp/peftbench-scaling", help="scratch folder for the runs")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per (model, GPU count) group")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a default of the study, e.g. train.max_steps=10",
    )
    ap.add_argument("--replot", action="store_true", help="only rewrite OUT.md and the plots from OUT.json")
    ap.add_argument("--out", required=True, help="write OUT.json, OUT.md and OUT_{memory,speed}.png (rows appended)")
    a = ap.parse_args()
    study = yaml.safe_load(Path(a.study).read_text())
    for item in a.set:
        key, value = item.split("=", 1)
        section, field = key.split(".", 1)
        study["defaults"].setdefault(section, {})[field] = yaml.safe_load(value)
    models = a.models.split(",") if a.models else study["models"]
    methods = a.methods.split(",") if a.methods else study["methods"]
    out = Path(a.out)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"] if out.with_suffix(".json").exists() else []
    for r in rows:  # rows slimmed before the family was kept: the spec says it
        r.setdefault("model", {"family": family_of(r["config"]["model"]["spec"])})
    if a.replot:
        write(out, rows, json.loads(out.with_suffix(".json").read_text())["device"])
        return
    device = a.device
    for gpus in (int(g) for g in a.gpus.split(",")):
        for model in models:
            suite = suite_for(study, model, methods, gpus)
            got = run_group(suite, gpus=gpus, work=Path(a.work), device=device, timeout=a.timeout)
            ids = {r["id"] for r in got}
            rows = [r for r in rows if r.get("id") not in ids] + got
            gpu = next((r["env"]["gpu"] for r in got if (r.get("env") or {}).get("gpu")), None)
            write(out, rows, gpu or device)  # after every group: a run cut short keeps what it measured
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
