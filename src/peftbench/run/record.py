"""Recording one run: ``execute`` runs its recipe and writes whatever happened.

Usage:
    result = execute(run, out_dir=Path("runs/demo"), device="cpu", attempt="3f2a")   # writes the JSON
    result = failure(run, "failed", "killed by signal 9", started=t0, device="cpu", attempt="3f2a")

``execute`` records ``success``, ``failed`` (the error, and "diverged by step N" for a NaN loss),
``skipped`` (a run this machine cannot do) or ``cancelled`` (then re-raises). ``failure`` needs no
recipe: the suite process uses it for a child that died without recording.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from pathlib import Path

from peftbench import fs, results
from peftbench.errors import Cancelled, Diverged, FolderError, Pruned, Skipped
from peftbench.results import Result
from peftbench.run.faults import fault_point
from peftbench.run.plan import Run

log = logging.getLogger("peftbench")


def failure(
    run: Run, status: str, error: str, *, started: float, device: str, attempt: str | None, tb: str | None = None
) -> Result:
    return Result(
        id=run.experiment_id,
        run_id=run.run_id,
        status=status,
        error=error,
        traceback=tb,
        config=run.exp.to_dict(),
        config_hash=run.config_hash,
        attempt=attempt,
        seed=run.seed,
        trial=None
        if run.trial is None
        else {"number": run.trial, "params": run.trial_params, "default": run.trial_default},
        env=results.capture_env(device),
        started_at=results.timestamp(started),
        finished_at=results.now(),
        wall_seconds=round(time.time() - started, 3),
    )


def _known_so_far(result: Result, recipe) -> None:
    """What a failed run had established (its size, where and how it trained): an out-of-memory
    failure says which model did not fit."""
    if getattr(recipe, "params", None):
        total, trainable = recipe.params
        result.params = {"total": total, "trainable": trainable}
    if getattr(recipe, "settings", None):
        result.resolved = recipe.settings.to_dict()
    if getattr(recipe, "phases", None):
        result.phases = recipe.phases.to_dict()
    if result.status == "pruned" and getattr(recipe, "train_started", None):
        result.train = {"seconds": round(time.time() - recipe.train_started, 3)}


def execute(
    run: Run,
    *,
    out_dir: Path,
    device: str,
    attempt: str | None = None,
    tracking: dict | None = None,
    timing: dict | None = None,
) -> Result | None:
    """Run and record one run; re-raises ``Cancelled`` after recording it. None off the main process."""
    started = time.time()
    recipe = None
    try:
        from peftbench.run.recipe import Recipe  # models, data, training: only where a run happens

        recipe = Recipe(run, out_dir=out_dir, device=device, attempt=attempt, tracking=tracking, timing=timing)
        result = recipe.run()
    except (Cancelled, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Cancelled) else signal.SIGINT
        why = f"cancelled by {signal.Signals(signum).name}"
        record(out_dir, failure(run, "cancelled", why, started=started, device=device, attempt=attempt))
        raise Cancelled(signum) from None
    except Skipped as e:  # cannot run on this machine: recorded as such, and the suite goes on
        result = failure(run, "skipped", str(e), started=started, device=device, attempt=attempt)
    except Pruned as e:  # a hopeless trial of a search, stopped early: recorded, and the search goes on
        result = failure(run, "pruned", str(e), started=started, device=device, attempt=attempt)
        _known_so_far(result, recipe)
    except Exception as e:  # recorded, and the suite goes on
        tb = traceback.format_exc(limit=20)
        log.debug("run %s failed\n%s", run.run_id, tb)
        message = str(e) if isinstance(e, Diverged) else f"{type(e).__name__}: {e}".strip()
        message = fs.write_problem(e, out_dir) or message
        result = failure(run, "failed", message, started=started, device=device, attempt=attempt, tb=tb)
        _known_so_far(result, recipe)
    finally:
        from peftbench.measure.memory import free_cached_memory

        free_cached_memory()
    if result is None or int(os.environ.get("RANK", "0") or 0) != 0:  # one process records (the main one)
        return None
    record(out_dir, result)
    fault_point("result-written", run.run_id)
    return result


def record(out_dir: Path, result: Result) -> None:
    """Write the result; a folder that takes no more writes (full, read-only) ends the suite with
    ``FolderError`` (exit 1: runs have started), the lock released on the way out."""
    try:
        results.write_result(out_dir, result)
    except OSError as e:
        problem = fs.write_problem(e, out_dir)
        if problem is None:
            raise
        raise FolderError(f"{result.run_id}: not recorded: {problem}", code=1) from None
