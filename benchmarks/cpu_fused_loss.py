"""The fused (chunked) loss against the model's own on CPU, side by side: what ``train.fused_loss: auto`` should pick.

    python benchmarks/cpu_fused_loss.py --out benchmarks/results/cpu_fused_loss_2core     # the 2-core box

On a CPU the model's own loss materialises the logits of every position (batch x length x vocabulary, fp32, and
their gradient); the chunked loss computes the head's matmul and the cross-entropy over chunks of the labelled
positions. Per shape (random weights, LoRA as peft defaults, AdamW, batch x length random token ids, every
token a target): one warm-up step each, then ``--rounds`` rounds of one timed step per mode in alternating order
(a drift of the machine moves both), tokens/s as the geometric mean of the per-round ratios with a t interval on
their logs, and each mode's peak resident memory over its steps (a separate pass per mode, the process's RSS
sampled every millisecond above its level before). The losses of the first step are compared too.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peftbench import stats  # noqa: E402
from peftbench.catalog import methods  # noqa: E402
from peftbench.catalog.batches import loss_positions  # noqa: E402
from peftbench.measure.memory import MemoryTracker  # noqa: E402
from peftbench.run.speed import LossModule  # noqa: E402

SHAPES = {  # name: (model_type, config); the 262k vocabulary is Gemma 3's (the issue's 270M model), 4 layers here
    "gpt2-50k": (
        "gpt2",
        {
            "n_layer": 4,
            "n_embd": 768,
            "n_head": 12,
            "vocab_size": 50257,
            "n_positions": 1024,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        },
    ),
    "smollm2-49k": (
        "llama",
        {
            "num_hidden_layers": 4,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "vocab_size": 49152,
            "tie_word_embeddings": True,
        },
    ),
    "gemma3-262k": (
        "llama",
        {
            "num_hidden_layers": 4,
            "hidden_size": 640,
            "intermediate_size": 2048,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "vocab_size": 262144,
            "tie_word_embeddings": True,
        },
    ),
}


def build(name: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    kind, cfg = SHAPES[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **cfg))
    family = "causal"
    applied = methods.apply(name="lora", options={}, model=model, family=family, total_steps=100)
    return applied.model


def batch_of(vocab: int, batch: int, length: int) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    out["loss_index"], out["loss_targets"] = loss_positions(out["labels"])
    return out


def step(module: LossModule, opt, batch: dict) -> tuple[float, float]:
    t0 = time.perf_counter()
    loss = module(batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, float(loss)


def measure(name: str, *, batch: int, length: int, rounds: int) -> dict:
    model = build(name)
    vocab = SHAPES[name][1]["vocab_size"]
    data = batch_of(vocab, batch, length)
    modules = {mode: LossModule(model, fused_loss=mode) for mode in ("off", "chunked")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)  # lr 0: weights stay
    first = {mode: step(modules[mode], opt, data)[1] for mode in modules}  # warm-up; lr 0 keeps the loss comparable
    times: dict[str, list[float]] = {m: [] for m in modules}
    for r in range(rounds):
        order = ("off", "chunked") if r % 2 == 0 else ("chunked", "off")
        for mode in order:
            times[mode].append(step(modules[mode], opt, data)[0])
    peaks = {}
    for mode in modules:
        with MemoryTracker(torch.device("cpu")) as mem:
            for _ in range(2):
                step(modules[mode], opt, data)
        peaks[mode] = mem.result.peak_bytes
    ratio = stats.compare_rounds([1 / t for t in times["chunked"]], [1 / t for t in times["off"]])
    tokens = batch * length
    return {
        "shape": name,
        "vocab": vocab,
        "batch": batch,
        "length": length,
        "rounds": rounds,
        "tokens_per_second": {m: round(tokens / statistics.median(v), 1) for m, v in times.items()},
        "chunked_vs_off_percent": round(ratio.effect, 1),
        "interval_percent": [round(ratio.low, 1), round(ratio.high, 1)],
        "peak_bytes": peaks,
        "first_loss": first,
        "loss_abs_diff": abs(first["off"] - first["chunked"]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.shapes.split(","):
        rows.append(measure(name, batch=a.batch, length=a.length, rounds=a.rounds))
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        f"# train.fused_loss on CPU: chunked against off ({a.threads} threads, batch {a.batch} x {a.length}, LoRA)",
        "",
        "| shape | vocab | off tok/s | chunked tok/s | chunked vs off (95 % interval) | peak off | peak chunked | "
        "first loss off / chunked |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        lines.append(
            f"| {r['shape']} | {r['vocab']:,} | {r['tokens_per_second']['off']:,.0f} | "
            f"{r['tokens_per_second']['chunked']:,.0f} | {r['chunked_vs_off_percent']:+.1f} % "
            f"({r['interval_percent'][0]:+.1f} to {r['interval_percent'][1]:+.1f}) | {gib(r['peak_bytes']['off'])} | "
            f"{gib(r['peak_bytes']['chunked'])} | {r['first_loss']['off']:.4f} / {r['first_loss']['chunked']:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
        Path(a.out + ".md").write_text(text)
    return 0 if all(math.isfinite(r["chunked_vs_off_percent"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
