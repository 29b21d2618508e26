"""Storage: bytes on disk of what was actually written.

Usage:
    dir_bytes(Path("runs/demo/adapters/x"))   # sum of the sizes of every file below the folder
"""

from __future__ import annotations

from pathlib import Path


def dir_bytes(path: Path | str) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def file_sizes(path: Path | str) -> dict[str, int]:
    p = Path(path)
    return {str(f.relative_to(p)): f.stat().st_size for f in sorted(p.rglob("*")) if f.is_file()}
