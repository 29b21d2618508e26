"""Fault injection for the tests: die at a named point as a kill -9 would.

Usage:
    PEFTBENCH_FAULT=adapter-written peftbench run ...      # every run dies there
    PEFTBENCH_FAULT=result-written@my-run peftbench run ... # only run ``my-run``
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "PEFTBENCH_FAULT"  # "POINT" or "POINT@RUN_ID" kills the process there (SIGKILL)


def fault_point(name: str, run_id: str) -> None:
    """Die here as a kill -9 would, when the fault-injection tests ask for it."""
    if os.environ.get(FAULT_ENV) in (name, f"{name}@{run_id}"):
        os.kill(os.getpid(), signal.SIGKILL)
