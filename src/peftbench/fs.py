"""Path checks on user input that answer False instead of raising (names too long, NUL bytes), and
the one-line words for a folder that cannot take a write (full, read-only).

Usage: ``fs.is_file(user_path)``; ``fs.exists(p)``; ``fs.is_dir(p)``; ``fs.free_bytes(out)``;
``fs.write_problem(os_error, out)`` -> "runs/x: no space left on its file system (0 B free) ..." or None;
``fs.human_bytes(1_500_000)`` -> "1.5 MB".
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# errors of the folder, not of the program: full, read-only, not ours to write, over quota
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on its file system",
    errno.EDQUOT: "over the disk quota",
    errno.EROFS: "on a read-only file system",
    errno.EACCES: "not writable (permission denied)",
    errno.EPERM: "not writable (operation not permitted)",
}


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


def free_bytes(path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent), or None."""
    p = Path(path).absolute()
    while not exists(p) and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: float) -> str:
    """Bytes in decimal units, three significant digits (the report's and the command line's)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} B"


def write_problem(error: BaseException, folder) -> str | None:
    """One line naming ``folder`` and its free space when ``error`` is the folder's fault, else None."""
    if not isinstance(error, OSError) or error.errno not in WRITE_ERRNOS:
        return None
    free = free_bytes(folder)
    return (
        f"{folder}: {WRITE_ERRNOS[error.errno]} ({'unknown' if free is None else human_bytes(free)} free) writing "
        f"{Path(error.filename).name if error.filename else 'a file'}; free space or use another --out"
    )
