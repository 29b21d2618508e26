"""The driver of a spread suite: the runs not done handed to an executor (``run.executors``), their outcomes
recorded as they finish, one line each with the suite's count and an ETA; a signal cancels what is left.

Usage (the CLI, under ``--executor local|ray``):
    runner.run_suite(suite, out_dir=out, device="cuda", executor=Spread(executors.Options("local", jobs=4)))
"""

from __future__ import annotations

import collections
import concurrent.futures
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

from peftbench import results
from peftbench.run import executors, runner


class Spread:
    """What ``runner.run_suite`` calls instead of its one-by-one loop (``executor=Spread(options)``)."""

    def __init__(self, options: executors.Options):
        self.options = options

    def run(self, runs, **kw) -> tuple[int, int]:
        return run_spread(runs, options=self.options, **kw)


def run_spread(runs, *, suite, options, guard, echo, out_dir: Path, device: str, gpus: int, force: bool, tracking):
    """Every run not done, through the executor; returns (runs failed, runs started)."""
    todo = []
    for i, run in enumerate(runs, 1):
        state = results.state(results.result_path(out_dir, run.run_id), run.config_hash)
        if state == "done" and not force:
            echo(f"[{i}/{len(runs)}] {run.run_id}: done, skipped (--force reruns)")
        else:
            todo.append(run)
    if not todo:
        return 0, 0
    share = suite.plan_seconds / max(1, len(runs))
    ctx = {"out_dir": out_dir, "device": device, "gpus": gpus, "tracking": tracking, "plan_seconds": share}
    failed = finished = 0
    t0 = time.time()
    with executors.make(options, device=device, gpus=gpus) as ex:
        echo(f"{options.executor} executor: {len(todo)} run{'s' * (len(todo) != 1)}, {ex.capacity} at once")
        queue, inflight = collections.deque(todo), {}
        while queue or inflight:
            while queue and len(inflight) < ex.capacity and not guard.received:
                run = queue.popleft()
                echo(f"{run.run_id}: running")
                inflight[_submit(ex, run, guard=guard, **ctx)] = run
            if guard.received:
                break
            done, _ = concurrent.futures.wait(inflight, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                run = inflight.pop(future)
                result = _outcome(future, run, ex, out_dir=out_dir, device=device)
                finished += 1
                eta = (time.time() - t0) / finished * (len(todo) - finished)
                head = f"[{finished}/{len(todo)}] {run.run_id}"
                failed += runner._announce(
                    head, result, _with_eta(echo, eta if queue or inflight else 0), out_dir=out_dir
                )
        if guard.received:
            ex.cancel()
            for future, run in inflight.items():
                _cancelled(future, run, ex, out_dir=out_dir, device=device, signum=guard.received)
                echo(f"{run.run_id}: cancelled")
    return failed, len(todo) - len(queue)


def _with_eta(echo, eta: float):
    return lambda line: echo(f"{line} (ETA {eta:.0f} s)")


def _submit(ex, run, *, guard, out_dir, device, gpus, tracking, plan_seconds):
    if isinstance(ex, executors.LocalExecutor):

        def start(env):
            kw = {"out_dir": out_dir, "device": device, "gpus": gpus, "guard": guard, "tracking": tracking}
            return runner.run_in_child(run, plan_seconds=plan_seconds, env=env, **kw)

        return ex.submit(run, start)
    attempt = uuid.uuid4().hex[:12]
    payload = runner.run_payload(
        run, out_dir=out_dir, device=device, attempt=attempt, tracking=tracking, timing={"spawned_at": time.time()}
    )
    future = ex.submit(run, payload)
    future.attempt, future.started = attempt, time.time()
    return future


def _outcome(future, run, ex, *, out_dir: Path, device: str):
    """The run's Result: what its child recorded (written into ``out_dir``), or how its worker was lost."""
    if isinstance(ex, executors.LocalExecutor):
        return future.result()  # run_in_child recorded it, death and the slot's span included
    from peftbench.run.record import failure

    try:
        reply = future.result()
    except Exception as e:  # noqa: BLE001 (Ray's errors: the worker or its node lost twice, the task cancelled)
        why = f"its Ray worker was lost and the retry failed too ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        result = failure(run, "failed", why, started=future.started, device=device, attempt=future.attempt)
        results.write_result(out_dir, result)
        return result
    return _receive(reply, run, out_dir=out_dir, device=device, attempt=future.attempt, started=future.started)


def _receive(reply: dict, run, *, out_dir: Path, device: str, attempt: str, started: float):
    """The worker's archive written into ``out_dir`` as a local run writes it: a failure never replaces a success,
    a success replaces the run's adapter."""
    from peftbench.run.record import failure

    with tempfile.TemporaryDirectory(prefix="peftbench-received-") as tmp:
        got = executors.unpack(reply["files"], Path(tmp))
        recorded = results.read_attempt(got, run.run_id, attempt)
        if recorded is None:
            why = f"{runner._death(reply['code'])} (on Ray node {reply['node']})"
            recorded = failure(run, "failed", why, started=started, device=device, attempt=attempt)
        else:  # when the run's process ran on its worker (env.placement): which runs shared the machine with it
            placement = (recorded.env or {}).get("placement")
            if placement is not None:
                placement.update(began=round(reply["began"], 3), ended=round(reply["ended"], 3))
        if recorded.status == "success" and (got / "adapters" / run.run_id).exists():
            target = Path(out_dir) / "adapters" / run.run_id
            staged = target.with_name(f".{run.run_id}.received-{attempt}")
            shutil.copytree(got / "adapters" / run.run_id, staged)
            shutil.rmtree(target, ignore_errors=True)
            staged.rename(target)
        results.write_result(out_dir, recorded)
    return recorded


def _cancelled(future, run, ex, *, out_dir: Path, device: str, signum: int) -> None:
    """A run still in flight when the suite was signalled: cancelled, unless its child recorded that itself."""
    from peftbench.run.record import failure

    if isinstance(ex, executors.LocalExecutor):
        try:
            future.result(timeout=runner.GRACE_SECONDS + 5)  # the child got the signal and records `cancelled`
            return
        except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError):
            pass  # never started, or its child did not record in time: recorded here
    why = f"cancelled by {signal.Signals(signum).name}"
    started = getattr(future, "started", time.time())
    attempt = getattr(future, "attempt", uuid.uuid4().hex[:12])
    results.write_result(out_dir, failure(run, "cancelled", why, started=started, device=device, attempt=attempt))
