"""A study end to end: `peftbench run` against a plain Trainer + generate + timing-loop script doing the same work.

    python benchmarks/make_data.py /tmp/pbdata
    python benchmarks/suite_speed.py study --data /tmp/pbdata --steps 300 \
        --out benchmarks/results/suite_speed_h200_study
    python benchmarks/suite_speed.py throughput --data /tmp/pbdata --steps 50,1000 \
        --out benchmarks/results/suite_speed_h200_throughput
    python benchmarks/suite_speed.py study --data /tmp/pbdata --steps 4 --smoke --device cpu     # a CPU check

``study``: the original study's shape — gpt2 and t5-small shapes (random weights, so nothing is fetched) x
none / full / LoRA / IA3 x language modelling, classification and summarisation on made data (24 runs) —
once as one `peftbench run SUITE` process and once as one plain script that, for each run, loads the same
model and the same encoded examples, trains with `Trainer(bf16=True)` for the same steps, batch and learning
rate, takes the validation loss (`trainer.evaluate`), saves the model or adapter, and times the same inference
scenarios with a loop (forward latency at batch 1, `generate` of the same new tokens at batch 1, forward at
the large batch; the same warm-up and timed calls as the suite's measurement stage). Both sides skip what the
other does not do: the suite's merged-model and compiled-inference variants are off (`measure.merged: false`,
`measure.optimized: off`), forgetting is off (random weights). The wall time of each whole process is the
study's wall time; the suite's phases say where its time went.

``throughput``: gpt2-medium shapes, full fine-tuning and LoRA, language modelling 16 x 512 tokens per step,
at each of ``--steps``: one `peftbench run` process (``measure.enabled=false``, today's defaults) against
Trainer (bf16) over the same steps; all-steps tokens/s = training tokens / training seconds (every step,
compilation included), steady tokens/s beside it, and the largest lap (a recompilation shows as an outlier).
Priming processes run first (``prime``, ``--prime``): a fresh machine's first process reads CUDA's libraries and
the compiler's stack from a cold disk, which would otherwise land in whichever side runs first.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TASK_FILES = {"language-modeling": "lm.jsonl", "classification": "cls.jsonl", "summarization": "summ.jsonl"}
TASK_FIELDS = {"summarization": {"source": "article", "target": "highlights"}}  # make_data.py's columns
METHODS = ["none", "full", "lora", "ia3"]
STUDY = {  # sizes of the study's runs (both sides)
    "batch_size": 8,
    "max_source_length": 128,
    "max_target_length": 32,
    "max_eval_samples": 64,
    "max_train_samples": 400,
}
MEASURE = {  # the suite's measurement settings; the plain script's loop mirrors them
    "warmup": 2,
    "iterations": 10,
    "min_seconds": 0.0,
    "batch_size": 1,
    "large_batch_size": 8,
    "seq_len": 128,
    "new_tokens": 16,
    "merged": False,
    "optimized": "off",
    "rounds": 5,
    "block_iterations": 2,
    "targets": ["torch"],
    "forgetting": None,
}


def study_models(smoke: bool) -> list[str]:
    return ["random:tiny-gpt2", "random:tiny-t5"] if smoke else ["random:gpt2", "random:t5-small"]


def suite_yaml(data: Path, steps: int, smoke: bool, sets: list[str] = ()) -> dict:
    """The study's suite; ``sets`` (``section.key=value``, YAML values) override its defaults, e.g. a study with
    ``train.compile=regions`` beside one with today's ``auto``. Parsed and merged as `peftbench run --set` does."""
    from peftbench.spec.suites import deep_merge, parse_set

    suite = {
        "name": "suite-speed",
        "description": "benchmarks/suite_speed.py: the study's shape on made data",
        "defaults": {
            "data": {k: STUDY[k] for k in ("max_train_samples", "max_eval_samples", "max_source_length")}
            | {"max_target_length": STUDY["max_target_length"]},
            "train": {"max_steps": steps, "batch_size": STUDY["batch_size"], "seed": 0},
            "measure": MEASURE,
        },
        "matrix": {
            "model_task": [
                {
                    "model": {"spec": m},
                    "data": {"spec": f"file:{data / f}", "task": t, "fields": TASK_FIELDS.get(t, {})},
                }  # noqa: E501
                for m in study_models(smoke)
                for t, f in TASK_FILES.items()
            ],
            "methods": [{"method": {"name": n}} for n in METHODS],
        },
    }
    suite["defaults"] = deep_merge(suite["defaults"], parse_set(list(sets)))  # a copy: MEASURE stays as it is
    return suite


# ---------------------------------------------------------------- the plain script's side


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, *, warmup: int, calls: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def timing_loop(model, family: str, device) -> dict:
    """The suite's stage scenarios as a plain loop, with as many timed calls per scenario as the stage takes
    (rounds x block_iterations) after the same warm-up: forward, generate and first token at both batches."""
    import torch

    calls = MEASURE["rounds"] * MEASURE["block_iterations"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model.to(dtype).eval()
    seq, new = MEASURE["seq_len"], MEASURE["new_tokens"]
    vocab = model.config.vocab_size
    out = {}
    with torch.inference_mode():
        for b in (MEASURE["batch_size"], MEASURE["large_batch_size"]):
            ids = torch.randint(3, vocab, (b, seq), device=device)
            kw = {"decoder_input_ids": ids} if family == "seq2seq" else {}
            scenarios = {
                f"forward_b{b}": lambda ids=ids, kw=kw: model(input_ids=ids, **kw),
                f"generate_b{b}": lambda ids=ids: model.generate(input_ids=ids, **_gen(new)),
                f"first_token_b{b}": lambda ids=ids: model.generate(input_ids=ids, **_gen(1)),
            }
            for label, fn in scenarios.items():
                out[label] = _median(_timed(fn, device, warmup=MEASURE["warmup"], calls=calls))
    return out


def _gen(n: int) -> dict:
    return {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "pad_token_id": 0}


def _median(xs):
    xs = sorted(xs)
    return round(xs[len(xs) // 2], 6)


def trainer_run(spec: str, task: str, method: str, *, data: Path, steps: int, device, work: Path) -> dict:
    """One run of the plain script: the same model, examples, steps and rate; Trainer; evaluate; save; time."""
    import torch
    from transformers import Trainer, TrainingArguments

    from peftbench.catalog import data as data_mod
    from peftbench.catalog import methods, models, tasks
    from peftbench.catalog.batches import pad_batch
    from peftbench.spec.config import DataArgs, ModelArgs

    t0 = time.perf_counter()
    loaded = models.load(ModelArgs(spec=spec), seed=0, device=device)
    args = DataArgs(spec=f"file:{data / TASK_FILES[task]}", task=task, fields=TASK_FIELDS.get(task, {}), **STUDY_DATA())
    splits = data_mod.load(args)
    enc = tasks.TASKS[task]
    kw = {"tok": loaded.tokenizer, "family": loaded.family, "args": args, "label_names": splits.label_names}
    train = enc.encode(splits.train, **kw, **({"limit": args.max_train_samples} if enc.blocks else {}))
    val = enc.encode(splits.validation, **kw, **({"limit": args.max_eval_samples} if enc.blocks else {}))
    applied = methods.apply(name=method, options={}, model=loaded.model, family=loaded.family)
    model = applied.model.to(device)
    pad = loaded.tokenizer.pad_token_id or 0
    targs = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=STUDY["batch_size"],
        per_device_eval_batch_size=STUDY["batch_size"],
        max_steps=max(steps, 1),
        learning_rate=applied.learning_rate,
        bf16=device.type == "cuda",
        use_cpu=device.type == "cpu",
        logging_steps=10,
        report_to=[],
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model, args=targs, train_dataset=train, data_collator=lambda rows: pad_batch(rows, pad_id=pad)
    )
    t_train = 0.0
    if applied.trains:
        s = time.perf_counter()
        trainer.train()
        t_train = time.perf_counter() - s
    ev = trainer.evaluate(eval_dataset=val)
    out_dir = work / f"{spec.replace(':', '-')}--{task}--{method}"
    trainer.save_model(str(out_dir))
    timings = timing_loop(model, loaded.family, device)
    del trainer, model
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return {
        "run": f"{spec}/{task}/{method}",
        "train_seconds": round(t_train, 3),
        "eval_loss": round(ev["eval_loss"], 6),
        "timings": timings,
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }


def STUDY_DATA() -> dict:  # noqa: N802 (the DataArgs fields of STUDY)
    return {k: STUDY[k] for k in ("max_train_samples", "max_eval_samples", "max_source_length", "max_target_length")}


def trainer_study(a) -> int:
    import torch

    device = torch.device(a.device)
    work = Path(tempfile.mkdtemp(prefix="trainer-study-"))
    rows = []
    for spec in study_models(a.smoke):
        for task in TASK_FILES:
            for method in METHODS:
                rows.append(trainer_run(spec, task, method, data=Path(a.data), steps=a.steps, device=device, work=work))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows))
    return 0


# ---------------------------------------------------------------- the sides, timed from outside


def run_suite_side(a, steps: int, work: Path) -> dict:
    import yaml

    suite = work / f"suite-{steps}.yaml"
    suite.write_text(yaml.safe_dump(suite_yaml(Path(a.data).resolve(), steps, a.smoke, a.set), sort_keys=False))
    out = work / f"peftbench-{steps}"
    cmd = [sys.executable, "-m", "peftbench", "run", str(suite), "--device", a.device, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = _timestamped(proc, t0, a.timeout)
    wall = time.perf_counter() - t0
    if a.out:  # the suite's progress lines with their second: where a study's wall time went
        Path(a.out + f".suite{steps}.log").write_text("\n".join(lines) + "\n")
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    phases: dict[str, float] = {}
    for r in results:
        for k, v in (r.get("phases") or {}).get("seconds", {}).items():
            phases[k] = round(phases.get(k, 0.0) + v, 2)
    return {
        "side": "peftbench",
        "set": list(a.set),
        "steps": steps,
        "exit": proc.returncode,
        "runs": len(results),
        "succeeded": sum(r["status"] == "success" for r in results),
        "wall_seconds": round(wall, 2),
        "train_seconds": round(sum((r.get("train") or {}).get("seconds") or 0 for r in results), 2),
        "phases_seconds": phases,
        "per_run": [
            {"run": r["run_id"], "wall": r.get("wall_seconds"), "phases": (r.get("phases") or {}).get("seconds")}
            for r in results
        ],
        "stderr_tail": _errors("\n".join(lines)) if proc.returncode else "",
    }


def _timestamped(proc, t0: float, timeout: float | None, keep_all: bool = False) -> list[str]:
    """The process's stderr lines (its progress), each with the seconds since ``t0``; killed after ``timeout``."""
    import threading

    lines: list[str] = []

    def read(stream):
        for line in stream:
            lines.append(f"{time.perf_counter() - t0:8.1f} {line.rstrip()}")

    readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in (proc.stdout, proc.stderr)]
    for t in readers:
        t.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # SIGTERM: the suite cancels its run or stage (their own sessions) first
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        lines.append(f"{time.perf_counter() - t0:8.1f} [benchmark: killed after {timeout} s]")
    for t in readers:
        t.join(timeout=5)
    return lines if keep_all else [x for x in lines if "Warning" not in x and "warn(" not in x]


def _errors(stderr: str) -> str:
    lines = stderr.splitlines()
    return "\n".join([line for line in lines if "rror" in line] or lines[-5:])[-800:]  # else its last words


def run_trainer_side(a, steps: int) -> dict:
    """The plain script in its own process; each finished run's row is read from its stderr as it comes, so a
    script stopped by ``--timeout`` still reports the runs it finished (and their wall time)."""
    cmd = [sys.executable, __file__, "trainer-study", "--data", a.data, "--steps", str(steps), "--device", a.device]
    cmd += ["--smoke"] if a.smoke else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = _timestamped(proc, t0, a.timeout, keep_all=True)
    wall = time.perf_counter() - t0
    rows, ends = [], []
    for line in lines:
        at, _, text = line.strip().partition(" ")
        if text.startswith('{"run"'):
            rows.append(json.loads(text))
            ends.append(float(at))
    return {
        "side": "trainer",
        "steps": steps,
        "exit": proc.returncode,
        "runs": len(rows),
        "wall_seconds": round(wall, 2),
        "wall_at_last_run": ends[-1] if ends else None,  # a stopped script: its wall up to the runs it finished
        "train_seconds": round(sum(r["train_seconds"] for r in rows), 2),
        "rows": rows,
        "stderr_tail": _errors("\n".join(lines))[-600:] if proc.returncode else "",
    }


def study(a) -> int:
    work = Path(tempfile.mkdtemp(prefix="suite-speed-"))
    rows = []
    for steps in (int(s) for s in a.steps.split(",")):
        for name in a.sides.split(","):
            side = run_suite_side(a, steps, work) if name == "peftbench" else run_trainer_side(a, steps)
            rows.append(side)
            _log(a, side)
    lines = [
        "| steps | side | runs | exit | study wall s | Σ train s | wall vs Trainer script |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        other = next((x for x in rows if x["steps"] == r["steps"] and x["side"] == "trainer"), None)
        ratio = f"{other['wall_seconds'] / r['wall_seconds']:.2f}x faster" if other else "–"
        lines.append(
            f"| {r['steps']} | {r['side']} | {r['runs']} | {r['exit']} | {r['wall_seconds']:.1f} | "
            f"{r['train_seconds']:.1f} | {ratio} |"
        )
    for r in rows:
        if r["side"] == "peftbench":
            lines.append(f"\npeftbench at {r['steps']} steps, Σ phases over its runs (s): `{r['phases_seconds']}`")
    return _write(a, rows, "\n".join(lines) + "\n", ok=all(r["exit"] == 0 for r in rows))  # study


# ---------------------------------------------------------------- throughput: gpt2-medium, full and LoRA


def peftbench_row(method: str, steps: int, *, data: Path, device: str, work: Path, smoke: bool) -> dict:
    out = work / f"pb-{method}-{steps}"
    model = "random:tiny-gpt2" if smoke else "random:gpt2-medium"
    cmd = [
        sys.executable, "-m", "peftbench", "run", "--model", model, "--method", method, "--task",
        "language-modeling", "--dataset", f"file:{data / 'lm.jsonl'}", "--set", f"train.max_steps={steps}",
        "--set", "train.batch_size=16", "--set", "data.max_source_length=512", "--set",
        "data.max_train_samples=2000", "--set", "measure.enabled=false", "--device", device, "--out", str(out),
    ]  # fmt: skip
    t0 = time.perf_counter()
    env = {**os.environ, "TORCH_LOGS": "recompiles"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    files = list((out / "results").glob("*.json"))
    if proc.returncode != 0 or not files:
        return {"loop": "peftbench", "method": method, "steps": steps, "error": _errors(proc.stderr)}
    r = json.loads(files[0].read_text())
    t = r["train"]
    laps = [lap["seconds"] / max(lap["tokens"], 1) for lap in t.get("laps", []) if not lap.get("warmup")]
    return {
        "loop": "peftbench",
        "method": method,
        "steps": steps,
        "compile": r["resolved"]["speed"]["compile"],
        "reason": r["resolved"]["speed"]["reasons"].get("compile"),
        "cuda_graphs": r["resolved"]["speed"].get("cuda_graphs"),
        "ran": {k: t.get("speed", {}).get(k) for k in ("filled_batches", "eager_batches")},
        "all_steps_tokens_per_second": round(t["tokens"] / t["seconds"], 1),
        "steady_tokens_per_second": t.get("steady_tokens_per_second"),
        "warmup_seconds": t.get("warmup_seconds"),
        "warmup_laps_seconds": [round(lap["seconds"], 3) for lap in t.get("laps", []) if lap.get("warmup")],
        "compile_seconds": t.get("speed", {}).get("compile_seconds"),  # the warm-up's part in torch's compiler
        "slowest_lap_vs_median": round(max(laps) / sorted(laps)[len(laps) // 2], 2) if laps else None,
        "recompiles": proc.stderr.count("Recompiling"),
        "recompile_reasons": _recompiles(proc.stderr),
        "gpu_clock_mhz": t.get("gpu_clock_mhz"),  # the SM clock over the steady laps: a slowing GPU shows here
        "process_wall_seconds": round(wall, 2),
        "inductor_env": {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_")},
        "phases": r.get("phases"),
    }


def _recompiles(stderr: str) -> list[str]:
    """What triggered each recompilation (TORCH_LOGS=recompiles: the line after "Recompiling ..."), at most five."""
    lines = stderr.splitlines()
    return [" ".join(lines[i : i + 2])[-300:] for i, x in enumerate(lines) if "Recompiling" in x][:5]


def trainer_throughput(a) -> int:
    import torch
    import train_speed as ts

    device = torch.device(a.device)
    shape = "tiny-gpt2" if a.smoke else "gpt2-medium"
    rows = []
    for method in a.methods.split(","):
        for steps in (int(s) for s in (a.trainer_steps or a.steps).split(",")):
            ts.WARMUP = min(10, steps - 1)
            feats = ts.features(shape, 2000, 50257 if not a.smoke else 384)
            r = ts.run_trainer(shape, method, feats, steps=steps, batch=16, device=device)
            rows.append({"loop": "trainer", "method": method, "steps": steps, **_pick(r)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            torch.cuda.empty_cache() if device.type == "cuda" else None
    print(json.dumps(rows))
    return 0


def _pick(r: dict) -> dict:
    return {
        "all_steps_tokens_per_second": round(r["all_tokens_per_second"], 1),
        "steady_tokens_per_second": round(r["steady_tokens_per_second"], 1),
        "warmup_seconds": round(r["warmup_seconds"], 2),
    }


PRIMER = """
import time; t0 = time.perf_counter()
import torch, torch.nn.functional as F, transformers
x = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
w = torch.nn.Parameter(torch.randn(1024, 1024, device="cuda"))
opt = torch.optim.AdamW([w], fused=True)
with torch.autocast("cuda", dtype=torch.bfloat16):
    q = (x @ w).view(8, 16, 512, 64)
    F.scaled_dot_product_attention(q, q, q, is_causal=True).float().logsumexp(-1).sum().backward()
opt.step(); torch.cuda.synchronize()
print(round(time.perf_counter() - t0, 2))
"""


COMPILER_PRIMER = """
import os, tempfile, time; t0 = time.perf_counter()
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="primer-")  # nothing of it reused by a run
import torch
f = torch.compile(lambda x: (x.sin() * 2).sum(-1))
f(torch.randn(64, 64, device="cuda", requires_grad=True)).sum().backward(); torch.cuda.synchronize()
print(round(time.perf_counter() - t0, 2))
"""


def prime(device: str, *, compiler: bool) -> dict | None:
    """Seconds of the priming processes run before either side. ``PRIMER``: CUDA's context, cuBLAS's matmuls,
    attention forward and backward and a fused AdamW step in bf16 autocast, what both sides use. ``compiler``
    (``COMPILER_PRIMER``): one trivial function compiled, forward and backward, in a cache folder of its own, so
    Triton's and the inductor's modules, binaries and compile workers have been read from disk once; no graph of a
    run is in any cache a run reads. On a fresh machine the first process to touch these reads them from a cold
    disk: whichever side comes first pays it (session 16: 2.3-2.4 s more warm-up for a first eager process;
    session 17: a first compiled run's compilation 12.1 s where later processes compiled the same graphs in
    6.6-8.2 s). Primed, both sides are measured on a machine that has run both before, with cold graph caches."""
    if device != "cuda":
        return None
    out, primers = {}, {"libraries": PRIMER}
    if compiler:
        primers["compiler"] = COMPILER_PRIMER
    for key, code in primers.items():
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        out[key] = float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else proc.stderr[-300:]
    return out


def _trainer_for(rows: list, r: dict) -> dict | None:
    """Trainer's row beside ``r``: the same method at the same steps, else at the nearest steps it ran."""
    same = [x for x in rows if x["loop"] == "trainer" and x.get("method") == r["method"] and "error" not in x]
    return min(same, key=lambda x: abs(x["steps"] - r["steps"]), default=None)


def throughput(a) -> int:
    work = Path(tempfile.mkdtemp(prefix="suite-speed-tp-"))
    a.primed_seconds = prime(a.device, compiler=a.prime == "all") if a.prime != "none" else None
    rows = []
    sides = a.sides.split(",")
    for method in a.methods.split(",") if "peftbench" in sides else ():
        for steps in (int(s) for s in a.steps.split(",")):
            rows.append(peftbench_row(method, steps, data=Path(a.data), device=a.device, work=work, smoke=a.smoke))
            _log(a, rows[-1])
    if "trainer" in sides:
        cmd = [sys.executable, __file__, "trainer-throughput", "--data", a.data, "--steps", a.trainer_steps or a.steps]
        cmd += ["--device", a.device, "--methods", a.methods]
        proc = subprocess.run(cmd + (["--smoke"] if a.smoke else []), capture_output=True, text=True)
        failed = [{"loop": "trainer", "error": proc.stderr[-800:]}]
        rows += json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else failed
    lines = [
        "| method | steps | loop | compile | all-steps tok/s | vs Trainer | steady tok/s | warm-up s | recompiles | "
        "slowest lap / median |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            where = f"| {r.get('method', '')} | {r.get('steps', '')} | {r['loop']}"
            lines.append(f"{where} | failed: {r['error'][-150:]} |")
            continue
        tr = _trainer_for(rows, r)
        ratio = f"{r['all_steps_tokens_per_second'] / tr['all_steps_tokens_per_second']:.2f}x" if tr else "–"
        mode = f"{r.get('compile', '–')}{' + CUDA graphs' * bool(r.get('cuda_graphs'))}"
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['loop']} | {mode} | "
            f"{r['all_steps_tokens_per_second']:,.0f} | {ratio} | {r['steady_tokens_per_second'] or 0:,.0f} | "
            f"{r['warmup_seconds'] or 0:.1f} | {r.get('recompiles', '–')} | {r.get('slowest_lap_vs_median', '–')} |"
        )
    return _write(a, rows, "\n".join(lines) + "\n", ok=all("error" not in r for r in rows))


def _log(a, row: dict) -> None:
    """A finished row, printed and appended to OUT.jsonl at once (a call cut short keeps what it measured)."""
    print(json.dumps({k: v for k, v in row.items() if k not in ("rows", "phases")}), flush=True)
    if a.out:
        with open(a.out + ".jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def _write(a, rows, text: str, *, ok: bool) -> int:
    import platform

    import torch

    env = {"torch": torch.__version__, "host": platform.node(), "device": a.device}
    if a.device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    if getattr(a, "primed_seconds", None) is not None:
        env["primed_seconds"] = a.primed_seconds  # the priming processes before both sides (``prime``)
    text = f"`{json.dumps(env)}`\n\n" + text
    print(text)
    if a.out:
        Path(a.out + ".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
        Path(a.out + ".md").write_text(text)
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["study", "throughput", "trainer-study", "trainer-throughput"])
    ap.add_argument("--data", required=True, help="the folder benchmarks/make_data.py wrote")
    ap.add_argument("--steps", default="300")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (a CPU check of the script)")
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    ap.add_argument("--sides", default="peftbench,trainer", help="which sides run")
    ap.add_argument("--timeout", type=float, default=None, help="study: each side's process is stopped after this")
    ap.add_argument("--set", action="append", default=[], help="study: the suite's defaults, section.key=value")
    ap.add_argument("--methods", default="full,lora", help="throughput: methods")
    ap.add_argument("--trainer-steps", default=None, help="throughput: Trainer's steps (default: --steps)")
    ap.add_argument(
        "--prime",
        choices=["all", "libraries", "none"],
        default="all",
        help="throughput: priming processes before both sides (``prime``): CUDA's libraries and the compiler's "
        "stack, the libraries only, or none",
    )
    a = ap.parse_args(argv)
    if a.part == "trainer-study":
        a.steps = int(a.steps)
    sys.path.insert(0, str(Path(__file__).parent))
    parts = {"study": study, "throughput": throughput}
    parts |= {"trainer-study": trainer_study, "trainer-throughput": trainer_throughput}
    return parts[a.part](a)


if __name__ == "__main__":
    sys.exit(main())
