"""Latency: time repeated calls; statistics n, mean, p50/p90/p95/p99, stdev (milliseconds).

Usage:
    lat = measure_latency(lambda: model(**batch), device=device, warmup=3, iterations=20, min_seconds=1.0)
    lat.p50_ms, lat.to_dict()

On CUDA each call is bracketed by CUDA events and the events are read after a synchronise, so the
GPU's own time is measured, not the launch; on CPU ``time.perf_counter``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in 0..100."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Latency:
    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    total_s: float
    samples_ms: list[float] = field(default_factory=list)  # every timed call: the report's intervals

    @classmethod
    def from_values(cls, seconds: list[float]) -> Latency:
        ms = [s * 1000 for s in seconds]
        return cls(
            n=len(ms),
            mean_ms=statistics.fmean(ms) if ms else math.nan,
            p50_ms=percentile(ms, 50),
            p90_ms=percentile(ms, 90),
            p95_ms=percentile(ms, 95),
            p99_ms=percentile(ms, 99),
            stdev_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0,
            min_ms=min(ms, default=math.nan),
            max_ms=max(ms, default=math.nan),
            total_s=sum(seconds),
            samples_ms=ms,
        )

    def to_dict(self) -> dict:
        d = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        d["samples_ms"] = [round(v, 4) for v in self.samples_ms]
        return d


class LatencyTracker:
    """Collects one duration per ``with tracker.track():`` block; ``.latency()`` summarises them."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self._events: list[tuple] = []
        self._values: list[float] = []

    def track(self):
        return _Span(self)

    def _flush(self) -> None:
        if self._events:
            torch.cuda.synchronize()
            self._values += [start.elapsed_time(end) / 1000 for start, end in self._events]
            self._events.clear()

    def values(self) -> list[float]:
        self._flush()
        return list(self._values)

    def latency(self) -> Latency:
        return Latency.from_values(self.values())


class _Span:
    def __init__(self, tracker: LatencyTracker):
        self.t = tracker

    def __enter__(self):
        if self.t.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.t.cuda:
            self.end.record()
            self.t._events.append((self.start, self.end))
        else:
            self.t._values.append(time.perf_counter() - self.t0)
        return False


def measure_latency(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    iterations: int = 20,
    min_seconds: float = 1.0,
    max_iterations: int = 10_000,
    progress: Callable[[], None] | None = None,
) -> Latency:
    """Warm up, then time ``fn`` at least ``iterations`` times and for at least ``min_seconds``."""
    for _ in range(warmup):
        fn()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    tracker = LatencyTracker(device)
    wall0 = time.perf_counter()
    count = 0
    while count < max_iterations:
        with tracker.track():
            fn()
        count += 1
        if progress:
            progress()
        if count >= iterations:
            # wall clock decides when to stop (cheap); the reported numbers come from the tracker
            if cuda:
                torch.cuda.synchronize()
            if time.perf_counter() - wall0 >= min_seconds:
                break
    return tracker.latency()


# The reference workload: a chain of float32 square matmuls of this size, large enough that every
# intra-op thread works (a 192 matmul ran on one thread and missed a load that stalled training's two)
REFERENCE_SIZE = 384


def reference_ms(device: torch.device | str = "cpu", *, calls: int = 7) -> float:
    """How fast this machine is right now: the median time of a fixed matmul workload (a few ms). Each
    training run times it before and after training, so a comparison of two runs' training speed, made
    at different moments, knows how much the machine itself changed between them."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(REFERENCE_SIZE, REFERENCE_SIZE, generator=g).to(device)

    def work():
        x = a
        for _ in range(8):
            x = torch.tanh(x @ a)
        return x

    return measure_latency(work, device=device, warmup=2, iterations=calls, min_seconds=0.0).p50_ms
