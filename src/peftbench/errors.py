"""Errors the command line turns into exit codes, and signals turned into ``Cancelled``.

Usage: ``raise ConfigError("data.task: unknown task 'x' (known: ...)")``; ``cancel_on_signals()`` in a
process that records its run (the child, an in-process suite).
"""

import os
import signal
import sys
import threading

RESEND_SECONDS = 0.01  # a signal swallowed by a finaliser is sent again after this long


class ConfigError(ValueError):
    """Bad input from the user (config, spec, flag): one line on stderr, exit code 2."""


class SourceError(RuntimeError):
    """An offline source could not be obtained (missing client, failed download, bad checksum)."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops at once and is recorded as failed."""


class Cancelled(BaseException):
    """SIGINT or SIGTERM arrived: the running experiment is recorded as cancelled, exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


class FolderError(RuntimeError):
    """The output folder stopped taking writes (full, read-only): one line on stderr; exit 2 when
    found before any run trained, 1 after (what was recorded until then stays)."""

    def __init__(self, message: str, *, code: int):
        super().__init__(message)
        self.code = code


class Skipped(Exception):
    """The run cannot happen here (a quantised base without CUDA): recorded as ``skipped``, not failed."""


class Pruned(Exception):
    """A search's trial stopped early: its periodic validation fell below the median of the earlier trials
    at the same step (``train.search.prune``). Recorded as ``pruned``; the suite goes on."""


def _cancel(signum, frame):
    raise Cancelled(signum)


def cancel_on_signals() -> None:
    """SIGINT and SIGTERM raise ``Cancelled`` in the main thread, wherever it is, and are never lost."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _cancel)
    keep_cancellations()


def keep_cancellations() -> None:
    """A signal handler's ``Cancelled`` that lands while Python runs a finaliser (``__del__``, a weakref
    callback: tensors and loaders run many) is swallowed there: Python prints 'Exception ignored in
    ...' with a ``Cancelled`` traceback and the run goes on until the suite kills it. This hook keeps
    that out of stderr and sends the signal again a moment later (from a timer thread: raised in the
    hook itself it would land in the hook), so it cancels in the code that runs then."""
    previous = sys.unraisablehook
    if getattr(previous, "keeps_cancellations", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, Cancelled):
            again = threading.Timer(RESEND_SECONDS, os.kill, (os.getpid(), unraisable.exc_value.signum))
            again.daemon = True
            again.start()
        else:
            previous(unraisable)

    hook.keeps_cancellations = True
    sys.unraisablehook = hook
