"""Errors the command line turns into exit codes.

Usage: ``raise ConfigError("data.task: unknown task 'x' (known: ...)")``.
"""


class ConfigError(ValueError):
    """Bad input from the user (config, spec, flag): one line on stderr, exit code 2."""


class SourceError(RuntimeError):
    """An offline source could not be obtained (missing client, failed download, bad checksum)."""
