"""The scaling section: power-law fits with intervals, and the largest model that fits per method and GPU count."""

import math
from pathlib import Path

import pytest

from peftbench.report.scaling import fits_lines, largest_fits, power_fit, scaling_blocks, scaling_rows, series


def _result(model, params, method, gpus, *, peak=None, rate=None, status="success", error=None):
    return {
        "status": status,
        "error": error,
        "params": {"total": params, "trainable": params},
        "config": {"model": {"spec": model}, "method": {"name": method}},
        "resolved": {"distributed": {"strategy": "fsdp" if gpus > 1 else "single", "world_size": gpus}},
        "train": {
            "memory": {
                "per_process_peak_bytes": [peak, peak * 0.9] if gpus > 1 and peak else ([peak] if peak else None)
            },
            "steady_tokens_per_second": rate,
            "steps": 30,
        },
        "storage": {"adapter_bytes": params * 4},
        "inference": None,
    }


SIZES = {"s": 1e8, "m": 4e8, "l": 1.6e9, "xl": 7e9}


def test_power_fit_recovers_an_exact_exponent_and_its_interval_covers_a_noisy_one():
    xs = list(SIZES.values())
    fit = power_fit(xs, [3.0 * x**0.8 for x in xs])
    assert fit["exponent"] == pytest.approx(0.8, abs=1e-6) and fit["low"] == pytest.approx(fit["high"], abs=1e-6)
    assert fit["prefactor"] == pytest.approx(3.0, rel=1e-6)
    noisy = power_fit(xs, [x**-0.5 * f for x, f in zip(xs, (1.1, 0.9, 1.05, 0.97))])
    assert noisy["low"] < -0.5 < noisy["high"] and noisy["high"] - noisy["low"] > 0.01
    assert power_fit(xs[:2], [1.0, 2.0]) is None  # two sizes give a line, not a fit with an interval


def test_out_of_memory_runs_mark_what_does_not_fit():
    results = [_result(m, int(n), "full", 1, peak=16 * n, rate=1e12 / n) for m, n in SIZES.items() if n < 5e9]
    results.append(
        _result(
            "xl",
            int(SIZES["xl"]),
            "full",
            1,
            status="failed",
            error="OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        )
    )
    results.append(_result("xl", int(SIZES["xl"]), "full", 2, peak=9 * SIZES["xl"], rate=3e3))
    results.append(_result("xl", int(SIZES["xl"]), "lora", 1, status="failed", error="ValueError: bad option"))
    rows = scaling_rows(results)
    assert len(rows) == 5  # the ValueError is a failure, not a data point
    fits = {(f["method"], f["gpus"]): f for f in largest_fits(rows)}
    assert fits[("full", 1)]["largest"]["model"] == "l" and fits[("full", 1)]["out_of_memory"]["model"] == "xl"
    assert fits[("full", 2)]["largest"]["params"] == int(SIZES["xl"]) and fits[("full", 2)]["out_of_memory"] is None
    assert fits[("full", 2)]["largest"]["peak_gpu_bytes"] == 9 * SIZES["xl"]  # the busiest GPU's peak


def test_scaling_section_fits_memory_and_speed_and_draws_them(tmp_path):
    results = [_result(m, int(n), "lora", 1, peak=2 * n + 1e9, rate=5e11 / n**0.9) for m, n in SIZES.items()]
    blocks = scaling_blocks(results, tmp_path)
    text = "\n".join(line for b in blocks if b[0] == "ul" for line in b[1])
    speed = [line for line in text.splitlines() if "tokens/s, lora" in line][0]
    assert "parameters^-0.90" in speed and "4 sizes" in speed
    imgs = [b[2] for b in blocks if b[0] == "img"]
    assert len(imgs) == 2 and all(p.exists() and p.stat().st_size > 1000 for p in imgs)
    assert scaling_blocks(results[:2], tmp_path / "few") == []  # two sizes: no section
    assert math.isfinite(
        power_fit([r["params"]["total"] for r in results], [r["train"]["steady_tokens_per_second"] for r in results])[
            "high"
        ]
    )


def test_data_parallel_efficiency_of_the_study_has_an_interval_around_the_ratio():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scaling.py"
    spec = importlib.util.spec_from_file_location("scaling_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    rng = __import__("random").Random(0)

    def row(gpus, per_process_rate):  # laps of this process: tokens and seconds with a little jitter
        laps = [
            {"step": 2 * i, "tokens": 4096, "seconds": 4096 / per_process_rate * rng.uniform(0.97, 1.03)}
            for i in range(2, 16)
        ]
        return {"gpus": gpus, "train": {"laps": [{"step": 1, "tokens": 4096, "seconds": 9.0, "warmup": True}, *laps]}}

    eff, low, high = study.efficiency(row(1, 1000.0), row(2, 900.0))
    assert low < 0.9 < high and eff == pytest.approx(0.9, abs=0.02)  # the warm-up lap is left out
    assert high - low < 0.1


def test_data_parallel_and_sharded_runs_are_fitted_apart():
    rows = scaling_rows([_result(m, int(n), "full", 2, peak=8 * n, rate=1e12 / n) for m, n in SIZES.items()])
    for r in rows:  # the largest shape sharded, the others data parallel
        r["strategy"] = "fsdp" if r["model"] == "xl" else "ddp"
    assert [(k, len(v)) for k, v in sorted(series(rows, "peak_gpu_bytes").items())] == [
        (("", "full", 2, "ddp"), 3),
        (("", "full", 2, "fsdp"), 1),
    ]
    assert [line.split(":")[0] for line in fits_lines(rows)] == [
        "per-GPU peak memory, full on 2 GPUs (ddp)",
        "training tokens/s, full on 2 GPUs (ddp)",
    ]


def test_runs_of_different_tasks_or_data_are_not_one_series():
    """The demo's three models each run another task: three sizes, but no scaling to fit."""
    results = []
    for (m, n), task in zip(list(SIZES.items())[:3], ("classification", "language-modeling", "summarization")):
        r = _result(m, int(n), "lora", 1, peak=2 * n, rate=1e12 / n)
        r["config"]["data"], r["config"]["train"] = {"task": task, "spec": f"builtin:{task}"}, {"batch_size": 8}
        results.append(r)
    assert scaling_blocks(results, Path("/nonexistent")) == []
    for r in results:  # one workload: a series
        r["config"]["data"] = {"task": "classification", "spec": "builtin:x", "max_source_length": 256}
    rows = scaling_rows(results)
    assert {r["workload"] for r in rows} == {"classification, builtin:x, 8 × 256"}
    assert [len(v) for v in series(rows, "peak_gpu_bytes").values()] == [3]
    results[0]["model"] = {"family": "seq2seq"}  # an encoder-decoder beside decoders: a series of its own
    assert sorted(len(v) for v in series(scaling_rows(results), "peak_gpu_bytes").values()) == [1, 2]
    assert "seq2seq classification, builtin:x, 8 × 256" in {r["workload"] for r in scaling_rows(results)}
    untrained = _result("s", int(SIZES["s"]), "none", 1)
    untrained["train"] = {"steps": 0}
    assert scaling_rows([untrained]) == []  # the zero-shot baseline trains nothing: no memory to scale


def test_a_search_over_ranks_of_one_model_is_not_a_scaling_study(tmp_path):
    """LoRA trials at r 4, 16 and 32 change the parameter count by a fraction of a percent: three counts of
    one model, not three model sizes (once they made the fit's prefactor overflow and broke the report)."""
    rs = [
        _result("builtin:m", 134_515_008 + extra, "lora", 1, peak=1e9 + extra, rate=250.0 - extra / 1e4)
        for extra in (230_400, 921_600, 1_843_200)
    ]
    assert scaling_blocks(rs, tmp_path) == []
    assert power_fit([134.7e6, 135.4e6, 136.3e6], [1.0e9, 1.2e9, 0.9e9]) is None
    assert power_fit([1e8, 4e8, 1.6e9], [1.0, 4.0, 16.0])["exponent"] == pytest.approx(1.0)
