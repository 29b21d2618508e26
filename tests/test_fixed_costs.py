"""What each run's process pays beyond its work (issue 26): no library imported that the run does not need, no
lookup repeated per call, graphs that stay static when only the epoch's last batch is smaller."""

import subprocess
import sys

from peftbench.measure import memory
from peftbench.run.train import compile_dynamic


def test_quieting_the_libraries_imports_none_of_them():
    code = (
        "import os, sys\n"
        "from peftbench.run.progress import quiet_libraries\n"
        "quiet_libraries()\n"
        "print('datasets' in sys.modules, os.environ['DATASETS_VERBOSITY'], os.environ['TRANSFORMERS_VERBOSITY'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "error", "error"]


def test_libc_is_looked_up_once_per_process(monkeypatch):
    import ctypes.util

    calls = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: calls.append(name) or real(name))
    memory._malloc_trim.cache_clear()
    try:
        for _ in range(3):
            memory.release_free_memory()
    finally:
        memory._malloc_trim.cache_clear()
    assert calls == ["c"]


def test_fixed_length_examples_compile_static_graphs_varying_ones_dynamic():
    blocks = [{"input_ids": [1] * 8, "labels": [1] * 8} for _ in range(10)]  # 10 blocks, batch 4: a last batch of 2
    assert compile_dynamic(blocks) is False  # the last batch gets a static graph of its own, not a dynamic one
    assert compile_dynamic(blocks + [{"input_ids": [1] * 5, "labels": [1] * 5}]) is True
