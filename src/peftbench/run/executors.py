"""Several of a suite's runs at once: ``--executor local --jobs N`` on this machine, ``--executor ray`` on a cluster.

Usage (by ``runner.run_suite``):
    options = Options("ray", jobs=8, address="auto")
    check(options, runs=runs, device="cuda", gpus=1)             # ConfigError (exit 2) before anything runs
    with make(options, device="cuda", gpus=1) as ex:            # LocalExecutor or RayExecutor
        future = ex.submit(run, start)                          # start(env) -> Result, or a payload for Ray
        ex.capacity                                             # runs in flight at most

The suite's process (the driver) plans, skips what is done, submits the rest and records every outcome; the
executor only decides where each run's process starts. ``local``: N slots on this machine, each a GPU (N = the
visible GPUs x ``--runs-per-gpu`` unless given) or, on CPU, a share of the cores (``OMP_NUM_THREADS``); each run
is the same fresh child process as in a serial suite, pinned to its slot by ``CUDA_VISIBLE_DEVICES``. ``ray``:
each run is a Ray task asking for whole GPUs (``--gpus``; CPUs with ``--device cpu``); the task starts the same
child process on its worker in a folder of its own and sends the run's result, attempt and adapter back as one
archive, which the driver writes into ``--out`` (no shared file system needed). A worker or node lost mid-run is
retried once by Ray on another worker; lost again, the run is recorded ``failed`` with the cause. The
measurement stage is not spread: it runs after training, on the driver's machine, one group at a time, with
nothing else on its device, so timings never share a GPU. Each result records where it ran
(``env.node``, ``env.gpu_uuid``, ``env.placement``: executor, slot, runs in flight beside it).
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from peftbench.errors import ConfigError

EXECUTORS = ("serial", "local", "ray")
PLACEMENT_ENV = "PEFTBENCH_PLACEMENT"  # the run's placement, read by results.capture_env in the child


@dataclass(frozen=True)
class Options:
    executor: str = "serial"
    jobs: int | None = None  # runs at once (default: one per GPU x runs_per_gpu; on CPU 2)
    address: str | None = None  # ray: auto | HOST:PORT; None starts a local Ray on this machine
    runs_per_gpu: int = 1

    @property
    def parallel(self) -> bool:
        return self.executor != "serial"


def check(options: Options, *, runs, device: str, gpus: int) -> None:
    """The executor's options against the suite: one-line errors before anything runs."""
    if options.executor not in EXECUTORS:
        raise ConfigError(f"--executor: {options.executor!r} is not {', '.join(EXECUTORS)}")
    if options.jobs is not None and options.jobs < 1:
        raise ConfigError(f"--jobs: {options.jobs} is not a positive number of runs at once")
    if options.runs_per_gpu < 1:
        raise ConfigError(f"--runs-per-gpu: {options.runs_per_gpu} is not a positive number")
    if not options.parallel:
        if options.jobs not in (None, 1) or options.runs_per_gpu != 1 or options.address:
            raise ConfigError("--jobs, --runs-per-gpu and --address need --executor local or ray")
        return
    if options.address and options.executor != "ray":
        raise ConfigError("--address: only with --executor ray")
    if options.runs_per_gpu > 1:
        timed = sorted({r.experiment_id for r in runs if r.exp.measure.enabled})
        if timed:
            raise ConfigError(
                f"--runs-per-gpu {options.runs_per_gpu}: timing runs never share a GPU, and {timed[0]} measures "
                "(set measure.enabled: false for a quality-only suite)"
            )
        if device == "cpu":
            raise ConfigError("--runs-per-gpu: not with --device cpu (use --jobs)")
    searches = sorted({r.experiment_id for r in runs if r.trial is not None})
    if searches:
        raise ConfigError(
            f"--executor {options.executor}: {searches[0]} is a search (train.search), whose trials are asked one "
            "after another from the scores so far; run searches with the serial executor"
        )
    if options.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--executor ray: Ray is not installed (pip install 'peftbench[ray]')")


def make(options: Options, *, device: str, gpus: int):
    if options.executor == "ray":
        return RayExecutor(options, device=device, gpus=gpus)
    return LocalExecutor(options, device=device, gpus=gpus)


# ---------------------------------------------------------------- local


def local_slots(options: Options, *, device: str, gpus: int, visible: list[str], cores: int) -> list[dict]:
    """Each slot's environment: the GPUs it owns (``CUDA_VISIBLE_DEVICES``) or, on CPU, its threads."""
    if device == "cpu" or not visible:
        jobs = options.jobs or 2
        threads = max(1, cores // jobs)
        return [{"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} for _ in range(jobs)]
    groups = [visible[i : i + gpus] for i in range(0, len(visible) - gpus + 1, gpus)]
    if not groups:
        raise ConfigError(f"--gpus {gpus}: {len(visible)} CUDA device(s) visible for --executor local")
    jobs = options.jobs or len(groups) * options.runs_per_gpu
    if jobs > len(groups) * options.runs_per_gpu:
        raise ConfigError(
            f"--jobs {jobs}: {len(groups)} slot(s) of {gpus} GPU(s) x --runs-per-gpu {options.runs_per_gpu} hold "
            f"{len(groups) * options.runs_per_gpu} runs at once (timing runs never share a GPU)"
        )
    return [{"CUDA_VISIBLE_DEVICES": ",".join(groups[(i // options.runs_per_gpu) % len(groups)])} for i in range(jobs)]


def visible_gpus(device: str) -> list[str]:
    if device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x for x in listed.split(",") if x.strip()] if listed else [str(i) for i in range(torch.cuda.device_count())]
    return ids[: torch.cuda.device_count()]


class LocalExecutor:
    """N slots on this machine; a run takes a free slot, and its child process gets the slot's environment."""

    def __init__(self, options: Options, *, device: str, gpus: int):
        self.options = options
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.slots = local_slots(options, device=device, gpus=gpus, visible=visible_gpus(device), cores=cores)
        self.capacity = len(self.slots)
        self.free = list(range(self.capacity))
        self.pool = concurrent.futures.ThreadPoolExecutor(self.capacity, thread_name_prefix="peftbench-run")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True)
        return False

    def submit(self, run, start) -> concurrent.futures.Future:
        """``start(env)`` runs the run's child with ``env`` added and returns its Result (called in a thread)."""
        slot = self.free.pop(0)
        placement = {
            "executor": "local",
            "slot": slot,
            "slots": self.capacity,
            "runs_per_gpu": self.options.runs_per_gpu,
        }
        env = {**self.slots[slot], PLACEMENT_ENV: json.dumps(placement)}
        future = self.pool.submit(start, env)
        future.add_done_callback(lambda f, s=slot: self.free.append(s))
        return future

    def cancel(self) -> None:
        """Runs not started yet never start; running ones get the suite's signal from the guard."""
        self.pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- ray


class RayExecutor:
    """Each run a Ray task: its child process on a worker, its files sent back to the driver as an archive."""

    def __init__(self, options: Options, *, device: str, gpus: int):
        import ray

        self.ray = ray
        self.options = options
        self.device = device
        started_here = not ray.is_initialized()
        if started_here:
            kw = {"address": options.address} if options.address else {}
            if not options.address and options.jobs and device == "cpu":
                kw["num_cpus"] = options.jobs
            ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False, **kw)
        self.started_here = started_here
        if device == "cpu":
            self.resources = {"num_cpus": 1, "num_gpus": 0}
        else:
            self.resources = {"num_cpus": 1, "num_gpus": gpus / options.runs_per_gpu}
        total = ray.cluster_resources()
        key = "GPU" if self.resources["num_gpus"] else "CPU"
        per = self.resources["num_gpus"] or 1
        fits = int(total.get(key, 0) / per)
        if fits < 1:
            raise ConfigError(f"--executor ray: the cluster has {total.get(key, 0):g} {key}s, a run asks {per:g}")
        self.capacity = min(options.jobs or fits, fits)
        self.task = ray.remote(max_retries=1, retry_exceptions=False)(run_on_worker)
        self.refs: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started_here:
            self.ray.shutdown()
        return False

    def submit(self, run, payload: dict):
        """``payload``: the child's instructions (``runner.run_payload``); the future gives the worker's reply."""
        placement = {"executor": "ray", "slots": self.capacity, "runs_per_gpu": self.options.runs_per_gpu}
        ref = self.task.options(**self.resources).remote(payload, self.device_gpus(), placement)
        self.refs[ref] = run.run_id
        future = ref.future()
        future.add_done_callback(lambda f, r=ref: self.refs.pop(r, None))
        return future

    def device_gpus(self) -> int:
        return 0 if self.device == "cpu" else max(1, int(self.resources["num_gpus"]))

    def cancel(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)  # kills the worker; the run's child dies with it (PDEATHSIG)


def run_on_worker(payload: dict, gpus: int, placement: dict) -> dict:
    """On a Ray worker: the run's child process in a folder of its own; returns its exit code and its files.
    ``PEFTBENCH_FAULT=worker-lost:RUN_ID`` (tests) ends the worker itself the first time it takes that run."""
    import platform
    import subprocess

    import ray

    from peftbench import results
    from peftbench.run.child import child_command

    _maybe_lose_worker(payload["run_id"])
    began = time.time()
    placement = {**placement, "ray_node_id": ray.get_runtime_context().get_node_id()}
    work = Path(tempfile.mkdtemp(prefix="peftbench-ray-"))
    payload = {**payload, "out_dir": str(work)}
    path = results.payload_path(work, payload["run_id"], payload["attempt"])
    results.write_json_atomic(path, payload)
    env = {**os.environ, PLACEMENT_ENV: json.dumps(placement)}  # the node is in the result's env.node
    if gpus == 0:
        env.setdefault("OMP_NUM_THREADS", "1")
    code = subprocess.run(child_command(path, max(1, gpus)), env=env).returncode
    path.unlink(missing_ok=True)
    files = pack(work, payload["run_id"])
    shutil.rmtree(work, ignore_errors=True)
    return {"code": code, "node": platform.node(), "files": files, "began": began, "ended": time.time()}


def _maybe_lose_worker(run_id: str) -> None:
    """Tests: ``PEFTBENCH_FAULT=worker-lost:RUN`` loses the worker the first time (``PEFTBENCH_FAULT_MARK``
    remembers it), ``worker-lost-always:RUN`` every time."""
    fault = os.environ.get("PEFTBENCH_FAULT", "")
    if fault == f"worker-lost-always:{run_id}":
        os._exit(1)
    if fault == f"worker-lost:{run_id}":
        mark = Path(os.environ.get("PEFTBENCH_FAULT_MARK") or Path(tempfile.gettempdir()) / f"peftbench-lost-{run_id}")
        if not mark.exists():
            mark.write_text("lost once")
            os._exit(1)  # the worker process itself dies, as on a lost node


def pack(folder: Path, run_id: str) -> bytes:
    """The run's result, attempt and adapter files under ``folder``, as a tar archive."""
    from peftbench import results

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in (
            results.result_path(folder, run_id),
            results.attempt_path(folder, run_id),
            folder / "adapters" / run_id,
        ):
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(folder)))
    return buf.getvalue()


def unpack(data: bytes, into: Path) -> Path:
    """The archive ``pack`` made, extracted under ``into`` (a fresh folder): plain files and folders only."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return into
