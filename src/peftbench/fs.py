"""Path checks on user input that answer False instead of raising (names too long, NUL bytes).

Usage: ``fs.is_file(user_path)``; ``fs.exists(p)``; ``fs.is_dir(p)``.
"""

from __future__ import annotations

from pathlib import Path


def _safe(check, path) -> bool:
    try:
        return check(Path(path).expanduser())
    except (OSError, ValueError):  # ENAMETOOLONG, embedded NUL byte, ...
        return False


def exists(path) -> bool:
    return _safe(Path.exists, path)


def is_file(path) -> bool:
    return _safe(Path.is_file, path)


def is_dir(path) -> bool:
    return _safe(Path.is_dir, path)
