"""One run in its own process: ``python -m peftbench.run.child PAYLOAD.json`` (started by the runner).

Usage (by ``runner.run_in_child``, never by hand):
    python -m peftbench.run.child runs/demo/results/.<run>.payload-<attempt>.json

Exit codes: 0 success recorded, 1 failure recorded, 128+N cancelled by signal N (recorded). The
process dies with its parent (``PR_SET_PDEATHSIG``), so a killed suite leaves no orphan training.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import logging
import signal
import sys
from pathlib import Path

from peftbench.errors import Cancelled, ConfigError, FolderError, cancel_on_signals


def _die_with_parent() -> None:
    libc = ctypes.util.find_library("c")
    if libc and sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(libc).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_command(payload: Path, gpus: int) -> list[str]:
    if gpus > 1:  # one process per GPU, through accelerate's own launcher
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(gpus),
            "-m",
            "peftbench.run.child",
            str(payload),
        ]
    return [sys.executable, "-m", "peftbench.run.child", str(payload)]


def main(argv: list[str]) -> int:
    _die_with_parent()
    cancel_on_signals()
    try:  # a signal while starting up is a cancellation too (the suite records it): no traceback
        from peftbench.run.progress import quiet_libraries
        from peftbench.run.record import execute

        run, d = read_payload(Path(argv[0]))
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("peftbench").setLevel(d.get("log_level") or logging.INFO)
        quiet_libraries()
        # what the imports built lives as long as the process: out of the collector's sight, so each of a run's
        # gc.collect() calls (memory trackers, releases between phases) scans only the run's own objects
        gc.freeze()
        result = execute(
            run,
            out_dir=Path(d["out_dir"]),
            device=d["device"],
            attempt=d["attempt"],
            tracking=d.get("tracking"),
            timing=d.get("timing"),
        )
    except Cancelled as c:
        return 128 + c.signum
    except FolderError as e:  # the full or read-only folder, in one line (the suite's process says it too)
        print(f"peftbench: error: {e}", file=sys.stderr)
        return e.code
    return 0 if result is None or result.status in ("success", "skipped", "pruned") else 1


def read_payload(path: Path) -> tuple:
    """The child's side of ``run_payload``."""
    from peftbench.run.plan import Run
    from peftbench.spec.config import build_experiment, config_hash

    d = json.loads(Path(path).read_text(encoding="utf-8"))
    errors: list[str] = []
    exp = build_experiment(d["exp"], errors=errors)
    if errors:
        raise ConfigError("; ".join(errors))
    if config_hash(exp) != d["config_hash"]:  # the child trains exactly the config the plan hashed
        raise RuntimeError(f"the payload's config hashes to {config_hash(exp)}, the plan's to {d['config_hash']}")
    run = Run(exp, d["experiment_id"], d["run_id"], d["seed"], d["sweep"], d["config_hash"])
    run.trial, run.trial_params, run.trial_default = d.get("trial"), d.get("trial_params"), bool(d.get("trial_default"))
    run.prune = d.get("prune")
    return run, d


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
