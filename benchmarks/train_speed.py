"""Training speed side by side: peftbench's default path, transformers' Trainer (bf16=True) and a plain
eager loop, for full / LoRA / IA3 on three workload shapes, in one process per model.

    python benchmarks/train_speed.py --out benchmarks/results/train_speed_h200            # one H200
    python benchmarks/train_speed.py --device cpu --models tiny-gpt2,tiny-t5,tiny-llama --steps 8   # smoke

Workloads (random weights with the published shapes, random token ids, so nothing is fetched):
  gpt2-medium   language modelling, batch 16 x 512 (every token a target)
  t5-base       summarisation-shaped: sources 128-512 tokens, targets 16-128, batch 16
  smollm2-135m  classification-shaped: lengths drawn log-normally (median 110, 16-512), the answer's
                2 tokens are the targets, batch 16
The variable-length workloads draw their batches from a pool of 4000 examples (a small dataset; a
run's 60 batches are a quarter of it), so that grouping by length has a dataset to group.

Per row: steady-state tokens/s (steps after the first WARMUP, device synchronised at both ends),
all-steps tokens/s, MFU (6 x parameters x tokens/s against the GPU's dense bf16 peak), peak memory
(torch.cuda.max_memory_allocated over the whole row: weights, optimizer, activations), warm-up
seconds beyond the steady rate (compilation, for compiled rows), padding share, the 10-step mean
loss curve, and ratio_vs_trainer. Tokens are the non-padding inputs (plus targets for T5), counted
the same way for every loop. ``--profile`` adds a profiler summary of peftbench's gpt2-medium full
fine-tuning (top CUDA kernels, optimizer share, host gaps).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peftbench.catalog import (
    methods,
    models,  # noqa: E402
)
from peftbench.catalog.batches import IGNORE, pad_batch  # noqa: E402
from peftbench.run.graphed import step_size  # noqa: E402
from peftbench.run.speed import planned_tokens, resolve  # noqa: E402
from peftbench.run.train import PLAIN, make_loader, varying  # noqa: E402
from peftbench.spec.config import TrainArgs  # noqa: E402

PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12}
WARMUP = 10  # steps left out of the steady rate (compilation, recompilation for new shapes)
WORKLOADS = {
    "gpt2-medium": ("language-modeling", "causal"),
    "tiny-gpt2": ("language-modeling", "causal"),
    "t5-base": ("summarization", "seq2seq"),
    "tiny-t5": ("summarization", "seq2seq"),
    "smollm2-135m": ("classification", "causal"),
    "tiny-llama": ("classification", "causal"),
}


POOL = 4000  # examples of the variable-length workloads


def features(shape: str, n: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    task, _ = WORKLOADS[shape]
    tiny = shape.startswith("tiny")
    out = []
    for _ in range(n):
        if task == "language-modeling":
            ids = [rng.randrange(3, vocab) for _ in range(64 if tiny else 512)]
            out.append({"input_ids": ids, "labels": list(ids)})
        elif task == "summarization":
            src = [rng.randrange(3, vocab) for _ in range(rng.randint(16, 64) if tiny else rng.randint(128, 512))]
            tgt = [rng.randrange(3, vocab) for _ in range(rng.randint(4, 16) if tiny else rng.randint(16, 128))]
            out.append({"input_ids": src, "labels": tgt, "decoder": True})
        else:
            length = min(512, max(16, int(rng.lognormvariate(math.log(110), 0.7))))
            ids = [rng.randrange(3, vocab) for _ in range(length // 4 if tiny else length)]
            out.append({"input_ids": ids, "labels": [IGNORE] * (len(ids) - 2) + ids[-2:]})
    return out


def build(shape: str, method: str, device: torch.device):
    with torch.device(device):  # weights are created where they train
        base = models.build_random(shape, seed=0)
    family = WORKLOADS[shape][1]
    applied = methods.apply(name=method, options={}, model=base, family=family)
    return applied.model.to(device), applied.learning_rate


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the three loops


def run_peftbench(shape, method, feats, *, steps, batch, device, profile=None, overrides=None) -> dict:
    from peftbench.run.distributed import make_accelerator
    from peftbench.run.settings import for_loop
    from peftbench.run.train import train

    overrides = dict(overrides or {})
    if overrides.pop("hostmask", 1) == 0:  # a probe: transformers reads the padding mask back, as before peftbench's
        import contextlib  # unpadded batches said they were (run.unpadded); restored for the next row

        from peftbench.run import unpadded

        saved, unpadded.batch = unpadded.batch, lambda _: contextlib.nullcontext()
        try:
            return run_peftbench(shape, method, feats, steps=steps, batch=batch, device=device, profile=profile,
                                 overrides=overrides)  # fmt: skip
        finally:
            unpadded.batch = saved
    model, lr = build(shape, method, device)
    task, family = WORKLOADS[shape]
    args = TrainArgs(max_steps=steps, batch_size=batch, log_steps=10, seed=0, warmup_ratio=0.0, **overrides)
    acc = make_accelerator(device=device.type, mixed_precision="auto", grad_accum=1)
    kw = {"varying": varying(feats), "tokens": planned_tokens(feats, steps=steps, args=args, processes=1)}
    kw |= step_size(model, feats, rows=batch, device=device)  # as a run resolves them (run.recipe)
    speed = resolve(args, device_type=device.type, family=family, task=task, model=model, **kw)
    hook = profile.hook if profile else None
    settings = for_loop(n_examples=len(feats), args=args, learning_rate=lr, accelerator=acc, speed=speed)
    r = train(model, feats, args=args, settings=settings, accelerator=acc, pad_id=0, progress=hook)
    laps = r.laps
    steady_laps = [lap for lap in laps if lap["step"] > WARMUP and lap["step"] - 10 >= WARMUP]
    if not steady_laps:
        raise ValueError(f"no 10-step lap after the {WARMUP} warm-up steps: --steps {steps} is too few")
    steady = sum(x["tokens"] for x in steady_laps) / sum(x["seconds"] for x in steady_laps)
    return {
        "steady_tokens_per_second": steady,
        "all_tokens_per_second": r.tokens / r.seconds,
        "warmup_seconds": r.warmup_seconds,
        "padding_fraction": r.padding_fraction,
        "loss_curve": [p["loss"] for p in r.loss_curve if p["step"] % 10 == 0],
        "speed": speed,
        "ran": r.speed,  # the switches as they ran (eager_batches: the batches of another shape, run eagerly)
        "gpu_clock_mhz": r.gpu_clock_mhz,  # the SM clock over the steady laps (NVML)
        "params": _params(model),
    }


def _hand_loop(model, batches, step, *, steps, device, read_every=1, non_blocking=False) -> dict:
    """The timing the hand-written loops share: ``step(batch) -> loss`` (forward, backward, clipping, the optimizer
    step) over ``steps`` batches, the loss read on the host every ``read_every`` steps (1: ``loss.item()`` per
    step, as a user writes it)."""
    losses, marks, tokens, acc = [], {}, [], None
    sync(device)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        b = next(batches)
        tokens.append(b.pop("num_tokens"))
        for k in ("num_slots", "num_examples", "unpadded"):
            b.pop(k)
        loss = step({k: v.to(device, non_blocking=non_blocking) for k, v in b.items()})
        acc = loss.detach() if acc is None else acc + loss.detach()
        if i % read_every == 0:
            losses.append(float(acc) / read_every)
            acc = None
        if i == WARMUP:
            sync(device)
            marks["warm"] = time.perf_counter()
    sync(device)
    end = time.perf_counter()
    steady = sum(tokens[WARMUP:]) / (end - marks["warm"])
    return {
        "steady_tokens_per_second": steady,
        "all_tokens_per_second": sum(tokens) / (end - t0),
        "warmup_seconds": max(0.0, marks["warm"] - t0 - sum(tokens[:WARMUP]) / steady),
        "padding_fraction": None,
        "loss_curve": _tens(losses) if read_every == 1 else losses,
        "params": _params(model),
    }


def _optimizer_step(model, opt, loss):
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def run_eager(shape, method, feats, *, steps, batch, device) -> dict:
    """What a user writes by hand: fp32 weights, bf16 autocast, padded batches, AdamW, loss.item() per step."""
    model, lr = build(shape, method, device)
    model.train()
    loader = make_loader(feats, batch_size=batch, pad_id=0, seed=0, multiple_of=1, speed=PLAIN)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(b):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**b, use_cache=False).loss
        return _optimizer_step(model, opt, loss)

    return _hand_loop(model, iter(loader), step, steps=steps, device=device)


def run_tuned(shape, method, feats, *, steps, batch, device) -> dict:
    """A tuned hand-written loop (language modelling only): bf16 weights, the whole model compiled, fused AdamW,
    the model's own loss, the loss read every 10 steps; full batches only (the epoch's last, smaller one is left
    out, so one graph serves every step)."""
    model, lr = build(shape, method, device)
    model.to(torch.bfloat16).train()
    loader = make_loader(feats, batch_size=batch, pad_id=0, seed=0, multiple_of=1, speed=PLAIN)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=device.type == "cuda")
    compiled = torch.compile(model)
    full = (b for _ in range(10**6) for b in loader if b["input_ids"].shape[0] == batch)

    def step(b):
        return _optimizer_step(model, opt, compiled(**b, use_cache=False).loss)

    return _hand_loop(model, full, step, steps=steps, device=device, read_every=10, non_blocking=True)


def run_trainer(shape, method, feats, *, steps, batch, device) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model, lr = build(shape, method, device)
    counts: list[int] = []
    seq2seq = WORKLOADS[shape][1] == "seq2seq"

    def collate(rows):  # what DataCollatorForSeq2Seq(padding="longest") gives
        out = pad_batch(rows, pad_id=0)
        counts.append(int(out["attention_mask"].sum()) + (int((out["labels"] != IGNORE).sum()) if seq2seq else 0))
        return out

    marks = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 0:
                sync(device)
                marks["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (WARMUP, steps):
                sync(device)
                marks[state.global_step] = time.perf_counter()

    targs = TrainingArguments(
        output_dir="/tmp/pb-trainer",
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=lr,
        bf16=device.type == "cuda",
        logging_steps=10,
        report_to=[],
        save_strategy="no",
        use_cpu=device.type == "cpu",
        seed=0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=feats, data_collator=collate, callbacks=[Clock()])
    out = trainer.train()
    steady = sum(counts[WARMUP:steps]) / (marks[steps] - marks[WARMUP])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "steady_tokens_per_second": steady,
        "all_tokens_per_second": sum(counts[:steps]) / (marks[steps] - marks["start"]),
        "warmup_seconds": max(0.0, marks[WARMUP] - marks["start"] - sum(counts[:WARMUP]) / steady),
        "padding_fraction": None,
        "loss_curve": losses,
        "optim": targs.optim.value if hasattr(targs.optim, "value") else str(targs.optim),
        "params": _params(model),
        "train_runtime": out.metrics.get("train_runtime"),
    }


def _tens(losses):
    return [round(sum(losses[i : i + 10]) / len(losses[i : i + 10]), 6) for i in range(0, len(losses) - 9, 10)]


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- profiler


class Profile:
    """Starts torch.profiler at the 20th step's log call, stops at the 40th, keeps a summary."""

    def __init__(self):
        self.prof, self.summary = None, None
        self.t_start = None

    def hook(self, step, loss, tps):
        from torch.profiler import ProfilerActivity, profile

        if step == 20:
            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.__enter__()
            self.t_start = time.perf_counter()
        elif step == 40 and self.prof:
            sync(torch.device("cuda"))
            wall = time.perf_counter() - self.t_start
            self.prof.__exit__(None, None, None)
            self.summary = summarize(self.prof, wall)


def summarize(prof, wall: float) -> dict:
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in kernels) or 1
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:10]
    cpu = {e.key: e for e in prof.key_averages()}

    def cpu_ms(name):
        return cpu[name].cpu_time_total / 1000 if name in cpu else None

    optim = sum(e.self_device_time_total for e in kernels if "adam" in e.key.lower() or "foreach" in e.key.lower())
    return {
        "window_wall_ms": round(wall * 1000, 1),
        "gpu_busy_ms": round(total / 1000, 1),
        "gpu_idle_share": round(max(0.0, 1 - total / 1e6 / wall), 4),
        "optimizer_kernel_share": round(optim / total, 4),
        "dataloader_cpu_ms": cpu_ms("enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__")
        or cpu_ms("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"),
        "top_kernels": [
            {
                "name": e.key[:90],
                "ms": round(e.self_device_time_total / 1000, 2),
                "share": round(e.self_device_time_total / total, 4),
                "calls": e.count,
            }
            for e in top
        ],
        "top_host_ops": [  # where the host's time goes between the kernels (self CPU time)
            {"name": e.key[:90], "ms": round(e.self_cpu_time_total / 1000, 2), "calls": e.count}
            for e in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        ],
    }


# ---------------------------------------------------------------- driver


def one(shape, method, loop, *, steps, batch, device, profile=None, overrides=None, lm_examples=0) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()
    n = max(steps * batch + batch, POOL if WORKLOADS[shape][0] != "language-modeling" else 0)
    if lm_examples and WORKLOADS[shape][0] == "language-modeling":  # a corpus whose epochs end in a smaller batch
        n = lm_examples
    vocab = models.RANDOM_CONFIGS[shape]["vocab_size"]
    feats = features(shape, n, vocab)
    fn = {"peftbench": run_peftbench, "trainer": run_trainer, "eager": run_eager, "tuned": run_tuned}[
        loop.split(" ")[0]
    ]
    kw = {"profile": profile, "overrides": overrides} if loop.startswith("peftbench") else {}
    row = {"model": shape, "task": WORKLOADS[shape][0], "method": method, "loop": loop, "batch": batch, "steps": steps}
    try:
        row.update(fn(shape, method, feats, steps=steps, batch=batch, device=device, **kw))
    except Exception as e:  # one row fails, the table goes on
        row["error"] = f"{type(e).__name__}: {e}"[:500]
    row["peak_memory_bytes"] = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    if "steady_tokens_per_second" in row and device.type == "cuda":
        peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
        row["mfu"] = round(6 * row["params"] * row["steady_tokens_per_second"] / peak, 4) if peak else None
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| model | method | loop | run | steady tok/s | all-steps tok/s | ratio vs Trainer (same run) | MFU | "
        "peak GiB | mem vs Trainer | warm-up s | padding |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            run = r.get("run") or ""
            lines.append(f"| {r['model']} | {r['method']} | {r['loop']} | {run} | failed: {r['error'][:80]} |||||||")
            continue
        pk, mfu, pad = r.get("peak_memory_bytes"), r.get("mfu"), r.get("padding_fraction")
        cells = [
            r["model"],
            r["method"],
            r["loop"],
            r.get("run") or "",
            f"{r['steady_tokens_per_second']:,.0f}",
            f"{r['all_tokens_per_second']:,.0f}",
            _x(r.get("ratio_vs_trainer")),
            "" if mfu is None else f"{100 * mfu:.1f} %",
            "" if pk is None else f"{pk / 2**30:.1f}",
            _x(r.get("memory_vs_trainer")),
            f"{r.get('warmup_seconds') or 0:.1f}",
            "" if pad is None else f"{100 * pad:.1f} %",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _x(v):
    return "" if v is None else f"{v:.2f}x"


def _same_run(rows, r, loop):
    """The row of ``loop`` for r's model and method measured in r's own run (``run``: the invocation's
    start; rows kept from before the field have none and match each other): ratios are side by side."""
    return next(
        (
            x
            for x in rows
            if (x["model"], x["method"], x["loop"], x.get("run")) == (r["model"], r["method"], loop, r.get("run"))
            and "error" not in x
        ),
        None,
    )


def add_ratios(rows):
    for r in rows:
        ref = _same_run(rows, r, "trainer")
        for key in ("ratio_vs_trainer", "memory_vs_trainer", "loss_vs_eager_max_rel"):
            r.pop(key, None)
        if ref and "error" not in r:
            r["ratio_vs_trainer"] = round(r["steady_tokens_per_second"] / ref["steady_tokens_per_second"], 3)
            if r.get("peak_memory_bytes") and ref.get("peak_memory_bytes"):
                r["memory_vs_trainer"] = round(r["peak_memory_bytes"] / ref["peak_memory_bytes"], 3)
        if r["loop"].startswith("peftbench") and "error" not in r:
            eager = _same_run(rows, r, "eager")
            if eager and eager["loss_curve"]:
                pairs = list(zip(r["loss_curve"], eager["loss_curve"]))
                r["loss_vs_eager_max_rel"] = round(max(abs(a - b) / abs(b) for a, b in pairs), 5) if pairs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt2-medium,t5-base,smollm2-135m")
    ap.add_argument("--methods", default="full,lora,ia3")
    ap.add_argument("--loops", default="peftbench,trainer,eager")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile steps 20-40 of peftbench's training of the first model with --profile-method (a run of its own)",
    )
    ap.add_argument("--variants", default="", help="extra peftbench rows: MODEL:METHOD:key=value[;key=value],...")
    ap.add_argument(
        "--lm-examples",
        type=int,
        default=0,
        help="language-modelling blocks in the corpus (default: one batch more than the steps draw; a number that "
        "the batch does not divide gives every epoch a smaller last batch)",
    )
    ap.add_argument("--profile-overrides", default="", help="the profiled run's switches: key=value[;key=value]")
    ap.add_argument("--profile-method", default="full", help="the profiled run's method")
    ap.add_argument("--out", help="write OUT.json and OUT.md (rows are appended to an existing OUT.json)")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(a.out) if a.out else None
    rows = json.loads(out.with_suffix(".json").read_text())["rows"] if out and out.with_suffix(".json").exists() else []
    profile_summary = None
    jobs = [
        (shape, method, loop, None)
        for shape in a.models.split(",")
        if shape
        for method in a.methods.split(",")
        for loop in a.loops.split(",")
        if loop
    ]
    for v in filter(None, a.variants.split(",")):
        shape, method, kv = v.split(":")
        overrides = {k: _value(x) for k, x in (item.split("=") for item in kv.split(";"))}
        jobs.append((shape, method, f"peftbench ({kv})", overrides))
    run = time.strftime("%Y-%m-%d %H:%M", time.gmtime())  # this invocation: rows of one run are side by side
    for shape, method, loop, overrides in jobs:
        kw = {"overrides": overrides, "lm_examples": a.lm_examples}
        row = {**one(shape, method, loop, steps=a.steps, batch=a.batch, device=device, **kw), "run": run}
        rows = [r for r in rows if (r["model"], r["method"], r["loop"], r.get("run")) != (shape, method, loop, run)]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "loss_curve"}), flush=True)
        if out:  # after every row: a run cut short keeps what it measured
            write(out, rows, profile_summary, device)
    if a.profile:  # a run of its own: the profiler's overhead and trace processing must not touch a row's numbers
        prof = Profile()
        shape = a.models.split(",")[0]
        po = {k: _value(x) for k, x in (i.split("=") for i in a.profile_overrides.split(";") if i)}
        one(
            shape,
            a.profile_method,
            "peftbench",
            steps=45,
            batch=a.batch,
            device=device,
            profile=prof,
            overrides=po or None,
            lm_examples=a.lm_examples,
        )
        profile_summary = {"model": shape, "method": a.profile_method, "overrides": po, **(prof.summary or {})}
    add_ratios(rows)
    print(table(rows))
    if profile_summary:
        print(json.dumps(profile_summary, indent=1))
    if out:
        write(out, rows, profile_summary, device)


def _value(x: str):
    try:
        return int(x)
    except ValueError:
        return x


def write(out: Path, rows: list[dict], profile_summary: dict | None, device: torch.device) -> None:
    add_ratios(rows)
    env = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    profile_summary = profile_summary or old.get("profile")
    out.with_suffix(".json").write_text(
        json.dumps({"env": env, "rows": rows, "profile": profile_summary}, indent=1) + "\n"
    )
    out.with_suffix(".md").write_text(f"# Training speed ({env['device']})\n\n`{json.dumps(env)}`\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
