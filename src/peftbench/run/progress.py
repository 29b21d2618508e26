"""Progress of long phases: tqdm bars on a terminal; elsewhere (log files, CI, nohup) a plain line
at least every 10 % of the phase and whenever 30 s have passed since the last line.

Usage:
    with progress(total=300, desc="train x") as bar:
        bar.set_postfix(loss="2.31")
        bar.update(1)
    quiet_libraries()    # the libraries' own warnings and bars off: they would bury these lines
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm

LINE_EVERY_FRACTION = 0.10  # a line per tenth of the phase...
LINE_EVERY_SECONDS = 30.0  # ...and at least this often while updates come in


class LineProgress:
    """tqdm's small API (update, set_postfix, set_postfix_str, n, a context manager) as log lines."""

    def __init__(self, *, total: int | None = None, desc: str = "", file=None, clock=time.monotonic):
        self.total, self.desc, self.file, self.clock = total, desc, file or sys.stderr, clock
        self.n = self.last_n = 0
        self.postfix = ""
        self.start = self.last_time = clock()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> bool:
        if exc[0] is None and self.n != self.last_n:
            self._line()
        return False

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, k: int = 1) -> None:
        self.n += k
        every = max(1, int(self.total * LINE_EVERY_FRACTION)) if self.total else None
        due = (every is not None and self.n - self.last_n >= every) or (self.total and self.n >= self.total)
        if due or self.clock() - self.last_time >= LINE_EVERY_SECONDS:
            self._line()

    def _line(self) -> None:
        now = self.clock()
        elapsed = now - self.start
        head = f"{self.desc}: {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f} %)" if self.total else "")
        parts = [head] + ([self.postfix] if self.postfix else []) + [f"{elapsed:.0f} s"]
        if self.total and 0 < self.n < self.total and elapsed > 0:
            parts.append(f"ETA {(self.total - self.n) * elapsed / self.n:.0f} s")
        print(", ".join(parts), file=self.file, flush=True)
        self.last_time, self.last_n = now, self.n


def progress(*, total: int | None = None, desc: str = "", file=None):
    file = file or sys.stderr
    if hasattr(file, "isatty") and file.isatty():
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=file)
    return LineProgress(total=total, desc=desc, file=file)


def quiet_libraries() -> None:
    """The libraries' own chatter (deprecations, per-step warnings) would bury our progress lines."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
    # each library reads these at import: set here, they quiet a library that is never imported without importing
    # it (``datasets`` alone takes 0.3-1 s to import, and most runs never need it)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:  # already imported: its settings were read
        transformers = sys.modules["transformers"]
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        datasets = sys.modules["datasets"]
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
