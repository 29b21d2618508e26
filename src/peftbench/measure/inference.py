"""Inference scenarios: forward pass at fixed (batch, length), and generation of a fixed number of
new tokens split into time to first token and time per output token.

Usage:
    report = measure_inference(model, family="causal", vocab_size=50257, args=measure_args, device=device)
    report["latency_ms"]["p50_ms"], report["throughput_tokens_per_second"]

Every scenario uses the same seeded random token ids, so methods see identical work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from peftbench.catalog import sources
from peftbench.measure.latency import measure_latency
from peftbench.measure.memory import MemoryTracker, tensor_bytes
from peftbench.spec.config import MeasureArgs


def make_inputs(
    *, family: str, vocab_size: int, batch: int, seq_len: int, decoder_len: int, device: torch.device, seed: int = 0
) -> dict:
    g = torch.Generator().manual_seed(seed)
    low = min(3, vocab_size - 1)  # skip the usual special ids (pad/eos/unk)
    ids = torch.randint(low, vocab_size, (batch, seq_len), generator=g)
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    if family == "seq2seq":
        dec = torch.randint(low, vocab_size, (batch, decoder_len), generator=g)
        inputs["decoder_input_ids"] = dec.to(device)
    return inputs


def _gen_kwargs(n: int, pad_id: int | None) -> dict:
    # min == max: every method generates exactly n tokens, whatever its eos probabilities
    return {
        "max_new_tokens": n,
        "min_new_tokens": n,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": pad_id,
        "use_cache": True,
    }


def optimized_mode(value: str, device: torch.device) -> str | None:
    """measure.optimized -> None (off), "static" (static KV cache) or "compile" (static cache and a
    compiled forward; the default with CUDA, where CUDA graphs remove the per-token launch cost)."""
    if value in ("static", "compile"):
        return value
    if value == "auto" and device.type == "cuda":
        return "compile"
    return None


def _optimized_generation(
    model, gen_inputs: dict, *, b: int, args: MeasureArgs, timing: dict, pad_id, compile_: bool, eager: dict
) -> dict:
    """Generation with a static KV cache (and, when ``compile_``, its decoding step compiled with CUDA
    graphs), the same greedy tokens as the eager scenario; the speed-up is against it.

    Compilation is transformers' own (``compile_config``: the one-token decoding forward compiled with
    ``mode="reduce-overhead"``, the prefill left eager), which ``generate`` would otherwise switch on by
    itself for a static cache on CUDA; the plain static scenario turns it off (``disable_compile``), so
    that "static" means uncompiled on every device."""
    from transformers import CompileConfig

    kw = {**_gen_kwargs(args.new_tokens, pad_id), "cache_implementation": "static"}
    if compile_:
        sources.use_inductor_cache()
        config = CompileConfig(mode="reduce-overhead", dynamic=False)
        config._compile_all_devices = True  # on CPU too, where generate would not compile by itself
        kw["compile_config"] = config
    else:
        kw["disable_compile"] = True
    try:
        total = measure_latency(
            lambda: model.generate(**gen_inputs, **kw), **{**timing, "warmup": max(2, timing["warmup"])}
        )
    except Exception as e:  # noqa: BLE001 - a model or method without static-cache support: say so, keep eager
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    tps = b * args.new_tokens / (total.mean_ms / 1000)
    return {
        "batch_size": b,
        "new_tokens": args.new_tokens,
        "cache": "static",
        "compiled": compile_,
        "latency_ms": total.to_dict(),
        "tokens_per_second": round(tps, 3),
        "speedup_vs_eager": round(tps / eager["tokens_per_second"], 4),
    }


def _generation(
    model, inputs: dict, *, b: int, args: MeasureArgs, timing: dict, pad_id, optimized: str | None, progress
) -> dict[str, dict]:
    """The generation scenarios of one batch size: eager (time to first token, per-token time) and,
    when asked, optimised."""
    gen_inputs = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
    if progress:
        progress(f"generate b={b}")
    first = measure_latency(lambda: model.generate(**gen_inputs, **_gen_kwargs(1, pad_id)), **timing)
    total = measure_latency(lambda: model.generate(**gen_inputs, **_gen_kwargs(args.new_tokens, pad_id)), **timing)
    per_token = (total.mean_ms - first.mean_ms) / max(1, args.new_tokens - 1)
    eager = {
        "batch_size": b,
        "seq_len": args.seq_len,
        "new_tokens": args.new_tokens,
        "time_to_first_token_ms": first.to_dict(),
        "latency_ms": total.to_dict(),
        "time_per_output_token_ms": round(per_token, 4),
        "tokens_per_second": round(b * args.new_tokens / (total.mean_ms / 1000), 3),
    }
    out = {f"generate_b{b}": eager}
    if optimized:
        if progress:
            progress(f"generate b={b}, static cache" + (" + compile" if optimized == "compile" else ""))
        out[f"generate_b{b}_optimized"] = _optimized_generation(
            model,
            gen_inputs,
            b=b,
            args=args,
            timing=timing,
            pad_id=pad_id,
            compile_=optimized == "compile",
            eager=eager,
        )
    return out


@torch.inference_mode()
def _summary(model, scenarios: dict, *, args: MeasureArgs, family: str, decoder_len: int, mem) -> dict:
    """The headline numbers (the latency batch's forward and generation) beside every scenario."""
    head_fwd = scenarios[f"forward_b{args.batch_size}"]
    head_gen = scenarios.get(f"generate_b{args.batch_size}")
    large_gen = scenarios.get(f"generate_b{args.large_batch_size}")
    return {
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "shapes": {
            "batch_size": args.batch_size,
            "large_batch_size": args.large_batch_size,
            "seq_len": args.seq_len,
            "decoder_len": decoder_len if family == "seq2seq" else None,
            "new_tokens": args.new_tokens,
        },
        "latency_ms": head_fwd["latency_ms"],
        "throughput_tokens_per_second": (head_gen or head_fwd)["tokens_per_second"],
        "throughput_unit": "generated tokens/s" if head_gen else "forward tokens/s",
        "throughput_large_batch_tokens_per_second": (
            large_gen or scenarios.get(f"forward_b{args.large_batch_size}") or {}
        ).get("tokens_per_second"),
        "time_to_first_token_ms": head_gen["time_to_first_token_ms"] if head_gen else None,
        "time_per_output_token_ms": head_gen["time_per_output_token_ms"] if head_gen else None,
        "optimized_throughput_tokens_per_second": (scenarios.get(f"generate_b{args.batch_size}_optimized") or {}).get(
            "tokens_per_second"
        ),
        "peak_memory_bytes": mem.result.peak_bytes,
        "memory": mem.result.to_dict(),
        "scenarios": scenarios,
    }


def measure_inference(
    model,
    *,
    family: str,
    vocab_size: int,
    args: MeasureArgs,
    device: torch.device,
    pad_id: int | None = 0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    model.eval()
    optimized = optimized_mode(args.optimized, device)
    decoder_len = args.decoder_len or args.seq_len
    timing = {"device": device, "warmup": args.warmup, "iterations": args.iterations, "min_seconds": args.min_seconds}
    batches = [args.batch_size] + (
        [args.large_batch_size] if args.large_batch_size and args.large_batch_size != args.batch_size else []
    )
    scenarios: dict[str, dict] = {}
    with MemoryTracker(device, resident_bytes=tensor_bytes(model)) as mem:
        for b in batches:
            inputs = make_inputs(
                family=family,
                vocab_size=vocab_size,
                batch=b,
                seq_len=args.seq_len,
                decoder_len=decoder_len,
                device=device,
            )
            if progress:
                progress(f"forward b={b}")
            lat = measure_latency(lambda inputs=inputs: model(**inputs), **timing)
            tokens = b * (args.seq_len + (decoder_len if family == "seq2seq" else 0))
            scenarios[f"forward_b{b}"] = {
                "batch_size": b,
                "seq_len": args.seq_len,
                "decoder_len": decoder_len if family == "seq2seq" else None,
                "latency_ms": lat.to_dict(),
                "tokens_per_second": round(tokens / (lat.mean_ms / 1000), 3),
            }
            if args.generate:
                scenarios.update(
                    _generation(
                        model,
                        inputs,
                        b=b,
                        args=args,
                        timing=timing,
                        pad_id=pad_id,
                        optimized=optimized,
                        progress=progress,
                    )
                )
    return _summary(model, scenarios, args=args, family=family, decoder_len=decoder_len, mem=mem)


@torch.inference_mode()
def logits_for(model, *, family: str, vocab_size: int, args: MeasureArgs, device: torch.device) -> torch.Tensor:
    inputs = make_inputs(
        family=family,
        vocab_size=vocab_size,
        batch=args.batch_size,
        seq_len=args.seq_len,
        decoder_len=args.decoder_len or args.seq_len,
        device=device,
        seed=1,
    )
    model.eval()
    return model(**inputs).logits.float().cpu()
