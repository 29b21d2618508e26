"""Errors the command line turns into exit codes.

Usage: ``raise ConfigError("data.task: unknown task 'x' (known: ...)")``.
"""


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


class Skipped(Exception):
    """The run cannot happen here (a quantised base without CUDA): recorded as ``skipped``, not failed."""
