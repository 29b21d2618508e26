"""Result records: a typed, torch-free dataclass, strict-JSON atomic writes, the folder lock.

Usage:
    result = Result(id="x", run_id="x--seed1", status="success", config={...}, config_hash="...")
    write_result(out_dir, result)                  # results/<run_id>.json, temp file + rename
    read_result(path) -> Result | None; load_results(out_dir) -> list[dict]
    with FolderLock(out_dir): ...                  # one run per output folder at a time

One JSON per run (an experiment at one seed and one learning rate), schema ``peftbench.result/2``
(README.md lists the fields). /2 added ``run_id``, ``config_hash``, ``attempt``, ``resolved``,
``validation`` and the quality intervals, samples and baselines; /1 files are not read (their runs
are planned again). Files are strict JSON: NaN and infinities become null. Writes cannot be cut
in half by Ctrl-C or SIGTERM: the signals wait until the rename is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from peftbench.errors import ConfigError
from peftbench.spec.typecheck import fits

log = logging.getLogger("peftbench")

SCHEMA = "peftbench.result/2"
STATUSES = ("success", "failed", "cancelled", "skipped", "pruned")


@dataclass
class Result:
    """One run's record. Sections are plain dicts whose keys README.md documents."""

    id: str  # the experiment id (seeds and learning rates of one experiment share it)
    run_id: str  # the file name: <id>[--lr<rate>][--seed<n>]
    status: str  # success | failed | cancelled | skipped
    config: dict  # the plan's config, every default filled in (its hash is config_hash); run-time values: resolved
    config_hash: str  # identity of the numbers, with the id (plan.Run.config_hash)
    error: str | None = None
    traceback: str | None = None
    attempt: str | None = None  # token of the process attempt that wrote it
    seed: int | None = None
    resolved: dict = field(default_factory=dict)  # values decided at run time: family, lr, precision
    env: dict = field(default_factory=dict)
    method_resolved: dict | None = None
    model: dict | None = None
    data: dict | None = None
    params: dict | None = None
    storage: dict | None = None
    train: dict | None = None
    validation: dict | None = None  # selection numbers on the validation split (never test)
    quality: dict | None = None  # metric -> point estimate on the test split (null: not meaningful)
    quality_interval: dict | None = None  # metric -> {low, high, level, method, n}
    quality_samples: dict | None = None  # metric -> per-example values for paired comparisons
    quality_baselines: dict | None = None  # classification: majority class and chance
    quality_note: str | None = None
    quality_split: str | None = None
    quality_details: dict | None = None
    phases: dict | None = None  # seconds (and NVML joules) per phase: plan, startup, load, encode, train, ...
    trial: dict | None = None  # a search's trial: {number, params, default}
    forgetting: dict | None = None  # NLL increase on general text, base before vs trained after (per window)
    generation: dict | None = None
    inference: dict | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_seconds: float | None = None
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        return {"schema": self.schema, **{k: v for k, v in dataclasses.asdict(self).items() if k != "schema"}}

    @classmethod
    def from_dict(cls, d: Any) -> Result | None:
        """A record read back, or None when it is not a /2 result (other schema, missing keys, a
        field of the wrong kind)."""
        return None if problem_of(d) else cls(**{k: v for k, v in d.items() if k in _FIELDS})


_FIELDS = {f.name for f in dataclasses.fields(Result)}


def problem_of(d: Any) -> str | None:
    """Why ``d`` is not a /2 result record (None when it is one): the report names it and skips it."""
    if not isinstance(d, dict):
        return f"not a JSON object ({type(d).__name__})"
    if d.get("schema") != SCHEMA:
        return f"schema {str(d.get('schema'))[:40]!r}, not {SCHEMA}"
    if d.get("status") not in STATUSES:
        return f"status {str(d.get('status'))[:40]!r} is not one of {', '.join(STATUSES)}"
    hints = typing.get_type_hints(Result)
    required = [f.name for f in dataclasses.fields(Result) if dataclasses.MISSING is f.default is f.default_factory]
    missing = [name for name in required if name not in d]
    if missing:
        return f"no {', '.join(missing)}"
    wrong = [k for k in _FIELDS if k in d and not fits(d[k], hints[k])]
    return f"{', '.join(sorted(wrong))}: not of the documented kind" if wrong else None


def now() -> str:
    return timestamp(datetime.now(UTC).timestamp())


def timestamp(seconds: float) -> str:
    """A Unix time as UTC ISO 8601 to the second, the form of every time in a result."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- writing


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends, so a file write and its rename finish together.

    Python-level handlers that only note the signal, then the old handlers and the signal again: a
    thread mask would not do, since the kernel hands a process signal to any thread that does not
    block it (torch's worker threads), and Python then runs the handler in the main thread anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in dict.fromkeys(received):
            signal.raise_signal(s)  # now handled as it would have been


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def umask() -> int:
    """The process's file-creation mask (reading it means setting it: put it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def strict(obj: Any) -> Any:
    """The object with every NaN and infinity replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    return json.dumps(strict(obj), indent=1, allow_nan=False, default=str) + "\n"


def write_json_atomic(path: Path, obj: dict) -> None:
    write_text_atomic(path, to_json(obj))


def result_path(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / "results" / f"{run_id}.json"


def payload_path(out_dir: Path, run_id: str, attempt: str) -> Path:
    """The run's instructions to its child process (removed when the child ends)."""
    return Path(out_dir) / "results" / f".{run_id}.payload-{attempt}.json"


NAME_MAX = 255  # bytes of one file name on the usual file systems (ext4, xfs, btrfs, tmpfs, APFS)


def longest_name(run_id: str) -> int:
    """Bytes of the longest file name a run writes: the payload's temporary file (a dot, the payload's name
    with its 12-character attempt, a dot and mkstemp's 8 characters); results, attempts, adapter temp
    folders (``.<run>-XXXXXXXX``) and the old adapter's (``.<run>-old-<pid>``) are shorter."""
    payload = payload_path(Path(), run_id, "0" * 12).name
    return len(f".{payload}.{'x' * 8}".encode())


def measurement_group(config: dict) -> str | None:
    """The measurement stage's group of a run (``measurements/<group>.json``), from its config: runs of one
    model (as loaded) and task under one measurement setting are timed together. None: the run times
    itself (``measure.stage: off``, measurement off, or a quantised base, which only its own run holds)."""
    m, model = config.get("measure") or {}, config.get("model") or {}
    if m.get("stage") != "on" or not m.get("enabled", True) or model.get("quantization"):
        return None
    key = json.dumps({"model": {k: v for k, v in model.items() if k != "family"}, "measure": m}, sort_keys=True)
    slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in str(model.get("spec")))[-60:].strip("-.")
    return f"{slug}--{(config.get('data') or {}).get('task')}--{hashlib.sha256(key.encode()).hexdigest()[:8]}"


STAGE_SCHEMA = "peftbench.measurements/1"  # measurements/<group>.json, written by measure.stage


def stage_path(out_dir: Path, group: str) -> Path:
    return Path(out_dir) / "measurements" / f"{group}.json"


def stage_is_current(out_dir: Path, group: str, run_ids: list[str]) -> bool:
    """Whether the group's measurements are of exactly the runs' current successes (else: measure again). Read
    here, torch-free: the suite's parent asks it of every group without importing the measurement stage."""
    try:
        doc = json.loads(stage_path(out_dir, group).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    now = {}
    for i in run_ids:
        r = read_result(result_path(out_dir, i))
        if r is not None and r.status == "success":
            now[i] = {"config_hash": r.config_hash, "attempt": r.attempt}
    return doc.get("schema") == STAGE_SCHEMA and doc.get("runs") == now


def attempt_path(out_dir: Path, run_id: str) -> Path:
    """Where a failed or cancelled attempt is kept while the run's last success stands in ``results/``."""
    return Path(out_dir) / "attempts" / f"{run_id}.json"


def write_result(out_dir: Path, result: Result) -> Path:
    """``results/<run>.json``; but a failed, cancelled or skipped attempt never replaces a success: it
    goes to ``attempts/<run>.json`` beside it (the success and its adapter stay until a new one succeeds)."""
    path = result_path(out_dir, result.run_id)
    if result.status != "success":
        kept = read_result(path)
        if kept is not None and kept.status == "success":
            path = attempt_path(out_dir, result.run_id)
    write_json_atomic(path, result.to_dict())
    if result.status == "success":
        attempt_path(out_dir, result.run_id).unlink(missing_ok=True)
    return path


def read_attempt(out_dir: Path, run_id: str, attempt: str) -> Result | None:
    """What the attempt ``attempt`` recorded, wherever ``write_result`` put it."""
    for path in (result_path(out_dir, run_id), attempt_path(out_dir, run_id)):
        r = read_result(path)
        if r is not None and r.attempt == attempt:
            return r
    return None


# ---------------------------------------------------------------- reading


def read_result(path: Path) -> Result | None:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Result.from_dict(d)


def state(path: Path, config_hash: str) -> str:
    """``done`` (success with this config), ``stale`` (a result of another config), ``failed``,
    ``cancelled``, or ``todo`` (no readable result)."""
    r = read_result(path)
    if r is None:
        return "todo"
    if r.config_hash != config_hash:
        return "stale"
    return "done" if r.status == "success" else r.status


def describe(out_dir: Path, run_id: str, config_hash: str) -> str:
    """``state`` in words for ``peftbench list``, naming a failed attempt kept beside a success:
    ``stale (last attempt failed: ...)``."""
    s = state(result_path(out_dir, run_id), config_hash)
    tried = read_result(attempt_path(out_dir, run_id))
    if tried is None:
        return s
    error = " ".join(str(tried.error or "").split())
    return f"{s} (last attempt {tried.status}: {error[:120]}{'...' if len(error) > 120 else ''})"


def load_results(folder: Path) -> list[dict]:
    """Every /2 result below ``folder`` (``results/*.json`` or the folder itself), sorted by run id; a
    file that is no such record is skipped with a one-line warning naming it."""
    folder = Path(folder)
    base = folder / "results" if (folder / "results").is_dir() else folder
    out = []
    for f in sorted(base.glob("*.json")):
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("skipped %s: not readable JSON (%s)", f, " ".join(str(e).split())[:120])
            continue
        why = problem_of(d)
        if why:
            log.warning("skipped %s: not a peftbench result (%s)", f, why)
            continue
        out.append(Result.from_dict(d).to_dict())
    return sorted(out, key=lambda d: d["run_id"])


# ---------------------------------------------------------------- the output folder


class FolderLock:
    """An exclusive lock on an output folder (``fcntl.flock`` on ``<out>/.lock``), so two runs into
    one folder never run an experiment twice or overwrite each other's results. The kernel
    releases it when the process dies, so a crash leaves no stale lock."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 300).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"--out {self.path.parent}: in use by another peftbench run ({holder}); "
                "wait for it or use another --out"
            ) from None
        self.fd = fd
        with contextlib.suppress(OSError):  # who holds it: words for the next run's message, if they fit
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now()}".encode())
        return self

    def __exit__(self, *exc) -> bool:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove temp files and folders that a killed run left behind (hold the lock first)."""
    out_dir = Path(out_dir)
    stale = [p for d in ("adapters", "results", "attempts", "measurements") for p in (out_dir / d).glob(".*")]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------- environment


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
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
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
    env["node"] = platform.node()
    if "torch" in sys.modules:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["cuda"] = torch.version.cuda
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_count"] = torch.cuda.device_count()
            env["gpu_uuid"] = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    env["device"] = device
    placement = os.environ.get("PEFTBENCH_PLACEMENT")  # set by an executor (run.executors): where and beside what
    if placement:
        with contextlib.suppress(ValueError):
            env["placement"] = json.loads(placement)
    return env
