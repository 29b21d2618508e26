"""A suite's runs one after another against several at once: wall time and equal results.

    python benchmarks/make_data.py /tmp/pbdata
    python benchmarks/spread.py --data /tmp/pbdata --device cpu --out benchmarks/results/spread_cpu2     # 2 cores
    python benchmarks/spread.py --data /tmp/pbdata --device cuda --model random:gpt2 --steps 150 --runs 8 \\
        --modes serial,local:4:4 --out benchmarks/results/spread_h200      # one GPU, 4 runs on it

The suite: ``--runs`` LoRA runs (seeds) of ``--model`` on made language-modelling data, quality only
(``measure.enabled: false``). Each mode is one ``peftbench run`` process, timed from outside: ``serial`` (today's
loop), ``local:N[:K]`` (``--executor local --jobs N --runs-per-gpu K``), ``ray:N`` (a local Ray started by the
suite). Serial runs with ``OMP_NUM_THREADS`` = the cores / N of the first parallel mode, so the float reductions,
and so the results, are the same; the table says whether every run's loss curve and config hash match serial's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def suite(data: str, model: str, steps: int, runs: int) -> dict:
    return {
        "name": "spread",
        "seeds": list(range(1, runs + 1)),
        "defaults": {
            "data": {"max_train_samples": 400, "max_eval_samples": 32, "max_source_length": 256},
            "train": {"max_steps": steps, "batch_size": 16, "compile": "off"},
            "measure": {"enabled": False, "forgetting": None},
        },
        "matrix": {
            "model_task": [
                {"model": {"spec": model}, "data": {"spec": f"file:{data}/lm.jsonl", "task": "language-modeling"}}
            ],  # noqa: E501
            "methods": [{"method": {"name": "lora"}}],
        },
    }


def one(mode: str, path: Path, work: Path, device: str, threads: int | None) -> dict:
    out = work / mode.replace(":", "-")
    cmd = [sys.executable, "-m", "peftbench", "run", str(path), "--device", device, "--out", str(out)]
    name, *rest = mode.split(":")
    if name != "serial":
        cmd += ["--executor", name, "--jobs", rest[0]] + (["--runs-per-gpu", rest[1]] if len(rest) > 1 else [])
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads and name == "serial" else {})}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    rs = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    return {
        "mode": mode,
        "exit": proc.returncode,
        "wall_seconds": round(wall, 2),
        "runs": {r["run_id"]: {"hash": r["config_hash"], "loss": (r["train"] or {}).get("loss_curve")} for r in rs},
        "train_tokens_per_second": [round((r["train"] or {}).get("tokens_per_second") or 0) for r in rs],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="random:tiny-gpt2")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--modes", default="serial,local:2,ray:2")
    ap.add_argument("--out")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spread-"))
    path = work / "spread.yaml"
    path.write_text(yaml.safe_dump(suite(a.data, a.model, a.steps, a.runs)))
    modes = a.modes.split(",")
    jobs = next((int(m.split(":")[1]) for m in modes if m != "serial"), 1)
    threads = max(1, (os.cpu_count() or 1) // jobs) if a.device == "cpu" else None
    rows = [one(m, path, work, a.device, threads) for m in modes]
    base = rows[0]
    lines = [
        "| mode | exit | wall s | speed-up vs serial | results equal serial's | train tok/s per run |",
        "|---|---:|---:|---:|---|---|",
    ]  # noqa: E501
    for r in rows:
        same = r["runs"] == base["runs"] and len(r["runs"]) == a.runs
        lines.append(
            f"| {r['mode']} | {r['exit']} | {r['wall_seconds']:.1f} | "
            f"{base['wall_seconds'] / r['wall_seconds']:.2f}x | "
            f"{'yes' if same else 'NO'} | {', '.join(f'{x:,}' for x in r['train_tokens_per_second'])} |"
        )
    text = (
        f"`{a.model}`, {a.runs} LoRA runs x {a.steps} steps of 16 x 256 tokens, {a.device}\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print(text)
    if a.out:
        Path(a.out + ".md").write_text(text)
        Path(a.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
