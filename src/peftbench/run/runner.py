"""The suite: plan, one fresh child process per run, record how each ended, build the report.

Usage:
    code = run_suite(suite, out_dir=Path("runs/demo"), device="auto")          # one child per run
    code = run_suite(suite, out_dir=..., in_process=True)                      # tests, debugging
    code = run_suite(suite, out_dir=..., gpus=4)                               # accelerate's launcher

A run whose result has the same config hash is skipped (``--force`` reruns); a changed config
runs again and replaces it. Each run starts in a new process (``python -m peftbench.run.child``), so
no run inherits another's heap, allocator caches or CUDA context; a child that dies (SIGKILL, the
OOM killer, a segfault) is recorded as ``failed`` with the cause and the suite goes on. SIGINT and
SIGTERM are passed to the running child, which records ``cancelled``; the suite stops with exit
130 / 143. Under ``accelerate launch`` (several processes already) runs stay in-process.
The output folder is locked for the whole suite, and temp files of killed runs are cleaned first.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

from peftbench import fs, results
from peftbench.errors import Cancelled, ConfigError, FolderError, keep_cancellations
from peftbench.results import Result
from peftbench.run import forked, search
from peftbench.run.child import child_command
from peftbench.run.plan import Run, plan_runs
from peftbench.run.stage import measure_groups, stage_groups

log = logging.getLogger("peftbench")
GRACE_SECONDS = 60  # a signalled child gets this long to record `cancelled` before it is killed


def resolve_device(name: str) -> str:
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: {name!r} is not auto, cpu or cuda")
    if name == "cuda" and not cuda_devices():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return name


@functools.cache
def cuda_devices() -> int:
    """The CUDA devices this process sees, as ``torch.cuda.device_count()`` would say, without importing torch
    where that can be avoided: the suite's process needs no torch of its own, and its import (3.6 s on the H200
    host) stood before the first run's start, outside every phase. torch's build is read from its version file
    (a CPU build sees none) and the driver is asked through ``libcuda`` (``cuInit``, ``cuDeviceGetCount``: it
    honours ``CUDA_VISIBLE_DEVICES``); a ROCm build, or a version file of another form, asks torch itself."""
    import ctypes
    import importlib.util
    import re

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return 0
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        text = ""
    build = dict(re.findall(r"^(cuda|hip)\s*(?::[^=]*)?=\s*(.+?)\s*$", text, flags=re.M))
    if build.get("hip", "None") != "None" or "cuda" not in build:
        import torch

        return torch.cuda.device_count()
    if build["cuda"] == "None":
        return 0
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:  # no driver: torch would see no device either
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def check_gpus(gpus: int, *, device: str) -> None:
    """``--gpus N`` needs N visible CUDA devices."""
    import torch

    have = torch.cuda.device_count() if device != "cpu" else 0
    if have < gpus:
        raise ConfigError(
            f"--gpus {gpus}: {have} CUDA device{'s' * (have != 1)} visible"
            + (" (--device cpu)" if device == "cpu" else "")
        )


def select(runs: list[Run], only: str | None) -> list[Run]:
    """Runs whose experiment id or run id matches the glob (a search is taken whole: its trials depend on
    each other)."""
    if not only:
        return list(runs)
    chosen = [r for r in runs if fnmatch.fnmatch(r.experiment_id, only) or fnmatch.fnmatch(r.run_id, only)]
    if not chosen:
        raise ConfigError(f"--only {only!r} matches no experiment id")
    search.check_selection(runs, {r.run_id for r in chosen})
    return chosen


def launched_world_size() -> int:
    """Processes started by an outer launcher (``accelerate launch``, torchrun); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


# ---------------------------------------------------------------- signals


class _Signals:
    """While the suite runs: SIGINT/SIGTERM are remembered and passed on to the running child;
    in-process, they raise ``Cancelled`` in the main thread."""

    def __init__(self, *, in_process: bool):
        self.in_process = in_process
        self.received: int | None = None
        self.children: set = set()  # the runs' (and a stage's) processes now running

    def __enter__(self):
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        if self.in_process:
            keep_cancellations()
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False

    def _handle(self, signum, frame):
        self.received = self.received or signum
        if self.in_process:
            raise Cancelled(signum)
        for child in list(self.children):
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)


# ---------------------------------------------------------------- one run in a child process


def run_payload(
    run: Run, *, out_dir: Path, device: str, attempt: str, tracking: dict | None = None, timing: dict | None = None
) -> dict:
    return {
        "exp": run.exp.to_dict(),
        "experiment_id": run.experiment_id,
        "run_id": run.run_id,
        "seed": run.seed,
        "sweep": run.sweep,
        "config_hash": run.config_hash,
        "trial": run.trial,
        "trial_params": run.trial_params,
        "trial_default": run.trial_default,
        "prune": run.prune,
        "out_dir": str(out_dir),
        "device": device,
        "attempt": attempt,
        "log_level": logging.getLogger("peftbench").level,
        "tracking": tracking,
        "timing": timing,
    }


def run_in_child(
    run: Run,
    *,
    out_dir: Path,
    device: str,
    gpus: int,
    guard: _Signals,
    tracking: dict | None = None,
    plan_seconds: float | None = None,
    env: dict | None = None,
) -> Result:
    """Start the run in a fresh process and return what it recorded, or record how it died. The process's
    wall time goes into the result's ``phases`` beside the child's own, with what no phase holds. ``env``:
    variables added to the child's environment (an executor's slot: its GPU or its threads)."""
    attempt = uuid.uuid4().hex[:12]
    payload = results.payload_path(out_dir, run.run_id, attempt)
    started = time.time()
    timing = {"spawned_at": started, "plan_seconds": plan_seconds}
    results.write_json_atomic(
        payload, run_payload(run, out_dir=out_dir, device=device, attempt=attempt, tracking=tracking, timing=timing)
    )
    proc = None
    try:
        if gpus == 1 and forked.available():  # a warm interpreter: the imports paid once per suite
            proc = forked.start(payload, env=env)
        else:  # signals come from us
            proc = subprocess.Popen(child_command(payload, gpus), start_new_session=True, env=_env(env))
        guard.children.add(proc)
        code = _wait(proc, guard)
    finally:
        guard.children.discard(proc)
        payload.unlink(missing_ok=True)
    recorded = results.read_attempt(out_dir, run.run_id, attempt)
    if recorded is not None:
        ended = time.time()
        placement = (recorded.env or {}).get("placement")
        if placement is not None:  # an executor's slot: the span its process ran in (who shared the machine)
            placement.update(began=round(started, 3), ended=round(ended, 3))
        if recorded.phases:
            wall = ended - started
            recorded.phases["process_wall_seconds"] = round(wall, 3)
            inside = recorded.phases["total_seconds"] - recorded.phases["seconds"].get("plan", 0.0)  # plan: before
            recorded.phases["outside_phases_seconds"] = round(wall - inside, 3)
        if placement is not None or recorded.phases:
            results.write_result(out_dir, recorded)
        return recorded
    from peftbench.run.record import failure

    if guard.received:
        status, why = "cancelled", f"cancelled by {signal.Signals(guard.received).name}"
    else:
        status, why = "failed", _death(code)
    result = failure(run, status, why, started=started, device=device, attempt=attempt)
    results.write_result(out_dir, result)
    return result


def _env(extra: dict | None) -> dict | None:
    return {**os.environ, **extra} if extra else None


def _wait(proc: subprocess.Popen, guard: _Signals) -> int:
    signalled_at = None
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if guard.received and signalled_at is None:
            signalled_at = time.time()
        if signalled_at is not None and time.time() - signalled_at > GRACE_SECONDS:
            proc.kill()


def _death(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"the run's process was killed by signal {-code} ({name}){hint}"
    return f"the run's process exited with code {code} without recording a result"


# ---------------------------------------------------------------- the suite


def _say(*args, **kw) -> None:
    print(*args, **kw, flush=True)  # a line per event, visible at once in log files and CI


def run_suite(
    suite,
    *,
    out_dir: Path,
    device: str = "auto",
    force: bool = False,
    only: str | None = None,
    report: bool = True,
    in_process: bool = False,
    gpus: int = 1,
    echo=_say,
    tracking: dict | None = None,
    executor=None,
) -> int:
    """Run the suite's runs; returns the exit code (0 all succeeded, 1 some failed, 128+N on signal N).
    ``executor``: ``spread.Spread`` for several runs at once (``--executor local|ray``); None: one by one."""
    device = resolve_device(device)
    if report and is_main_rank():
        _import_report_aside(device)
    runs = select(plan_runs(suite), only)
    in_process = _launched(gpus, in_process=in_process) or in_process
    main = is_main_rank()
    echo = echo if main else lambda *a, **k: None  # every rank runs the loop; one talks
    out_dir = Path(out_dir)
    count = {"started": 0}
    studies = search.studies(runs)
    lock = results.FolderLock(out_dir) if main else contextlib.nullcontext()
    with lock, _Signals(in_process=in_process) as guard, _folder_errors(out_dir, lambda: count["started"]):
        for p in results.clean_stale(out_dir) if main else []:
            log.info("removed %s, left by an interrupted run", p)
        kw = {"out_dir": out_dir, "device": device, "gpus": gpus, "force": force, "tracking": tracking}
        if executor is not None:  # several at once: ``spread.Spread`` hands them to its executor
            failed, count["started"] = executor.run(runs, suite=suite, guard=guard, echo=echo, **kw)
        else:
            failed = _run_serial(runs, suite=suite, studies=studies, guard=guard, echo=echo, count=count, **kw)
        if main and not guard.received:  # searches keep their selected adapters; every group is measured
            _finish_searches(studies, out_dir, echo)
            groups = stage_groups(search.for_stage(plan_runs(suite), out_dir))
            measure_groups(groups, out_dir=out_dir, device=device, in_process=in_process, echo=echo, guard=guard)
        if report and main:
            _report(out_dir, echo)
    if guard.received:
        return 128 + guard.received
    return 1 if failed else 0


def _run_serial(runs, *, suite, studies, guard, echo, count, out_dir, device, gpus, force, tracking) -> int:
    """The runs one after another (searches ask each trial from the ones before); returns the runs failed."""
    failed = 0
    in_process = guard.in_process
    for i, run in enumerate(runs, 1):
        if guard.received:
            break
        study = studies.get(run.experiment_id) if run.trial is not None else None
        run = study.concrete(run) if study else run  # a search's trial: asked now, from those told so far
        head = f"[{i}/{len(runs)}] {run.run_id}"
        state = results.state(results.result_path(out_dir, run.run_id), run.config_hash)
        if (state == "done" or (study and state == "pruned")) and not force:  # a pruned trial stays pruned
            echo(f"{head}: done, skipped (--force reruns)")
            if study:
                study.record(run, search.read(out_dir, run.run_id))
            continue
        echo(f"{head}: running" + (" (config changed)" if state == "stale" else "") + _trial_note(run, study))
        count["started"] += 1
        share = suite.plan_seconds / max(1, len(runs))  # each run's `plan` phase
        kw = {"out_dir": out_dir, "device": device, "guard": guard, "tracking": tracking}
        result = _run_here(run, **kw) if in_process else run_in_child(run, gpus=gpus, plan_seconds=share, **kw)
        if guard.received:
            echo(f"{head}: cancelled")
            break
        failed += _announce(head, result, echo, out_dir=out_dir)
        if study:
            study.record(run, search.read(out_dir, run.run_id) if result is not None else None)
    return failed


def _finish_searches(studies: dict, out_dir: Path, echo) -> None:
    """Complete searches keep the selected trial's adapters only (``train.search.keep``)."""
    for study in studies.values():
        gone = search.drop_unselected_adapters(study, out_dir)
        if gone:
            echo(f"search {study.exp.id}: the adapters of {len(gone)} runs not selected removed (keep: all keeps them)")


def _launched(gpus: int, *, in_process: bool) -> bool:
    """Whether an outer launcher started this process among several; ``--gpus`` cannot start more then."""
    launched = launched_world_size() > 1
    if gpus > 1 and (in_process or launched):
        raise ConfigError(
            "--gpus: not with --in-process or inside accelerate launch (which already starts the processes)"
        )
    return launched


@contextlib.contextmanager
def _folder_errors(out_dir: Path, started):
    """A full or read-only ``--out`` ends the suite in one line (``FolderError``): exit 2 while no run
    has started, 1 after (``started()`` counts them); the lock is released on the way out."""
    try:
        yield
    except OSError as e:
        problem = fs.write_problem(e, out_dir)
        if problem is None:
            raise
        raise FolderError(problem, code=1 if started() else 2) from None


def _run_here(run, *, out_dir: Path, device: str, guard, tracking: dict | None):
    """One run in this process (``--in-process``, or under a launcher); a signal cancels it."""
    from peftbench.run.record import execute

    try:
        return execute(run, out_dir=out_dir, device=device, attempt=uuid.uuid4().hex[:12], tracking=tracking)
    except Cancelled as c:
        guard.received = c.signum
        return None


def _announce(head: str, result, echo, *, out_dir: Path) -> int:
    """One line for a run's outcome; 1 when it failed (None: another process records it)."""
    if result is None:
        return 0
    kept = ""
    if result.status != "success" and results.attempt_path(out_dir, result.run_id).is_file():
        kept = f" (the last success stays in {results.result_path(out_dir, result.run_id)})"
    if result.status == "success":
        echo(f"{head}: {_summary_line(result)}")
    elif result.status == "skipped":
        echo(f"{head}: skipped: {result.error}{kept}")
    elif result.status == "pruned":
        echo(f"{head}: pruned: {result.error}")
    else:
        echo(f"{head}: FAILED {result.error}{kept}")
        return 1
    return 0


def _import_report_aside(device: str) -> None:
    """Where the runs train on a GPU, the report's imports (matplotlib, plotly's figures; 1-3 s, more on a fresh
    machine building its font cache) happen in a thread of this process while they train, not after the last run.
    Not where runs train on this CPU: they would share its cores with the imports and measure slower."""
    if device == "cpu" or (device == "auto" and not Path("/dev/nvidiactl").exists()):
        return
    thread = threading.Thread(target=lambda: importlib.import_module("peftbench.report"), daemon=True)
    thread.start()  # an import the report then finds done (or waits on, under the import's own lock)


def _report(out_dir: Path, echo) -> None:
    from peftbench.report import build_report

    try:
        paths = build_report(out_dir)
    except Exception as e:  # the results are safe on disk; `peftbench report DIR` can retry
        log.warning("report not built: %s: %s", type(e).__name__, e)
        return
    echo(f"report: {paths['md']} (and {paths['html'].name}, {paths['csv'].name}, verdict.json, plots/)")


def _trial_note(run: Run, study) -> str:
    if study is None:
        return ""
    return f" (search trial {run.trial} of 0-{study.setting['trials'] - 1}: {search.describe_params(run)})"


def _summary_line(r: Result) -> str:
    q = {k: v for k, v in (r.quality or {}).items() if v is not None}
    qs = ", ".join(f"{k}={v:.4g}" for k, v in q.items()) or f"quality n/a ({r.quality_note})"
    lat = ((r.inference or {}).get("latency_ms") or {}).get("p50_ms")
    parts = [qs, f"trainable={r.params['trainable']:,}", f"adapter={fs.human_bytes(r.storage['adapter_bytes'])}"]
    if lat is not None:
        parts.append(f"p50={lat:.2f} ms")
    return "; ".join(parts)
