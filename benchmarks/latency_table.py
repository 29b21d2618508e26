"""The LoRA paper's inference-latency table, reproduced: forward-pass latency of a model at several
(batch, length) shapes for the base model, LoRA and IA3, each merged and unmerged, repeated.

Usage:
    python benchmarks/latency_table.py                                   # random:gpt2-medium, GPU if any
    python benchmarks/latency_table.py --model random:tiny-gpt2 --shapes 1x16,4x32 --repeats 2 --iterations 5

Reuses peftbench's trackers (CUDA events / perf_counter, warm-up, percentiles) and method registry,
not the training loop. Within a repeat the variants take turns in blocks of ``--block`` iterations
(round robin), so slow drift of host or GPU clocks spreads over all of them instead of biasing one;
a repeat's number is the median of its blocks' p50s. With ``--cuda-graphs`` each forward pass is also
captured once and replayed: that removes the host's kernel-launch time (which dominates small
shapes on a fast GPU) and shows the GPU work alone. Adapter
weights are randomised (LoRA's B starts at zero) so that the unmerged path does real work and the
merged weights differ from the base; latency does not depend on the values.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peftbench.catalog import (
    methods,
    models,  # noqa: E402
)
from peftbench.catalog.models import resolve_dtype  # noqa: E402
from peftbench.measure import measure_latency  # noqa: E402
from peftbench.measure.inference import make_inputs  # noqa: E402
from peftbench.results import capture_env  # noqa: E402

VARIANTS = ["base", "lora merged", "lora unmerged", "ia3 merged", "ia3 unmerged"]


def build_variants(spec: str, device: torch.device, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    name = spec.split(":", 1)[1]
    base = models.build_random(name, seed=0)
    out = {"base": base}
    for method in ("lora", "ia3"):
        applied = methods.apply(name=method, options={}, model=copy.deepcopy(base), family="causal")
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in applied.model.named_parameters():
                if "lora_B" in n or "ia3_" in n:
                    p.copy_(torch.randn_like(p) * 0.02 + (1.0 if "ia3_" in n else 0.0))
        out[f"{method} unmerged"] = applied.model
        out[f"{method} merged"] = copy.deepcopy(applied.model).merge_and_unload()
    for m in out.values():
        m.to(device=device, dtype=dtype).eval()
    return out


@torch.inference_mode()
def max_logit_diff(a, b, inputs) -> float:
    return float((a(**inputs).logits.float() - b(**inputs).logits.float()).abs().max())


def forward_fn(model, inputs: dict, mode: str):
    """A zero-argument forward pass: eager, or replay of a captured CUDA graph (None if capture fails)."""
    if mode == "eager":
        return lambda: model(**inputs)
    ids = inputs["input_ids"]  # no mask: causal attention needs none, and mask checks would sync
    try:
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model(input_ids=ids)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(input_ids=ids)
        return graph.replay
    except Exception as e:  # some attention paths cannot be captured
        print(f"cuda graph capture failed: {type(e).__name__}: {str(e)[:120]}")
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:gpt2-medium")
    ap.add_argument("--shapes", default="1x128,16x256,32x512", help="batch x length, comma separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=200, help="timed forward passes per variant and repeat")
    ap.add_argument("--block", type=int, default=20, help="iterations a variant runs before the next takes its turn")
    ap.add_argument("--cuda-graphs", action="store_true", help="also time CUDA-graph replay (GPU work without launch)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", help="auto: bf16 on GPUs that support it, else fp32")
    ap.add_argument("--out", type=Path, help="write the raw numbers as JSON here")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device, inference=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    variants = build_variants(args.model, device, dtype)
    vocab = variants["base"].config.vocab_size
    probe = make_inputs(family="causal", vocab_size=vocab, batch=2, seq_len=32, decoder_len=0, device=device, seed=5)
    diffs = {m: max_logit_diff(variants[f"{m} merged"], variants[f"{m} unmerged"], probe) for m in ("lora", "ia3")}

    modes = ["eager"] + (["graph"] if args.cuda_graphs and device.type == "cuda" else [])
    raw: dict = {m: {f"{b}x{n}": {v: [] for v in VARIANTS} for b, n in shapes} for m in modes}
    for r in range(args.repeats):
        for b, n in shapes:
            inputs = make_inputs(family="causal", vocab_size=vocab, batch=b, seq_len=n, decoder_len=0, device=device)
            for mode in modes:
                fns = {v: forward_fn(variants[v], inputs, mode) for v in VARIANTS}
                if any(f is None for f in fns.values()):
                    continue
                samples = {v: [] for v in VARIANTS}
                for v in VARIANTS:  # warm every variant before any timing
                    measure_latency(fns[v], device=device, warmup=args.warmup, iterations=1, min_seconds=0)
                for k in range(max(1, args.iterations // args.block)):
                    order = VARIANTS if (k + r) % 2 == 0 else list(reversed(VARIANTS))
                    for v in order:
                        lat = measure_latency(fns[v], device=device, warmup=0, iterations=args.block, min_seconds=0)
                        samples[v].append(lat)
                for v in VARIANTS:
                    stats = {
                        "p50_ms": statistics.median(lat.p50_ms for lat in samples[v]),
                        "mean_of_blocks_ms": statistics.fmean([lat.mean_ms for lat in samples[v]]),
                        "blocks": len(samples[v]),
                        "block": args.block,
                    }
                    raw[mode][f"{b}x{n}"][v].append(stats)
                    print(f"repeat {r + 1} {mode:5s} {b}x{n} {v:14s} p50 {stats['p50_ms']:9.3f} ms", flush=True)

    env = capture_env(str(device))
    summary: dict = {}
    for mode in modes:
        print(
            f"\n{args.model}, {dtype}, {env.get('gpu') or 'CPU'}, {mode}; forward pass, p50 over "
            f"{args.iterations} iterations per repeat (blocks of {args.block}, round robin), {args.repeats} repeats"
        )
        print("| batch x length | " + " | ".join(VARIANTS) + " |")
        print("|---" * (len(VARIANTS) + 1) + "|")
        summary[mode] = {}
        for shape, per in raw[mode].items():
            if not per["base"]:
                print(f"| {shape} | " + " | ".join(["n/a"] * len(VARIANTS)) + " |")
                continue
            meds = {v: [x["p50_ms"] for x in per[v]] for v in VARIANTS}
            avg = {v: statistics.median(meds[v]) for v in VARIANTS}
            spread = {v: 100 * (max(meds[v]) - min(meds[v])) / avg[v] for v in VARIANTS}
            over = {v: 100 * (avg[v] / avg["base"] - 1) for v in VARIANTS}
            summary[mode][shape] = {
                "p50_ms": avg,
                "spread_percent": spread,
                "overhead_vs_base_percent": over,
                "unmerged_vs_merged_percent": {
                    m: 100 * (avg[f"{m} unmerged"] / avg[f"{m} merged"] - 1) for m in ("lora", "ia3")
                },
            }
            cells = [
                f"{avg[v]:.2f} ± {spread[v]:.1f} %" + ("" if v == "base" else f" ({over[v]:+.1f} %)") for v in VARIANTS
            ]
            print(f"| {shape} | " + " | ".join(cells) + " |")
    print(
        "\ncells: median over the repeats of each repeat's p50 (ms) ± spread (max - min of the repeats, % of the"
        " median) (overhead vs base)"
    )
    print("max |logit difference| merged vs unmerged:", {k: f"{v:.3g}" for k, v in diffs.items()})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "dtype": str(dtype),
                    "env": env,
                    "iterations": args.iterations,
                    "block": args.block,
                    "warmup": args.warmup,
                    "repeats": args.repeats,
                    "raw": raw,
                    "summary": summary,
                    "max_abs_logit_diff": diffs,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
