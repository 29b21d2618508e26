"""Throughput (volume per second) and a pausable timer for work such as training.

Usage:
    timer = WorkTimer(device)
    with timer.running(): train_step()        # counted
    with timer.paused(): evaluate()           # inside running(): excluded
    timer.lap()                               # work seconds since the previous lap
    Throughput.of(volume=tokens, seconds=timer.seconds, unit="tokens/s")
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class Throughput:
    value: float
    unit: str
    volume: float
    seconds: float

    @classmethod
    def of(cls, *, volume: float, seconds: float, unit: str) -> Throughput:
        return cls(value=volume / seconds if seconds > 0 else float("nan"), unit=unit, volume=volume, seconds=seconds)

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class WorkTimer:
    """Wall time of the work inside ``running()`` minus the time inside nested ``paused()``.

    On CUDA the device is synchronised at every boundary, so queued kernels are charged to the
    side that launched them.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = 0.0
        self._start: float | None = None
        self._lap_at = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def elapsed(self) -> float:
        """Work seconds so far, the running segment included."""
        return self.seconds + (self._now() - self._start if self._start is not None else 0.0)

    def lap(self) -> float:
        """Work seconds since the previous lap (pauses excluded): per-interval rates give the
        throughput an interval of its own."""
        now = self.elapsed()
        seconds, self._lap_at = now - self._lap_at, now
        return seconds

    @contextlib.contextmanager
    def running(self):
        self._start = self._now()
        try:
            yield self
        finally:
            if self._start is not None:
                self.seconds += self._now() - self._start
            self._start = None

    @contextlib.contextmanager
    def paused(self):
        if self._start is None:
            yield self
            return
        self.seconds += self._now() - self._start
        self._start = None
        try:
            yield self
        finally:
            self._start = self._now()
