"""Fault injection for the tests: die at a named point as a kill -9 would, or find the disk full there.

Usage:
    PEFTBENCH_FAULT=adapter-written peftbench run ...              # every run dies there
    PEFTBENCH_FAULT=result-written@my-run peftbench run ...        # only run ``my-run``
    PEFTBENCH_FAULT=disk-full:adapter-written peftbench run ...    # the write there fails with ENOSPC
"""

from __future__ import annotations

import errno
import os
import signal

FAULT_ENV = "PEFTBENCH_FAULT"  # "[disk-full:]POINT[@RUN_ID]"


def fault_point(name: str, run_id: str, *, path=None) -> None:
    """Die here as a kill -9 would (or fail as a full disk does, writing ``path``) when a test asks."""
    fault = os.environ.get(FAULT_ENV) or ""
    kind, _, where = fault.rpartition(":")
    if where not in (name, f"{name}@{run_id}"):
        return
    if kind == "disk-full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path else None)
    os.kill(os.getpid(), signal.SIGKILL)
