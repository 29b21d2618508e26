"""The LoRA paper's inference-latency table, reproduced: forward-pass latency of a model at several
(batch, length) shapes for the base model, LoRA and IA3, each merged and unmerged, repeated.

Usage:
    python benchmarks/latency_table.py                                   # random:gpt2-medium, GPU if any
    python benchmarks/latency_table.py --model random:tiny-gpt2 --shapes 1x16,4x32 --repeats 2 --iterations 5

Reuses peftbench's trackers (CUDA events / perf_counter, warm-up, percentiles) and method registry,
not the training loop. Each repeat measures every variant of every shape once, variants interleaved,
so slow drift of clocks or temperature spreads over all of them instead of biasing one. Adapter
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

from peftbench import methods, models  # noqa: E402
from peftbench.measure import measure_latency  # noqa: E402
from peftbench.measure.inference import inference_dtype, make_inputs  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:gpt2-medium")
    ap.add_argument("--shapes", default="1x128,16x256,32x512", help="batch x length, comma separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=100, help="timed forward passes per measurement")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=0.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", help="auto: bf16 on GPUs that support it, else fp32")
    ap.add_argument("--out", type=Path, help="write the raw numbers as JSON here")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = inference_dtype(args.dtype, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    variants = build_variants(args.model, device, dtype)
    vocab = variants["base"].config.vocab_size
    probe = make_inputs(family="causal", vocab_size=vocab, batch=2, seq_len=32, decoder_len=0, device=device, seed=5)
    diffs = {m: max_logit_diff(variants[f"{m} merged"], variants[f"{m} unmerged"], probe) for m in ("lora", "ia3")}

    raw: dict[str, dict[str, list[dict]]] = {f"{b}x{n}": {v: [] for v in VARIANTS} for b, n in shapes}
    for r in range(args.repeats):
        for b, n in shapes:
            inputs = make_inputs(family="causal", vocab_size=vocab, batch=b, seq_len=n, decoder_len=0, device=device)
            order = VARIANTS if r % 2 == 0 else list(reversed(VARIANTS))
            for v in order:
                model = variants[v]
                lat = measure_latency(lambda: model(**inputs), device=device, warmup=args.warmup,
                                      iterations=args.iterations, min_seconds=args.min_seconds)
                raw[f"{b}x{n}"][v].append(lat.to_dict())
                print(f"repeat {r + 1} {b}x{n} {v:14s} mean {lat.mean_ms:9.3f} ms  p50 {lat.p50_ms:9.3f}  "
                      f"p95 {lat.p95_ms:9.3f}", flush=True)

    env = capture_env(str(device))
    print(f"\n{args.model}, {dtype}, {env.get('gpu') or 'CPU'}; forward pass, mean of {args.iterations} "
          f"iterations after {args.warmup} warm-up, {args.repeats} repeats")
    print("| batch x length | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    summary = {}
    for shape, per in raw.items():
        means = {v: [x["mean_ms"] for x in per[v]] for v in VARIANTS}
        avg = {v: statistics.fmean(means[v]) for v in VARIANTS}
        spread = {v: 100 * (max(means[v]) - min(means[v])) / avg[v] for v in VARIANTS}
        summary[shape] = {"mean_ms": avg, "spread_percent": spread,
                          "overhead_vs_base_percent": {v: 100 * (avg[v] / avg["base"] - 1) for v in VARIANTS},
                          "unmerged_vs_merged_percent": {
                              m: 100 * (avg[f"{m} unmerged"] / avg[f"{m} merged"] - 1) for m in ("lora", "ia3")}}
        cells = [f"{avg[v]:.2f} ± {spread[v]:.1f} %" + ("" if v == "base" else f" ({summary[shape]['overhead_vs_base_percent'][v]:+.1f} %)")
                 for v in VARIANTS]
        print(f"| {shape} | " + " | ".join(cells) + " |")
    print("\ncells: mean latency in ms over the repeats ± spread (max - min of the repeats' means, % of the"
          " mean) (overhead vs base)")
    print("max |logit difference| merged vs unmerged:", {k: f"{v:.3g}" for k, v in diffs.items()})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "dtype": str(dtype), "env": env, "iterations": args.iterations,
                                        "warmup": args.warmup, "repeats": args.repeats, "raw": raw, "summary": summary,
                                        "max_abs_logit_diff": diffs}, indent=1))


if __name__ == "__main__":
    main()
