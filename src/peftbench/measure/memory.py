"""Peak memory of the work inside a ``with`` block.

Usage:
    with MemoryTracker(device) as mem:
        work()
    mem.result.peak_bytes, mem.result.delta_bytes

CUDA: the allocator's peak counters are reset on entry; ``peak_bytes`` is max allocated (the
weights already on the GPU included) and ``reserved_bytes`` max reserved during the block,
``delta_bytes`` the peak above what was allocated on entry.

CPU: a background thread samples the process's resident set size (``/proc/self/statm``) every
``interval`` seconds; ``delta_bytes`` is the highest sample minus the resident size on entry.
That difference isolates the work from the rest of the process (interpreter, libraries, what
earlier experiments left behind), which an absolute RSS would count. To be comparable with the
CUDA number, ``peak_bytes`` is ``resident_bytes`` (what the caller says the work holds on entry,
e.g. the model's weights) plus that delta; ``process_peak_bytes`` keeps the absolute RSS. Pages
freed earlier but kept by the C allocator would be reused without showing as growth, so on entry the
tracker collects garbage and asks glibc to return free heap pages to the OS (``malloc_trim``);
without glibc the delta is a lower bound.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import resource
import sys
import threading
from dataclasses import asdict, dataclass

import torch

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:  # not Linux: the peak so far is the best the OS tells
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (``find_library`` runs ldconfig: looked up once per process)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS, so that later growth shows in the RSS (glibc only)."""
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim else False


@dataclass
class Memory:
    device: str
    peak_bytes: int
    delta_bytes: int
    baseline_bytes: int
    reserved_bytes: int | None
    method: str
    process_peak_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class MemoryTracker:
    def __init__(self, device: torch.device | str = "cpu", *, interval: float = 0.001, resident_bytes: int = 0):
        self.device = torch.device(device)
        self.resident_bytes = resident_bytes
        self.interval = interval
        self.result: Memory | None = None

    def __enter__(self) -> MemoryTracker:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        release_free_memory()
        self._base = rss_bytes()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.result = Memory(
                str(self.device),
                peak,
                peak - self._base,
                self._base,
                torch.cuda.max_memory_reserved(self.device),
                "torch.cuda max_memory_allocated",
            )
            return False
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, rss_bytes())
        delta = self._peak - self._base
        self.result = Memory(
            "cpu",
            self.resident_bytes + delta,
            delta,
            self._base,
            None,
            f"resident weights + growth of RSS (sampled every {self.interval * 1000:g} ms)",
            process_peak_bytes=self._peak,
        )
        return False


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def free_cached_memory() -> None:
    """Collect garbage and hand the CUDA allocator's cached blocks back (one run after another)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
