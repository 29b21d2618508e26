"""False winners under a changing load: A/A suites repeated with a busy process switched on and off at random.

Usage:
    python benchmarks/aa_under_load.py --reps 20 --out benchmarks/results/aa_under_load_cpu

Each repetition runs one suite of three LoRA runs of one configuration on a tiny model: ``a`` and ``b``
identical (same seed: bit-identical adapters), ``c`` with another seed (another adapter of the same cost),
timed in the measurement stage. Meanwhile a thread switches a process spinning on one core on and off at
random moments (seeded), so the load changes between and within runs. Every measure of the verdict should
tie the three; a measure that names a winner is a false winner. The rate per measure is printed and
written with its Wilson 95 % interval (target: at most the nominal 5 %).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def suite(folder: Path) -> Path:
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    rows = [
        {"text": f"this is {lab}: " + " ".join(rng.choice(words) for _ in range(8)), "label": lab}
        for lab in (rng.choice(["good", "bad"]) for _ in range(40))
    ]
    (folder / "cls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = {
        "name": "aa",
        "defaults": {
            "model": {"spec": "random:tiny-gpt2"},
            "data": {"spec": f"file:{folder}/cls.jsonl", "task": "classification", "max_train_samples": 16},
            "train": {"max_steps": 2, "batch_size": 4},
            "measure": {
                "stage": "on",
                "rounds": 6,
                "block_iterations": 2,
                "warmup": 1,
                "seq_len": 8,
                "new_tokens": 2,
                "large_batch_size": 0,
            },
        },
        "experiments": [
            {"id": "a", "method": {"name": "lora"}},
            {"id": "b", "method": {"name": "lora"}},
            {"id": "c", "method": {"name": "lora"}, "train": {"seed": 7}},
        ],
    }
    path = folder / "aa.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def switching_load(stop: threading.Event, seed: int, log: list) -> None:
    """A spinning process on, then off, for random spans of 0.5-6 s, until ``stop``."""
    rng, busy = random.Random(seed), None
    while not stop.is_set():
        if busy is None and rng.random() < 0.5:
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            log.append(("on", time.time()))
        elif busy is not None:
            busy.kill()
            busy = None
            log.append(("off", time.time()))
        stop.wait(rng.uniform(0.5, 6.0))
    if busy is not None:
        busy.kill()


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z, p = 1.96, k / n
    centre, half = (
        (p + z * z / (2 * n)) / (1 + z * z / n),
        z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n),
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", required=True, help="write OUT.json and OUT.md")
    a = ap.parse_args()
    false: dict[str, int] = {}
    seen: dict[str, int] = {}
    switches = []
    with tempfile.TemporaryDirectory() as tmp:
        path = suite(Path(tmp))
        for rep in range(a.reps):
            stop, log = threading.Event(), []
            load = threading.Thread(target=switching_load, args=(stop, rep, log))
            load.start()
            out = Path(tmp) / f"rep{rep}"
            proc = subprocess.run(
                [sys.executable, "-m", "peftbench", "run", str(path), "--out", str(out), "--device", "cpu"],
                capture_output=True,
                text=True,
            )
            stop.set()
            load.join()
            switches.append(len(log))
            if proc.returncode != 0:
                print(f"rep {rep}: exit {proc.returncode}: {proc.stderr[-300:]}")
                continue
            for m in json.loads((out / "verdict.json").read_text())["groups"][0]["measures"]:
                seen[m["measure"]] = seen.get(m["measure"], 0) + 1
                if sorted(m["winners"]) != ["a", "b", "c"]:
                    false[m["measure"]] = false.get(m["measure"], 0) + 1
                    print(f"rep {rep}: {m['measure']} named {m['winners']} ({m['test'][:70]})")
            print(f"rep {rep}: done, {len(log)} load switches", flush=True)
    rows = {
        k: {
            "false_winners": false.get(k, 0),
            "reps": n,
            "rate": false.get(k, 0) / n,
            "wilson95": [round(x, 4) for x in wilson(false.get(k, 0), n)],
        }
        for k, n in seen.items()
    }
    result = {"reps": a.reps, "load_switches": switches, "measures": rows}
    Path(a.out).with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# False winners under a changing load (A/A, measurement stage)",
        "",
        f"`python benchmarks/aa_under_load.py --reps {a.reps}`: three LoRA runs of one configuration per repetition "
        "(a and b identical, c another seed), a process spinning on one core switched on and off at random "
        f"moments ({min(switches)}-{max(switches)} switches per repetition).",
        "",
        "| measure | false winners | repetitions | rate | Wilson 95 % |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, r in rows.items():
        lines.append(
            f"| {k} | {r['false_winners']} | {r['reps']} | {100 * r['rate']:.0f} % | "
            f"{100 * r['wilson95'][0]:.0f}-{100 * r['wilson95'][1]:.0f} % |"
        )
    Path(a.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
