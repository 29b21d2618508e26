"""The measurement stage's files in the report: each run's timings taken from its group's interleaved
measurement, and comparisons paired round by round. Reads JSON only.

Usage:
    results = attach(load_results(out), out)        # r["inference"] from measurements/<group>.json
    c = paired(best_runs, other_runs, metric)       # stats.Comparison over the rounds, or None
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

from peftbench import stats

log = logging.getLogger("peftbench")
STAGE = "_stage"  # the key under which a result (in memory only) holds its group's measurements


def attach(results: list[dict], out_dir: Path) -> list[dict]:
    """Each result measured by a stage gets the stage's inference record of its run (the tables, plots
    and CSV read it as they read a run's own), and the stage document for paired comparisons."""
    docs: dict[str, dict | None] = {}
    for r in results:
        where = ((r.get("inference") or {}).get("stage") or {}).get("file")
        if not where:
            continue
        if where not in docs:
            docs[where] = _read(Path(out_dir) / where)
        doc = docs[where]
        if doc is not None and r["run_id"] in doc.get("inference", {}):
            r["inference"] = doc["inference"][r["run_id"]] | {
                "stage": {"file": where, **doc["inference"][r["run_id"]]["stage"]}
            }
            r[STAGE] = doc
    return results


def _read(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("skipped %s: not readable (%s)", path, " ".join(str(e).split())[:120])
        return None
    return doc if isinstance(doc, dict) and str(doc.get("schema", "")).startswith("peftbench.measurements/") else None


def _candidate(doc: dict, run_id: str, role: str) -> str | None:
    """The candidate the stage timed for a run in a role, as its inference record names it (an alias's
    record names the bit-identical run's candidates)."""
    inf = doc["inference"][run_id]
    main, merged = inf["stage"]["candidate"], ((inf.get("merged") or {}).get("stage") or {}).get("candidate")
    return {"unmerged": main, "merged": merged, "deployed": merged or main}[role]


def _per_round(runs: list[dict], doc: dict, role: str, scenario: str) -> list[float] | None:
    """One side's value per round: its runs' candidates in a role (see ``per_round``)."""
    return per_round(doc, scenario, [_candidate(doc, r["run_id"], role) for r in runs])


def per_round(doc: dict, scenario: str, names: list[str | None]) -> list[float] | None:
    """Per round, the geometric mean over the named candidates (an experiment's seeds) of each one's median
    (None: one of them was not timed in that scenario)."""
    cols = []
    for name in names:
        blocks = (doc["timings"].get(scenario) or {}).get(name) if name else None
        if not blocks:
            return None
        cols.append([statistics.median(block) for block in blocks])
    return [math.exp(sum(math.log(c[i]) for c in cols) / len(cols)) for i in range(len(cols[0]))]


def paired(best_runs: list[dict], other_runs: list[dict], stage: tuple[str, str]) -> stats.Comparison | None:
    """``best`` against ``other`` over the rounds of the stage that measured both (None: not one stage).
    Times on both sides: other / best - 1, so a positive effect means ``best`` is faster (for a rate
    measured from the same calls, higher)."""
    return ratio(other_runs, stage, best_runs, stage)


def ratio(a_runs: list[dict], a_stage: tuple, b_runs: list[dict], b_stage: tuple) -> stats.Comparison | None:
    """Time of A (its candidates in role ``a_stage[0]``) over time of B, less one, paired over the rounds of
    the one stage that measured both: unmerged against merged, an adapter against the base."""
    docs = {id(r.get(STAGE)) for r in a_runs + b_runs}
    if len(docs) != 1 or a_runs[0].get(STAGE) is None or a_stage[1] != b_stage[1]:
        return None
    doc = a_runs[0][STAGE]
    scenario = f"{a_stage[1]}_b{doc['inference'][a_runs[0]['run_id']]['shapes']['batch_size']}"
    a, b = _per_round(a_runs, doc, a_stage[0], scenario), _per_round(b_runs, doc, b_stage[0], scenario)
    return None if a is None or b is None else stats.compare_rounds(a, b)


def reference_ms(doc: dict | None) -> float | None:
    """The stage's reference workload (the base's forward, timed every round): its median over the rounds, in ms."""
    if not doc or "reference" not in doc:
        return None
    rounds = per_round(doc, doc["reference"]["scenario"], ["reference"])
    return statistics.median(rounds) if rounds else None


def notes(results: list[dict]) -> list[str]:
    """One line per stage used by these results: rounds, the reference's spread, noisy or steady."""
    seen, out = set(), []
    for r in results:
        doc = r.get(STAGE)
        if doc is None or id(doc) in seen:
            continue
        seen.add(id(doc))
        spread = 100 * float(doc["reference"]["spread"])
        state = "NOISY: effects stay paired, their intervals wider" if doc.get("noisy") else "steady"
        out.append(
            f"Timings measured together: {len(doc['candidates']) - 1} candidates interleaved over {doc['rounds']} "
            f"rounds (order seed {doc['order_seed']}); the reference workload varied {spread:.1f} % across "
            f"rounds ({state}; noisy above {100 * doc['noisy_threshold']:.0f} %)."
        )
    return out
