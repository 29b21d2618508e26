"""What a run's compilation costs: the compile workers started early where it may compile (``warm_compile_workers``),
and, read from torch's own clock (``torch._dynamo.utils.compilation_time_metrics``), seconds in dynamo's frame
compilation (tracing, and the forward graphs' code generation inside it) and in the backward graphs' compilation at
their first backward, beside the warm-up they sit in (``train.speed``'s ``compile_seconds``). The kernels'
autotuning at their first launch and CUDA graphs' recording are not in it: they are the rest of the warm-up."""

from __future__ import annotations

import logging
import os
import sys
import time

from peftbench.run.speed import is_warm, too_short_to_compile, warm_key

log = logging.getLogger("peftbench")

FORWARD = "_compile.compile_inner"  # one entry per compiled frame
BACKWARD = "compile_fx.<locals>.bw_compiler"  # one entry per backward graph
HERE = "async_compile.precompile"  # a Triton kernel compiled in this process: its workers were not ready yet
WAIT = "async_compile.wait"  # a graph's wait on the kernels its workers compile
WORKER_START = "TORCHINDUCTOR_WORKER_START"  # how torch starts its compile workers, where the user says
_workers: dict = {}  # when this process started its compile workers early, and when they were ready (time.time())


def _clock() -> dict | None:
    """torch's table of compilation times, where its compiler is imported (nothing compiled otherwise)."""
    utils = sys.modules.get("torch._dynamo.utils")
    table = getattr(utils, "compilation_time_metrics", None)
    return table if isinstance(table, dict) else None


def snapshot() -> dict:
    """torch's compile clock now: (entries, seconds) per clock key, and how many frames it has recorded."""
    table = _clock() or {}
    keys = (FORWARD, BACKWARD, HERE, WAIT)
    clock = {key: (len(table.get(key, ())), float(sum(table.get(key, ())))) for key in keys}
    return {"clock": clock, "frames": len(_per_frame())}


def _per_frame() -> list:
    """torch's record of each compiled frame (name, seconds), where it keeps one."""
    utils = sys.modules.get("torch._dynamo.utils")
    try:
        return list(utils.get_compilation_metrics()) if utils is not None else []
    except Exception:  # a private API: its absence costs the detail, not the run
        return []


def _slowest(records: list, n: int = 5) -> list[dict]:
    """The slowest frames among torch's ``records`` (``_per_frame``): their code's name and seconds (tracing and
    the forward graph's code generation)."""
    frames = [
        {"frame": getattr(m, "co_name", None), "seconds": round(getattr(m, "entire_frame_compile_time_s", 0) or 0, 3)}
        for m in records
        if getattr(m, "co_name", None)  # not the records of a backward graph's compilation, which name no frame
    ]
    return sorted(frames, key=lambda f: -f["seconds"])[:n]


def _stages(records: list) -> dict | None:
    """Where the compilation recorded in ``records`` (``_per_frame``) went, in seconds: ``tracing`` (dynamo reading
    the bytecode), ``autograd`` (the joint graph traced, its passes, the partition into forward and backward),
    ``inductor`` (lowering and code generation, the forward and the backward graphs') and ``kernels`` (waiting on
    the Triton kernels' compilation). Read from torch's records of each frame and of each backward graph (their
    counters in microseconds); None where it keeps none (a private API)."""
    spent = dict.fromkeys(("tracing", "autograd", "inductor", "kernels"), 0.0)
    for m in records:
        us = {
            k: getattr(m, f"{k}_cumulative_compile_time_us", None) or 0 for k in ("dynamo", "aot_autograd", "inductor")
        }
        kernels = getattr(m, "triton_compile_time_us", None) or 0
        if us["dynamo"]:  # a frame's record: the backend (autograd, then the inductor) ran inside it
            spent["tracing"] += max(us["dynamo"] - us["aot_autograd"], 0)
            spent["autograd"] += max(us["aot_autograd"] - us["inductor"], 0)
        spent["inductor"] += max(us["inductor"] - kernels, 0)  # a frame's forward graph or a backward graph
        spent["kernels"] += kernels
    if not any(spent.values()):
        return None
    return {k: round(v / 1e6, 3) for k, v in spent.items()}


def _kernels(now: dict, then: dict, records: list) -> dict:
    """Where the Triton kernels compiled: ``compiled_here`` (how many, and their seconds) in this process, one after
    another, because the compile workers were not ready yet; ``waited_seconds`` on the workers at the end of each
    graph's code generation; and, where this process started its workers early (``warm_compile_workers``), how
    long after that they were ready and its first frame's compilation began."""
    here, wait = ((now[k][0] - then[k][0], now[k][1] - then[k][1]) for k in (HERE, WAIT))
    out = {"compiled_here": here[0], "compiled_here_seconds": round(here[1], 3), "waited_seconds": round(wait[1], 3)}
    started = _workers.get("started")
    if started is not None:
        ready = _workers.get("ready")
        out["workers_start"] = _workers.get("start")
        out["workers_ready_after_seconds"] = round(ready - started, 3) if ready is not None else None
        begun = [m.start_time_us for m in records if getattr(m, "start_time_us", None)]
        out["first_compile_after_seconds"] = round(min(begun) / 1e6 - started, 3) if begun else None
    return out


def since(before: dict) -> dict | None:
    """Seconds compiled since ``before`` (``snapshot()``): {"seconds": all, "backward": the backward graphs' part,
    "frames": frames dynamo looked at, "slowest": the slowest frames, "stages": where it went (``_stages``)}; None
    where nothing was compiled. A backward graph found in the compile cache is loaded with its forward graph: its
    seconds are in the forward's."""
    now, then = snapshot()["clock"], before["clock"]
    frames = now[FORWARD][0] - then[FORWARD][0]
    if not frames and now[BACKWARD][0] == then[BACKWARD][0]:
        return None
    forward, backward = (now[k][1] - then[k][1] for k in (FORWARD, BACKWARD))
    records = _per_frame()[before["frames"] :]  # read once for both summaries
    return {
        "seconds": round(forward + backward, 3),
        "backward": round(backward, 3),
        "frames": frames,
        "slowest": _slowest(records),
        "stages": _stages(records),
        "kernels": _kernels(now, then, records),
    }


def warm_compile_workers(device_type: str, train, data, processes: int = 1, *, warm: bool = False) -> bool:
    """Start inductor's compile workers now (a CUDA run that may compile), beside the model's load and the data's
    encoding: torch starts them at the first compilation, whose first kernels then compile one by one in this
    process until the workers are up. Forked from this process (``worker_start_method`` ``fork``, unless
    ``TORCHINDUCTOR_WORKER_START`` says otherwise): torch's default, a new interpreter that imports torch before
    it forks them, answered 8.9-12.5 s after the start on the H200 host, 4-8 s after the first frame's compilation
    began; forked workers have nothing to import and answered after 0.54-0.62 s (gpt2-medium 1,000 steps: warm-up
    8.4-9.1 s against 12.4 s). Not for a run too short to compile
    whatever its data holds (``auto`` over at most ``max_steps`` x batch x the longest example's tokens). Returns
    whether they were started (``stop_compile_workers`` undoes it where the run turns out not to compile).

    One H200, gpt2-medium LoRA 16 x 512, 1,000 steps on a cold cache: warm-up 14.2 s against 20.7-22.9 s with the
    workers started at the first compilation: 2.22x Trainer's all-steps rate (results/suite_speed_h200.md).
    ``warm``: this model and method compiled here before (``is_warm``), so ``auto`` may compile a shorter run; on a
    cold cache an 80-step gpt2-medium run (0.66 M tokens) started them, then trained eagerly, and stopping them
    waited 11 s for their start-up on a fresh H200 machine."""
    if device_type != "cuda" or train.compile == "off":
        return False
    longest = data.max_source_length + data.max_target_length
    most = train.max_steps * train.batch_size * train.gradient_accumulation_steps * processes * longest
    if train.compile == "auto" and 0 < most and too_short_to_compile(most, "warm" if warm else "cold"):
        return False
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor.async_compile import AsyncCompile, maybe_warm_pool

        if WORKER_START not in os.environ:  # the user's choice stands
            inductor_config.worker_start_method = "fork"
        _workers.clear()
        _workers.update(started=time.time(), start=inductor_config.worker_start_method)
        maybe_warm_pool()
        ready = getattr(AsyncCompile, "_ready_future", None)  # torch's probe job: done once a worker answers
        if ready is not None:
            ready.add_done_callback(lambda _: _workers.setdefault("ready", time.time()))
    except Exception as e:  # a speed-up only: the first compilation starts them as before
        log.debug("compile workers not started early: %s", e)
        return False
    return True


def compiled_before(model_spec: str, method: str, options: dict, precision: str) -> bool:
    """Whether this model and method compiled on this machine before, whatever its examples' lengths (``is_warm``)."""
    return any(is_warm(warm_key(model_spec, method, options, precision, v)) for v in (False, True))


def stop_compile_workers(started: bool, speed: dict) -> dict:
    """``speed`` as given; the early workers (``started``) stopped again where it compiles nothing."""
    if started and speed["compile"] == "off":
        from torch._inductor.async_compile import shutdown_compile_workers

        shutdown_compile_workers()
    return speed


def compile_workers_for(exp, accelerator) -> bool:
    """``warm_compile_workers`` for a run of ``exp`` on ``accelerator``: ``auto``'s warm threshold only where this
    model and method compiled on this machine before."""
    warm = compiled_before(exp.model.spec, exp.method.name, exp.method.options, accelerator.mixed_precision)
    return warm_compile_workers(accelerator.device.type, exp.train, exp.data, accelerator.num_processes, warm=warm)
