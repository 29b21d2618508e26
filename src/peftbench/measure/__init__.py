"""Trackers: the only code that reads clocks and memory counters.

Usage:
    with LatencyTracker(device) as lat: ...              # see latency.py
    lat = measure_latency(fn, device=device, warmup=3, iterations=20, min_seconds=1.0)
    with MemoryTracker(device) as mem: ...; mem.result.peak_bytes
    storage.dir_bytes(path)
"""

from peftbench.measure.latency import Latency, LatencyTracker, measure_latency
from peftbench.measure.memory import Memory, MemoryTracker
from peftbench.measure.storage import dir_bytes
from peftbench.measure.throughput import Throughput, WorkTimer

__all__ = [
    "Latency",
    "LatencyTracker",
    "measure_latency",
    "Memory",
    "MemoryTracker",
    "dir_bytes",
    "Throughput",
    "WorkTimer",
]
