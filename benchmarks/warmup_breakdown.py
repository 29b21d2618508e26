"""Where a compiled run's warm-up goes on a cold compile cache, one process per variant of the inductor's settings.

    python benchmarks/warmup_breakdown.py --steps 60 --variants '{};{"triton.autotune_pointwise": false};{}' \
        --out benchmarks/results/warmup_breakdown_h200

Each variant is a process of its own with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR`` a new folder, so
nothing of an earlier variant is reused), the compile workers started before the model is built (as a run does,
``run.compiletime.warm_compile_workers``), and peftbench's training loop in-process (benchmarks/train_speed.py's
``run_peftbench``): gpt2-medium shapes, full fine-tuning or ``--method``, language modelling 16 x 512,
``train.compile=regions`` with today's other defaults (CUDA graphs over the compiled blocks). The variant's JSON
sets ``torch._inductor.config`` keys (or, named ``peftbench.MODULE.NAME``, a module's switch) before training.
Timers around torch's own functions say where the first two steps' seconds went beyond compilation
(``compile_seconds``, torch's clock):

- ``autotune``: the kernels' configurations benchmarked at their first launch (``benchmark_all_configs``);
- ``kernel_load``: compiled kernels loaded into this process (``CachingAutotuner.precompile``);
- ``cudagraph_record`` / ``cudagraph_warmup``: CUDA graph trees recording a graph, and the runs before it;
- ``optimizer_step``: the optimizer's steps (the first allocates its state).

Timers nest (a kernel's autotuning happens inside a CUDA graph tree's warm-up run), so they do not add up.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMED = {  # timer -> (module, class, method)
    "autotune": ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner", "benchmark_all_configs"),
    "kernel_load": ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner", "precompile"),
    "cudagraph_record": ("torch._inductor.cudagraph_trees", "CUDAGraphTreeManager", "record_function"),
    "cudagraph_warmup": ("torch._inductor.cudagraph_trees", "CUDAGraphTreeManager", "run_eager"),
    "optimizer_step": ("torch.optim", "AdamW", "step"),
}


def _timers() -> dict:
    """Wraps each of ``TIMED`` with a counter of calls and seconds (those absent in this torch are left out)."""
    spent: dict = {}
    for key, (module, cls, name) in TIMED.items():
        try:
            owner = getattr(importlib.import_module(module), cls)
            inner = getattr(owner, name)
        except (ImportError, AttributeError):
            continue

        def timed(*a, _inner=inner, _key=key, **k):
            t0 = time.perf_counter()
            try:
                return _inner(*a, **k)
            finally:
                c = spent.setdefault(_key, {"calls": 0, "seconds": 0.0})
                c["calls"] += 1
                c["seconds"] += time.perf_counter() - t0
                if _key == "autotune":  # which kernel, over how many configurations
                    meta, n = getattr(a[0], "inductor_meta", {}), len(getattr(a[0], "launchers", ()))
                    c.setdefault("kernels", []).append(
                        {"kernel": meta.get("kernel_name"), "configs": n, "seconds": time.perf_counter() - t0}
                    )

        setattr(owner, name, timed)
    return spent


def one(a) -> int:
    """One variant in this process: its cache folder must be new (the parent made it)."""
    import torch
    import torch._inductor.config as inductor

    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "src"))
    import train_speed as ts

    from peftbench.run.compiletime import since, snapshot, warm_compile_workers
    from peftbench.spec.config import DataArgs, TrainArgs

    for key, value in json.loads(a.variant).items():
        owner, _, name = key.rpartition(".")
        if key.startswith("peftbench."):  # a module's switch, e.g. peftbench.run.chunked.COMPILED_BODY
            setattr(importlib.import_module(owner), name, value)
        else:  # the inductor's
            setattr(eval(f"inductor.{owner}") if owner else inductor, name, value)  # noqa: S307 (this script's flags)
    t = TrainArgs(max_steps=1000, batch_size=16, compile="regions")
    started = warm_compile_workers("cuda", t, DataArgs(max_source_length=512), warm=False)
    spent = _timers()
    device = torch.device("cuda")
    feats = ts.features("gpt2-medium", 2000, 50257)
    before = snapshot()
    r = ts.run_peftbench("gpt2-medium", a.method, feats, steps=a.steps, batch=16, device=device,
                         overrides={"compile": "regions"})  # fmt: skip
    row = {
        "variant": json.loads(a.variant),
        "workers_started_early": started,
        "steady_tokens_per_second": round(r["steady_tokens_per_second"], 1),
        "all_steps_tokens_per_second": round(r["all_tokens_per_second"], 1),
        "warmup_seconds": r["warmup_seconds"],
        "compile_seconds": since(before),
        "timers": {k: {"calls": v["calls"], "seconds": round(v["seconds"], 3)} for k, v in spent.items()},
        "slowest_autotuned": [
            {**x, "seconds": round(x["seconds"], 3)}
            for x in sorted(spent.get("autotune", {}).get("kernels", []), key=lambda x: -x["seconds"])[:5]
        ],
        "speed": {k: r["speed"].get(k) for k in ("compile", "cuda_graphs", "fused_loss", "graph_step")},
        "loss_curve": r["loss_curve"],  # every 10th step's loss: variants of one arithmetic agree
    }
    print(json.dumps(row))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--method", default="full")
    ap.add_argument("--variants", default="{}", help="';'-separated JSON objects of torch._inductor.config keys")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # one variant, in a process of its own
    ap.add_argument("--out", default=None, help="write OUT.json")
    a = ap.parse_args(argv)
    if a.variant is not None:
        return one(a)
    rows = []
    for variant in a.variants.split(";"):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="warmup-breakdown-")}
        cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(a.steps), "--method", a.method]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = round(time.perf_counter() - t0, 1)
        lines = proc.stdout.strip().splitlines()
        row = (
            json.loads(lines[-1])
            if proc.returncode == 0 and lines
            else {"variant": variant, "error": proc.stderr[-800:]}
        )
        rows.append({**row, "process_wall_seconds": wall})
        print(json.dumps(rows[-1]), flush=True)
        if a.out:
            Path(a.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
