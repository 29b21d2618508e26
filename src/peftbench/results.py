"""Result files: schema, environment capture, atomic writes, status.

Usage:
    write_result(out_dir / "results" / f"{exp_id}.json", result)   # temp file + rename
    is_complete(path) -> bool; load_results(out_dir) -> list[dict]

One JSON per experiment, schema ``peftbench.result/1``; see README.md for the fields. Reading
needs no torch (the report imports this module).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

SCHEMA = "peftbench.result/1"
STATUSES = ("success", "failed", "cancelled")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True, default=str) + "\n")


def result_path(out_dir: Path, exp_id: str) -> Path:
    return Path(out_dir) / "results" / f"{exp_id}.json"


def read_result(path: Path) -> dict | None:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("schema") == SCHEMA else None


def is_complete(path: Path) -> bool:
    d = read_result(path)
    return bool(d) and d.get("status") == "success"


def load_results(folder: Path) -> list[dict]:
    """Every result JSON below ``folder`` (``results/*.json`` or the folder itself), sorted by id."""
    folder = Path(folder)
    files = sorted((folder / "results").glob("*.json")) if (folder / "results").is_dir() else sorted(folder.glob("*.json"))
    out = [d for d in (read_result(f) for f in files) if d]
    return sorted(out, key=lambda d: d.get("id", ""))


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def capture_env(device: str | None = None) -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "peftbench": _version("peftbench"),
        "git_commit": git_commit(),
        **{pkg: _version(pkg) for pkg in ("torch", "transformers", "peft", "accelerate", "datasets")},
    }
    if "torch" in sys.modules:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["cuda"] = torch.version.cuda
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_count"] = torch.cuda.device_count()
    env["device"] = device
    return env
