"""What a run's compilation cost, read from torch's own clock (``torch._dynamo.utils.compilation_time_metrics``):
seconds in dynamo's frame compilation (tracing, and the forward graphs' code generation inside it) and in the
backward graphs' compilation at their first backward, beside the warm-up they sit in (``train.speed``'s
``compile_seconds``). The kernels' autotuning at their first launch and CUDA graphs' recording are not in it: they
are the rest of the warm-up."""

from __future__ import annotations

import sys

FORWARD = "_compile.compile_inner"  # one entry per compiled frame
BACKWARD = "compile_fx.<locals>.bw_compiler"  # one entry per backward graph


def _clock() -> dict | None:
    """torch's table of compilation times, where its compiler is imported (nothing compiled otherwise)."""
    utils = sys.modules.get("torch._dynamo.utils")
    table = getattr(utils, "compilation_time_metrics", None)
    return table if isinstance(table, dict) else None


def snapshot() -> dict[str, tuple[int, float]]:
    table = _clock() or {}
    out = {key: (len(table.get(key, ())), float(sum(table.get(key, ())))) for key in (FORWARD, BACKWARD)}
    return {**out, "metrics": (len(_per_frame()), 0.0)}


def _per_frame() -> list:
    """torch's record of each compiled frame (name, seconds), where it keeps one."""
    utils = sys.modules.get("torch._dynamo.utils")
    try:
        return list(utils.get_compilation_metrics()) if utils is not None else []
    except Exception:  # a private API: its absence costs the detail, not the run
        return []


def _slowest(before: int, n: int = 5) -> list[dict]:
    """The slowest frames compiled since the ``before``-th: their code's name and seconds (tracing and the
    forward graph's code generation)."""
    frames = [
        {"frame": getattr(m, "co_name", None), "seconds": round(getattr(m, "entire_frame_compile_time_s", 0) or 0, 3)}
        for m in _per_frame()[before:]
    ]
    return sorted(frames, key=lambda f: -f["seconds"])[:n]


def since(before: dict[str, tuple[int, float]]) -> dict | None:
    """Seconds compiled since ``before`` (``snapshot()``): {"seconds": all, "backward": the backward graphs' part,
    "frames": frames dynamo looked at, "slowest": the slowest frames}; None where nothing was compiled. A backward
    graph found in the compile cache is loaded with its forward graph: its seconds are in the forward's."""
    after = snapshot()
    frames = after[FORWARD][0] - before[FORWARD][0]
    if not frames and after[BACKWARD][0] == before[BACKWARD][0]:
        return None
    forward, backward = (after[k][1] - before[k][1] for k in (FORWARD, BACKWARD))
    return {
        "seconds": round(forward + backward, 3),
        "backward": round(backward, 3),
        "frames": frames,
        "slowest": _slowest(before.get("metrics", (0, 0.0))[0]),
    }
