"""Where a run's time (and, on NVIDIA GPUs, its energy) goes: one clock and one energy counter per phase.

Usage:
    phases = Phases(device)
    with phases("load"): ...                 # seconds (perf_counter) and joules (NVML) of the block
    phases.add("process", 4.2)               # a span measured elsewhere (the child's start-up)
    phases.to_dict()   # {"seconds": {...}, "joules": {...} | None, "energy_source": ..., "total_seconds": ...}

Energy is NVML's total-energy counter of the run's GPU (``nvmlDeviceGetTotalEnergyConsumption``, millijoules
since the driver loaded; Volta and later), read at each phase's start and end, so a phase's joules are the
whole board's, idle power included. Without CUDA, without ``nvidia-ml-py`` (``pip install 'peftbench[energy]'``)
or on a GPU without the counter, ``joules`` is None and ``energy_source`` says why. CUDA work is synchronised
before each clock read so a phase owns the kernels it launched.
"""

from __future__ import annotations

import contextlib
import time


def _nvml(device) -> tuple:
    """(pynvml, the NVML handle of the device's GPU), or (None, why not)."""
    if getattr(device, "type", str(device)) != "cuda":
        return None, "no GPU"
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install 'peftbench[energy]')"
    try:
        import torch

        pynvml.nvmlInit()
        index = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
        uuid = torch.cuda.get_device_properties(index).uuid
        return pynvml, _handle_by_uuid(pynvml, str(uuid)) or pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as e:  # noqa: BLE001 (NVML reports every failure as its own error type)
        return None, f"NVML: {type(e).__name__}: {e}"[:160]


def _energy_reader(device) -> tuple:
    """(read() -> millijoules, source) for the device's GPU, or (None, why not)."""
    nv, handle = _nvml(device)
    if nv is None:
        return None, handle
    try:
        nv.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises where the GPU has no counter
    except Exception as e:  # noqa: BLE001
        return None, f"NVML: {type(e).__name__}: {e}"[:160]
    return (lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle)), "nvml total energy counter"


def clock_reader(device):
    """read() -> the GPU's SM clock now, in MHz (NVML), or None off NVIDIA GPUs and without nvidia-ml-py.

    Read at every training lap: a GPU that slows under sustained load (its power or thermal limit) shows as falling
    clocks beside falling lap rates, so a slow run says whether the code or the machine was slow."""
    nv, handle = _nvml(device)
    if nv is None:
        return None
    try:
        nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM)
    except Exception:  # noqa: BLE001
        return None
    return lambda: int(nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM))


def _handle_by_uuid(pynvml, uuid: str):
    """The NVML handle of torch's device (CUDA_VISIBLE_DEVICES renumbers devices; NVML does not)."""
    for prefix in ("GPU-", ""):
        with contextlib.suppress(Exception):
            return pynvml.nvmlDeviceGetHandleByUUID(prefix + uuid.removeprefix("GPU-"))
    return None


class Phases:
    def __init__(self, device=None):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.joules: dict[str, float] = {}
        self._read, self.source = _energy_reader(device) if device is not None else (None, "no device")

    def _sync(self) -> None:
        if getattr(self.device, "type", None) == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._sync()
        t0, e0 = time.perf_counter(), self._read() if self._read else None
        try:
            yield
        finally:
            self._sync()
            self.add(name, time.perf_counter() - t0)
            if e0 is not None:
                self.joules[name] = round(self.joules.get(name, 0.0) + (self._read() - e0) / 1000, 3)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 4)

    def to_dict(self, *, train_tokens: int | None = None) -> dict:
        """Seconds (and joules) per phase; J/token for training where energy was read."""
        d = {
            "seconds": dict(self.seconds),
            "total_seconds": round(sum(self.seconds.values()), 4),
            "joules": dict(self.joules) if self._read else None,
            "energy_source": self.source,
        }
        if d["joules"] and d["joules"].get("train") is not None and train_tokens:
            d["train_joules_per_token"] = round(d["joules"]["train"] / train_tokens, 9)
        return d
