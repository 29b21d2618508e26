"""Trackers against known truth: a known sleep, a known allocation, exact percentiles, file sizes."""

import os
import time

import numpy as np
import pytest
import torch

from peftbench.catalog import models
from peftbench.measure import Latency, MemoryTracker, WorkTimer, dir_bytes, measure_latency
from peftbench.measure.latency import percentile


def test_latency_of_a_known_sleep_within_ten_percent():
    lat = measure_latency(lambda: time.sleep(0.05), warmup=1, iterations=5, min_seconds=0.0)
    assert lat.n == 5
    assert lat.p50_ms == pytest.approx(50, rel=0.10)
    assert lat.mean_ms == pytest.approx(50, rel=0.10)


def test_latency_runs_at_least_iterations_and_min_seconds():
    calls = []
    lat = measure_latency(lambda: calls.append(time.sleep(0.01)), warmup=2, iterations=3, min_seconds=0.2)
    assert lat.n >= 3 and lat.total_s >= 0.2 * 0.9
    assert len(calls) == lat.n + 2  # warm-up calls are not timed


def test_percentiles_of_a_known_list_are_exact():
    values = [0.001 * v for v in (5, 1, 4, 2, 3, 10, 7, 6, 9, 8)]  # 1..10 ms, shuffled
    lat = Latency.from_values(values)
    ms = np.arange(1, 11)
    assert lat.n == 10 and lat.mean_ms == pytest.approx(5.5)
    for q, got in ((50, lat.p50_ms), (90, lat.p90_ms), (95, lat.p95_ms), (99, lat.p99_ms)):
        assert got == pytest.approx(np.percentile(ms, q), abs=1e-9)
    assert lat.p50_ms == pytest.approx(5.5) and lat.p90_ms == pytest.approx(9.1)
    assert lat.stdev_ms == pytest.approx(np.std(ms, ddof=1))
    assert percentile([3.0], 99) == 3.0


def test_cpu_memory_tracker_sees_a_known_allocation():
    size = 256 * 1024 * 1024
    with MemoryTracker("cpu", resident_bytes=1000) as mem:
        block = np.ones(size, dtype=np.uint8)  # touched pages: resident
        time.sleep(0.05)
    del block
    assert mem.result.delta_bytes == pytest.approx(size, rel=0.10)
    assert mem.result.peak_bytes == mem.result.delta_bytes + 1000
    assert mem.result.process_peak_bytes >= size


def test_cpu_memory_tracker_counts_memory_the_allocator_had_kept():
    import gc

    import torch

    torch.ones(4 * 2**20)  # freeing a 16 MiB block raises glibc's mmap threshold: 1 MiB blocks now use the heap
    blocks = [torch.ones(256 * 1024) for _ in range(600)]
    keep = blocks[::10]  # fragment the heap so that freeing cannot simply shrink it
    del blocks
    gc.collect()
    with MemoryTracker("cpu") as mem:
        again = [torch.ones(256 * 1024) for _ in range(500)]  # 500 MiB, could reuse the freed pages
        time.sleep(0.05)
    assert mem.result.delta_bytes == pytest.approx(500 * 2**20, rel=0.10)
    del again, keep


def test_work_timer_excludes_paused_time():
    timer = WorkTimer("cpu")
    with timer.running():
        time.sleep(0.05)
        with timer.paused():
            time.sleep(0.2)
        time.sleep(0.05)
    assert timer.seconds == pytest.approx(0.10, rel=0.10)


def test_storage_is_the_sum_of_file_sizes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1234)
    os.makedirs(tmp_path / "sub")
    (tmp_path / "sub" / "b.json").write_bytes(b"{}" * 50)
    assert dir_bytes(tmp_path) == 1234 + 100
    assert dir_bytes(tmp_path / "a.bin") == 1234


def test_saved_bytes_are_written_once_per_architecture_and_dtype(tmp_path):
    from peftbench.measure.storage import saved_bytes

    cache = tmp_path / "cache.json"
    a, b = models.build_random("tiny-gpt2", seed=0), models.build_random("tiny-gpt2", seed=1)
    size = saved_bytes(a, scratch=tmp_path, cache=cache)
    a.save_pretrained(tmp_path / "ref", safe_serialization=True)
    assert size == dir_bytes(tmp_path / "ref")  # what save_pretrained writes
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".full-")] == []
    cache.write_text(cache.read_text().replace(str(size), str(size + 1)))  # a cached value is used, not rewritten
    assert saved_bytes(b, scratch=tmp_path, cache=cache) == size + 1  # other values, same shapes: same bytes
    half = saved_bytes(a.to(torch.bfloat16), scratch=tmp_path, cache=cache)
    assert half < size  # another dtype: measured again


@pytest.mark.parametrize("shape,family", [("tiny-gpt2", "causal"), ("tiny-t5", "seq2seq")])
def test_static_cache_generation_gives_the_eager_tokens_and_is_reported_beside_it(shape, family):
    from peftbench.measure.inference import _gen_kwargs, make_inputs, measure_inference
    from peftbench.spec.config import MeasureArgs

    model = models.build_random(shape, seed=0).eval()
    inputs = make_inputs(
        family=family, vocab_size=model.config.vocab_size, batch=2, seq_len=8, decoder_len=8, device=torch.device("cpu")
    )
    inputs.pop("decoder_input_ids", None)
    with torch.no_grad():
        eager = model.generate(**inputs, **_gen_kwargs(5, 0))
        static = model.generate(**inputs, **_gen_kwargs(5, 0), cache_implementation="static")
    assert torch.equal(eager, static)
    args = MeasureArgs(
        warmup=0, iterations=2, min_seconds=0.0, large_batch_size=0, seq_len=8, new_tokens=3, optimized="static"
    )
    out = measure_inference(
        model, family=family, vocab_size=model.config.vocab_size, args=args, device=torch.device("cpu")
    )
    opt = out["scenarios"]["generate_b1_optimized"]
    assert opt["cache"] == "static" and not opt["compiled"] and opt["latency_ms"]["n"] >= 2
    assert opt["speedup_vs_eager"] == pytest.approx(
        opt["tokens_per_second"] / out["scenarios"]["generate_b1"]["tokens_per_second"], rel=1e-3
    )
    assert out["optimized_throughput_tokens_per_second"] == opt["tokens_per_second"]
    off = measure_inference(
        model,
        family=family,
        vocab_size=model.config.vocab_size,
        args=MeasureArgs(warmup=0, iterations=2, min_seconds=0.0, large_batch_size=0, seq_len=8, new_tokens=3),
        device=torch.device("cpu"),
    )
    assert "generate_b1_optimized" not in off["scenarios"]  # auto: off on CPU


def test_optimized_generation_mode_follows_the_setting():
    from peftbench.measure.inference import optimized_mode

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert optimized_mode("auto", cuda) == "compile" and optimized_mode("auto", cpu) is None
    assert optimized_mode("static", cuda) == "static" and optimized_mode("static", cpu) == "static"
    assert optimized_mode("compile", cpu) == "compile" and optimized_mode("off", cuda) is None


def test_compiled_generation_compiles_the_decoding_step_and_keeps_the_tokens():
    """measure.optimized=compile hands transformers a compile config (its decoding forward compiled, on CPU
    too): the model then holds a compiled call, and its greedy tokens are the eager ones."""
    from transformers import CompileConfig

    from peftbench.measure.inference import _gen_kwargs, make_inputs, measure_inference
    from peftbench.spec.config import MeasureArgs

    model = models.build_random("tiny-gpt2", seed=0).eval()
    args = MeasureArgs(
        warmup=0, iterations=2, min_seconds=0.0, large_batch_size=0, seq_len=8, new_tokens=3, optimized="compile"
    )
    assert getattr(model, "_compiled_call", None) is None
    cpu = torch.device("cpu")
    out = measure_inference(model, family="causal", vocab_size=model.config.vocab_size, args=args, device=cpu)
    opt = out["scenarios"]["generate_b1_optimized"]
    assert "error" not in opt and opt["compiled"] and opt["latency_ms"]["n"] >= 2
    assert getattr(model, "_compiled_call", None) is not None  # the decoding step was compiled
    inputs = make_inputs(
        family="causal", vocab_size=model.config.vocab_size, batch=2, seq_len=8, decoder_len=8, device=cpu
    )
    config = CompileConfig(mode="reduce-overhead", dynamic=False)
    config._compile_all_devices = True
    with torch.no_grad():
        eager = model.generate(**inputs, **_gen_kwargs(4, 0))
        compiled = model.generate(**inputs, **_gen_kwargs(4, 0), cache_implementation="static", compile_config=config)
    assert torch.equal(eager, compiled)


def test_phases_time_a_known_sleep_and_sum_repeated_phases():
    import time

    from peftbench.measure.phases import Phases

    phases = Phases(torch.device("cpu"))
    with phases("sleep"):
        time.sleep(0.2)
    with phases("sleep"):
        time.sleep(0.1)
    phases.add("startup", 1.5)
    d = phases.to_dict(train_tokens=100)
    assert 0.3 <= d["seconds"]["sleep"] < 0.6 and d["seconds"]["startup"] == 1.5
    assert d["total_seconds"] == pytest.approx(d["seconds"]["sleep"] + 1.5, abs=1e-3)
    assert d["joules"] is None and d["energy_source"] == "no GPU" and "train_joules_per_token" not in d
