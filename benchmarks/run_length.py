"""What a short run costs end to end: compile choices, cold and warm caches, process wall against the run's phases.

    python benchmarks/make_data.py /tmp/pbdata
    python benchmarks/run_length.py --data /tmp/pbdata/lm.jsonl --out benchmarks/results/run_length_h200   # one GPU

Each row is one `peftbench run --model random:gpt2-medium --method full --task language-modeling` (16 x 512
tokens per step, `measure.enabled=false`, random weights, made data) in a process of its own, timed from outside
(process wall: the suite's imports, planning, the run's process, the report) and from inside (the result's
`phases`, `train.steady_tokens_per_second`, `train.warmup_seconds`, all-steps tokens/s = tokens / train
seconds). Cold rows start from an empty inductor cache, warm rows reuse the one the previous row filled; `auto`
rows show what `train.compile: auto` chose and why. The machine is the same for every row, one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = [  # (label, compile, cache: cold | warm, steps)
    ("auto, 80 steps", "auto", "cold", 80),
    ("model", "model", "cold", 80),
    ("model", "model", "warm", 80),
    ("regions", "regions", "cold", 80),
    ("regions", "regions", "warm", 80),
    ("off", "off", "cold", 80),
    ("auto, 300 steps", "auto", "warm", 300),
]


def one(label, compile_, cache, steps, *, data: str, cache_dir: Path, work: Path, device: str, model: str) -> dict:
    if cache == "cold":
        shutil.rmtree(cache_dir / "inductor", ignore_errors=True)
    out = work / f"{label.replace(' ', '').replace(',', '-')}-{compile_}-{cache}"
    cmd = [
        sys.executable, "-m", "peftbench", "run", "--model", model, "--method", "full", "--task",
        "language-modeling", "--dataset", f"file:{data}", "--set", f"train.max_steps={steps}", "--set",
        "train.batch_size=16", "--set", "data.max_source_length=512", "--set", "data.max_train_samples=2000",
        "--set", "measure.enabled=false", "--set", f"train.compile={compile_}", "--device", device, "--out", str(out),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc, timeline = _timed(cmd, env={**os.environ, "PEFTBENCH_CACHE": str(cache_dir)}, t0=t0)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"label": label, "compile": compile_, "cache": cache, "error": proc.stderr[-800:]}
    r = json.loads(next((out / "results").glob("*.json")).read_text())
    if r["status"] != "success":
        return {"label": label, "compile": compile_, "cache": cache, "error": str(r.get("error"))[-800:]}
    t, ph = r["train"], r["phases"]
    return {
        "label": label,
        "compile": compile_,
        "cache": cache,
        "steps": steps,
        "chosen": r["resolved"]["speed"]["compile"],
        "reason": r["resolved"]["speed"]["reasons"].get("compile"),
        "steady_tokens_per_second": t.get("steady_tokens_per_second"),
        "warmup_seconds": t.get("warmup_seconds"),
        "all_steps_tokens_per_second": round(t["tokens"] / t["seconds"], 1),
        "run_wall_seconds": r["wall_seconds"],
        "process_wall_seconds": round(wall, 2),
        "wall_minus_phases_seconds": round(wall - ph["total_seconds"], 2),  # item 2: <= 3 s
        "timeline": timeline,  # seconds from the process's start: where the suite's own time lies
        "phases": ph,
    }


MARKS = {": running": "run_started", ": quality": "run_recorded", "report: ": "report_written"}


def _timed(cmd: list[str], *, env: dict, t0: float):
    """Run ``cmd``, stamping its progress lines (stdout) with seconds since ``t0``: the run's start, its result, the
    report, the process's exit."""
    timeline: dict[str, float] = {}
    with tempfile.TemporaryFile(mode="w+") as err:
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        out = []
        for line in popen.stdout:
            out.append(line)
            for mark, name in MARKS.items():
                if mark in line and name not in timeline:
                    timeline[name] = round(time.perf_counter() - t0, 2)
        popen.wait()
        timeline["exited"] = round(time.perf_counter() - t0, 2)
        err.seek(0)
        proc = subprocess.CompletedProcess(cmd, popen.returncode, "".join(out), err.read())
    return proc, timeline


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="random:gpt2-medium")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    base = Path(os.environ.get("PEFTBENCH_CACHE", "~/.cache/peftbench")).expanduser()
    work = Path(tempfile.mkdtemp(prefix="run-length-"))
    cache_dir = work / "cache"
    shutil.copytree(base, cache_dir, ignore=shutil.ignore_patterns("inductor"), dirs_exist_ok=True)
    rows = []
    for i in (int(x) for x in a.rows.split(",")):
        rows.append(one(*ROWS[i], data=a.data, cache_dir=cache_dir, work=work, device=a.device, model=a.model))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "phases"}), flush=True)
    lines = [
        f"# Run length: {a.model} full fine-tuning, LM 16 x 512, measure.enabled=false ({a.device})",
        "",
        "| train.compile | cache | steps | chosen | steady tok/s | warm-up s | all-steps tok/s | run wall s | "
        "process wall s | wall - phases s | startup s | outside phases s | train J/token |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['compile']} | {r['cache']} | failed: {r['error'][-120:]} |")
            continue
        ph = r["phases"]
        jpt = ph.get("train_joules_per_token")
        lines.append(
            f"| {r['label']} | {r['cache']} | {r['steps']} | {r['chosen']} | "
            f"{r['steady_tokens_per_second'] or 0:,.0f} | "
            f"{r['warmup_seconds'] or 0:.1f} | {r['all_steps_tokens_per_second']:,.0f} | {r['run_wall_seconds']:.1f} | "
            f"{r['process_wall_seconds']:.1f} | {r['wall_minus_phases_seconds']:.1f} | "
            f"{ph['seconds'].get('startup', 0):.1f} | "
            f"{ph.get('outside_phases_seconds', 0):.1f} | {'–' if jpt is None else f'{jpt:.4f}'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
        Path(a.out + ".md").write_text(text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
