"""Evaluation's generation paths side by side (train.eval_generation): the dynamic cache (eager), the static cache
(eager) and the static cache with its decoding step compiled as CUDA graphs, over the same prompts in one process.

    python benchmarks/make_data.py /tmp/pbdata
    python benchmarks/eval_generation.py --data /tmp/pbdata --models gpt2,t5-small \
        --out benchmarks/results/eval_generation_h200

Per model: made summarisation prompts (``summ.jsonl``, as the suite encodes them), greedy, ``--new-tokens`` each,
batch ``--batch``. For each mode, a first pass (the compiled mode's compilation and graph recording in it) and a
second pass over the same prompts (what a second evaluation of the run, or a warm cache, pays), each timed
whole; the per-step rate is the second pass's seconds / decoding steps. ``break_even_steps``: the decoding steps
from which compiling repays its first-pass cost (first-pass extra / per-step saving), what
``catalog.scoring.DECODE_COMPILE_STEPS`` is set from. Also whether each mode's texts equal the eager ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(shape: str, *, data: Path, device, prompts_n: int, batch: int, new_tokens: int) -> dict:
    import torch

    from peftbench.catalog import models, scoring, tasks
    from peftbench.spec.config import ModelArgs

    lm = models.load(ModelArgs(spec=f"random:{shape}", dtype="bfloat16" if device.type == "cuda" else "auto"), seed=0)
    model = lm.model.to(device).eval()
    records = [json.loads(x) for x in (data / "summ.jsonl").read_text().splitlines()][:prompts_n]
    if lm.family == "seq2seq":
        prompts = [lm.tokenizer(tasks.T5_SUMMARY_PREFIX + r["article"], max_length=256, truncation=True)["input_ids"]
                   for r in records]  # fmt: skip
    else:
        prompts = [tasks.summary_prompt(lm.tokenizer, r["article"], 256) for r in records]
    s = scoring.scorer(model, lm.tokenizer, family=lm.family, device=device, batch_size=batch)
    steps = -(-len(prompts) // batch) * new_tokens
    row: dict = {"model": shape, "prompts": len(prompts), "batch": batch, "new_tokens": new_tokens, "steps": steps}
    texts = {}
    for mode in ("off", "static", "compile"):
        passes = []
        for _ in range(2):
            _sync(device)
            t0 = time.perf_counter()
            ran: dict = {}
            texts[mode] = s.generate(prompts, max_new_tokens=new_tokens, mode=mode, record=ran)
            _sync(device)
            passes.append(round(time.perf_counter() - t0, 3))
        row[mode] = {"first_s": passes[0], "second_s": passes[1], "ms_per_step": round(1000 * passes[1] / steps, 3),
                     "ran": ran["generation"], "same_texts_as_eager": texts[mode] == texts["off"],
                     "texts_equal_to_eager": sum(a == b for a, b in zip(texts[mode], texts["off"]))}  # fmt: skip
        print(json.dumps({"model": shape, mode: row[mode]}), flush=True)
        if device.type == "cuda":
            torch.compiler.reset()  # the next mode (and model) start as a fresh run would
    saved = (row["off"]["ms_per_step"] - row["compile"]["ms_per_step"]) / 1000
    extra = row["compile"]["first_s"] - row["compile"]["second_s"]
    row["break_even_steps"] = round(extra / saved) if saved > 0 else None
    row["speedup_steady"] = round(row["off"]["ms_per_step"] / max(row["compile"]["ms_per_step"], 1e-9), 2)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--models", default="gpt2,t5-small")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out")
    a = p.parse_args(argv)
    import torch

    device = torch.device(a.device)
    rows = [
        bench(m, data=Path(a.data), device=device, prompts_n=a.prompts, batch=a.batch, new_tokens=a.new_tokens)
        for m in a.models.split(",")
    ]
    lines = [
        "| model | decoding steps | eager s (1st / 2nd) | static s | compiled s (1st / 2nd) | ms/step eager / compiled "
        "| steady speed-up | break-even steps | texts equal to eager |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        o, st, c = r["off"], r["static"], r["compile"]
        lines.append(
            f"| {r['model']} | {r['steps']} | {o['first_s']} / {o['second_s']} | {st['first_s']} / {st['second_s']} "
            f"| {c['first_s']} / {c['second_s']} | {o['ms_per_step']} / {c['ms_per_step']} | {r['speedup_steady']}x "
            f"| {r['break_even_steps']} | static {st['texts_equal_to_eager']}/{r['prompts']}, "
            f"compiled {c['texts_equal_to_eager']}/{r['prompts']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out + ".json").write_text(json.dumps(rows, indent=1))
        Path(a.out + ".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
