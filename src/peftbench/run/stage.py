"""The measurement stage's place in a suite: which runs are timed together, and the process that times them.

Usage:
    groups = stage_groups(runs)                                 # {group: [run ids]}, in the plan's order
    measure_groups(groups, out_dir=out, device="cpu", in_process=False, echo=print)
    python -m peftbench.run.stage PAYLOAD.json                  # one group, in a process of its own

After a suite's runs have trained, each group (``results.measurement_group``: one model and task under one
measurement setting) is measured once by ``measure.stage.measure_group`` in a process of its own (forked from the
runs' warm server, ``run.forked``), so no candidate inherits a training run's heap or caches, and again only when
one of its runs changed.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import uuid
from pathlib import Path

from peftbench import results
from peftbench.run import forked


def stage_groups(runs) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for run in runs:
        group = results.measurement_group(run.exp.to_dict())
        if group is not None:
            groups.setdefault(group, []).append(run.run_id)
    return groups


def measure_groups(groups: dict[str, list[str]], *, out_dir: Path, device: str, in_process: bool, echo, guard):
    """Measure every group whose measurements are not of its runs' current successes. Torch-free unless a
    group is measured in this process (``in_process``): the stage runs in a process of its own."""
    for group, run_ids in groups.items():
        if guard.received:
            return
        if results.stage_is_current(out_dir, group, run_ids):
            echo(f"measure {group}: done, skipped")
            continue
        echo(f"measure {group}: {len(run_ids)} run{'s' * (len(run_ids) != 1)}, interleaved")
        if in_process:
            from peftbench.measure.stage import measure_group

            measure_group(group=group, run_ids=run_ids, out_dir=out_dir, device=device)
            continue
        payload = out_dir / "measurements" / f".{group}.payload-{uuid.uuid4().hex[:12]}.json"
        results.write_json_atomic(
            payload, {"group": group, "run_ids": run_ids, "out_dir": str(out_dir), "device": device}
        )
        proc = None
        try:
            if forked.available():  # from the warm server, as the runs are: no imports per group
                proc = forked.start(payload, module="peftbench.run.stage")
            else:
                cmd = [sys.executable, "-m", "peftbench.run.stage", str(payload)]
                proc = subprocess.Popen(cmd, start_new_session=True)
            guard.children.add(proc)
            code = proc.wait()
        finally:
            guard.children.discard(proc)
            payload.unlink(missing_ok=True)
        if code != 0 and not guard.received:
            echo(f"measure {group}: FAILED (exit {code}); the runs keep their results, the report lacks their timings")


def main(argv: list[str]) -> int:
    from peftbench.errors import Cancelled, cancel_on_signals
    from peftbench.measure.stage import measure_group
    from peftbench.run.progress import progress, quiet_libraries

    cancel_on_signals()
    try:
        d = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        quiet_libraries()
        gc.freeze()  # the imports' objects out of the collector's sight (see run.child)
        with progress(total=None, desc=f"measure {d['group']} (rounds)") as bar:
            measure_group(
                group=d["group"],
                run_ids=d["run_ids"],
                out_dir=Path(d["out_dir"]),
                device=d["device"],
                progress=lambda r: bar.update(1),
            )
    except Cancelled as c:
        return 128 + c.signum
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
