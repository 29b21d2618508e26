"""Which number is read from where in a result, how it is shown, and which direction is better.

Usage:
    value(result, "latency_p50_ms"); METRICS["latency_p50_ms"].better == "min"

The ``better`` map drives the best-value marks in the tables, the winners in the verdicts and the
Pareto fronts. Reads plain dicts only (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peftbench import stats
from peftbench.catalog.methodspecs import is_zero_shot
from peftbench.catalog.taskspecs import SPECS
from peftbench.fs import human_bytes


def get_in(d: Any, *path: str) -> Any:
    """``d[path[0]][path[1]]...``, or None where a level is missing."""
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _deploy_p50(r: dict) -> Any:
    """Latency as deployed: merged where the method can merge (no adapter overhead), else as is."""
    return get_in(r, "inference", "merged", "latency_ms", "p50_ms") or get_in(r, "inference", "latency_ms", "p50_ms")


def _latency_samples(*path: str) -> Callable[[dict], dict | None]:
    def get(r: dict) -> dict | None:
        values = get_in(r, *path, "samples_ms")
        return stats.samples_of(values) if values else None

    return get


def _deploy_samples(r: dict) -> dict | None:
    return _latency_samples("inference", "merged", "latency_ms")(r) or _latency_samples("inference", "latency_ms")(r)


def _throughput_samples(*path: str) -> Callable[[dict], dict | None]:
    """Generated (or forward) tokens per second at the latency batch, one sample per timed call, of the
    inference record at ``path`` (the model as trained, or ``inference.merged``)."""

    def get(r: dict) -> dict | None:
        inf = get_in(r, *path) or {}
        b = (get_in(r, "inference", "shapes") or {}).get("batch_size")
        gen = (inf.get("scenarios") or {}).get(f"generate_b{b}")
        fwd = (inf.get("scenarios") or {}).get(f"forward_b{b}")
        if gen and gen.get("latency_ms", {}).get("samples_ms"):
            per_call, ms = b * gen["new_tokens"], gen["latency_ms"]["samples_ms"]
        elif fwd and fwd.get("latency_ms", {}).get("samples_ms"):
            per_call = b * (fwd["seq_len"] + (fwd.get("decoder_len") or 0))
            ms = fwd["latency_ms"]["samples_ms"]
        else:
            return None
        return stats.rate_samples([per_call] * len(ms), [m / 1000 for m in ms])

    return get


def _train_rate_samples(r: dict) -> dict | None:
    """Training laps after the warm-up steps (compilation would otherwise widen every interval)."""
    laps = [lap for lap in get_in(r, "train", "laps") or [] if not lap.get("warmup")]
    return stats.rate_samples([lap["tokens"] for lap in laps], [lap["seconds"] for lap in laps]) if laps else None


def train_rate(r: dict) -> float | None:
    """The steady training rate (after the warm-up steps) where recorded, else all steps'."""
    steady = get_in(r, "train", "steady_tokens_per_second")
    return steady if steady is not None else get_in(r, "train", "tokens_per_second")


def _single(getter: Callable[[dict], Any]) -> Callable[[dict], dict | None]:
    """A number measured once per run: across seeds it still gets an interval."""

    def get(r: dict) -> dict | None:
        v = getter(r)
        return stats.samples_of([v]) if isinstance(v, (int, float)) else None

    return get


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    get: Callable[[dict], Any]
    better: str  # "max" | "min"
    fmt: str  # "int" | "bytes" | "float" | "ms" | "pct"
    trained_only: bool = False  # not meaningful for the zero-shot baseline (nothing trained/shipped)
    kind: str = "display"  # quality | exact | timing | memory | display (shown, never compared)
    samples: Callable[[dict], dict | None] | None = None  # one run's per-example / per-call data
    statistic: str | None = None  # stats.STATISTICS name computed from those samples
    unit: str = ""
    views: frozenset = frozenset()  # where it is shown: VIEWS (every view selects by these tags)
    tracked_as: str | None = None  # its name in experiment trackers (the last step's values)
    axis: tuple | None = None  # the Pareto view's x axis: (place, label, log scale)
    stage: tuple | None = None  # in a measurement stage: (candidate: unmerged | merged | deployed, forward | generate)
    across_runs: bool = False  # timed inside each run (training): drift between runs is measured, not guessed

    @property
    def relative(self) -> bool:
        """Efficiency is compared as a ratio (percent); quality as a difference in its own unit."""
        return self.kind in ("timing", "memory")


# The views that select metrics by tag, in declaration order (the verdict puts quality first)
VIEWS = ("table", "verdict", "csv", "pareto")
TABLE, VERDICT, CSV, PARETO = (frozenset(v) for v in (("table", "verdict", "csv"), ("verdict", "csv"), ("csv",), ()))


# Effects smaller than this (percent) are ties even when their interval excludes 0: an interval
# inside one run cannot see the drift between processes (clock boosts, neighbours on a shared
# machine, allocator state). Measured here: the same architecture timed in two processes minutes
# apart (the zero-shot base against the fully fine-tuned or the merged model, 2-core CPU, the demo)
# differed by up to 17 %; eager batch-1 forwards on an H200, launch-bound, by up to 60 % between
# seeds. With several seeds the t-interval over seeds holds that drift as well.
MARGIN_PERCENT = {("timing", "cpu"): 25.0, ("memory", "cpu"): 20.0, ("timing", "cuda"): 10.0, ("memory", "cuda"): 3.0}


def margin(metric: Metric, device: str, runs: list[dict] = (), *, drift: float | None = None) -> float:
    """Effects under this (percent) are ties. A measure timed inside runs at different moments (training)
    whose runs timed the reference workload before and after (``train.reference_ms``): when those
    references moved by more than the fixed margin between the compared runs, the machine changed under
    them (a load came or went) and their speeds are not compared at all (an infinite margin: a load
    slows training and the reference by different factors, so no margin derived from it would hold).
    ``drift``: the machine's move measured otherwise (compare: between two studies' timings), for any timing."""
    if metric.kind not in ("timing", "memory"):
        return 0.0
    fixed = MARGIN_PERCENT[(metric.kind, "cuda" if str(device).startswith("cuda") else "cpu")]
    if drift is None or metric.kind != "timing":
        drift = drift_percent(runs) if metric.across_runs else None
    return math.inf if drift is not None and drift > fixed else fixed


def drift_percent(runs: list[dict]) -> float | None:
    """How much the machine's speed moved across these runs (max over min, less one): their reference timings
    before and after training, and on GPUs the SM clock their steady laps ran at (``train.gpu_clock_mhz``'s
    median: a GPU slowed by its power or thermal limit trains slower with the same code); the larger of the two."""
    refs = [v for r in runs for v in (get_in(r, "train", "reference_ms") or {}).values() if v]
    clocks = [get_in(r, "train", "gpu_clock_mhz", "median") for r in runs]
    moves = [
        round(100 * (max(xs) / min(xs) - 1), 2)
        for xs, complete in ((refs, len(refs) == 2 * len(runs)), (clocks, all(clocks)))
        if runs and complete
    ]
    return max(moves) if moves else None


QUALITY = {
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "bleu": "BLEU",
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "perplexity": "perplexity",
}
PRIMARY_QUALITY = {name: spec.primary for name, spec in SPECS.items()}
LOWER_IS_BETTER = frozenset().union(*(spec.lower_is_better for spec in SPECS.values()))

METRICS: dict[str, Metric] = {
    m.key: m
    for m in [
        Metric(
            "trainable",
            "trainable params",
            lambda r: get_in(r, "params", "trainable"),
            "min",
            "int",
            trained_only=True,
            kind="exact",
            unit="parameters",
            views=frozenset(TABLE),
            tracked_as="params/trainable",
        ),
        Metric(
            "adapter_bytes",
            "storage",
            lambda r: get_in(r, "storage", "adapter_bytes"),
            "min",
            "bytes",
            trained_only=True,
            kind="exact",
            unit="bytes",
            views=frozenset(TABLE | {"pareto"}),
            tracked_as="storage/adapter_bytes",
            axis=(0, "storage to ship (log scale)", True),
        ),
        Metric(  # peft's own count: the weights file(s) alone, without adapter_config.json
            "adapter_weights_bytes",
            "weights",
            lambda r: get_in(r, "storage", "adapter_weights_bytes"),
            "min",
            "bytes",
            trained_only=True,
            kind="exact",
            unit="bytes",
            views=CSV,
        ),
        *[
            Metric(
                k,
                label,
                (lambda key: lambda r: get_in(r, "quality", key))(k),
                "min" if k in LOWER_IS_BETTER else "max",
                "float",
                kind="quality",
                samples=lambda r: r.get("quality_samples"),
                statistic=k,
                unit="" if k == "perplexity" else "points",
                views=TABLE,
                tracked_as=f"test/{k}",
            )
            for k, label in QUALITY.items()
        ],
        Metric(
            "forgetting",
            "forgetting",
            lambda r: get_in(r, "forgetting", "increase"),
            "min",
            "float",
            trained_only=True,
            kind="forgetting",
            samples=lambda r: get_in(r, "forgetting", "samples"),
            statistic="forgetting",
            unit="nats/token",
            views=TABLE,
            tracked_as="forgetting/nll_increase",
        ),
        Metric(
            "train_tokens_per_second",
            "train tok/s",
            train_rate,
            "max",
            "float",
            trained_only=True,
            kind="timing",
            samples=_train_rate_samples,
            statistic="rate",
            unit="tokens/s",
            views=frozenset(TABLE),
            tracked_as="train/steady_tokens_per_second",
            across_runs=True,
        ),
        Metric(
            "train_peak_memory_bytes",
            "train peak mem",
            lambda r: get_in(r, "train", "peak_memory_bytes"),
            "min",
            "bytes",
            trained_only=True,
            kind="memory",
            samples=_single(lambda r: get_in(r, "train", "peak_memory_bytes")),
            statistic="mean",
            unit="bytes",
            views=frozenset(TABLE | {"pareto"}),
            tracked_as="train/peak_memory_bytes",
            axis=(2, "training peak memory", False),
        ),
        Metric(
            "latency_p50_ms",
            "p50 ms",
            lambda r: get_in(r, "inference", "latency_ms", "p50_ms"),
            "min",
            "ms",
            kind="timing",
            samples=_latency_samples("inference", "latency_ms"),
            statistic="median",
            unit="ms",
            views=frozenset({"table", "csv"}),
            tracked_as="inference/p50_ms",
            stage=("unmerged", "forward"),
        ),
        Metric(
            "latency_p95_ms",
            "p95 ms",
            lambda r: get_in(r, "inference", "latency_ms", "p95_ms"),
            "min",
            "ms",
            views=frozenset({"table"}),
        ),
        Metric(
            "merged_p50_ms",
            "merged p50 ms",
            lambda r: get_in(r, "inference", "merged", "latency_ms", "p50_ms"),
            "min",
            "ms",
            kind="timing",
            samples=_latency_samples("inference", "merged", "latency_ms"),
            statistic="median",
            unit="ms",
            views=frozenset({"table", "csv"}),
            stage=("merged", "forward"),
        ),
        Metric(
            "deploy_p50_ms",
            "deployed p50 ms",
            _deploy_p50,
            "min",
            "ms",
            kind="timing",
            samples=_deploy_samples,
            statistic="median",
            unit="ms",
            views=frozenset(VERDICT | {"pareto"}),
            axis=(1, "deployed latency p50 (ms)", False),
            stage=("deployed", "forward"),
        ),
        Metric(
            "throughput",
            "gen tok/s",
            lambda r: get_in(r, "inference", "throughput_tokens_per_second"),
            "max",
            "float",
            kind="timing",
            samples=_throughput_samples("inference"),
            statistic="rate",
            unit="tokens/s",
            views=frozenset(TABLE),
            tracked_as="inference/tokens_per_second",
            stage=("unmerged", "generate"),
        ),
        Metric(
            "merged_throughput",
            "merged gen tok/s",
            lambda r: get_in(r, "inference", "merged", "throughput_tokens_per_second"),
            "max",
            "float",
            kind="timing",
            samples=_throughput_samples("inference", "merged"),
            statistic="rate",
            unit="tokens/s",
            stage=("merged", "generate"),
        ),
        Metric(
            "inference_peak_memory_bytes",
            "infer peak mem",
            lambda r: get_in(r, "inference", "peak_memory_bytes"),
            "min",
            "bytes",
            kind="memory",
            samples=_single(lambda r: get_in(r, "inference", "peak_memory_bytes")),
            statistic="mean",
            unit="bytes",
            views=frozenset(TABLE),
        ),
        Metric(
            "unmerged_overhead_percent",
            "unmerged overhead",
            lambda r: get_in(r, "inference", "merged", "unmerged_overhead_percent"),
            "min",
            "pct",
        ),
    ]
}


def keys_of(view: str) -> list[str]:
    """The metric keys a view shows, in declaration order; ``"QUALITY"`` stands for the task's quality
    metrics (a table shows those of its task only)."""
    keys = []
    for m in METRICS.values():
        if view in m.views:
            key = "QUALITY" if m.kind == "quality" else m.key
            if key not in keys:
                keys.append(key)
    return keys


TABLE_COLUMNS = keys_of("table")
VERDICT_MEASURES = ["QUALITY"] + [k for k in keys_of("verdict") if k != "QUALITY"]  # the question first
CSV_METRICS = [k for key in keys_of("csv") for k in (QUALITY if key == "QUALITY" else [key])]
PARETO_AXES = [(m.key, *m.axis[1:]) for m in sorted((METRICS[k] for k in keys_of("pareto")), key=lambda m: m.axis)]


def value(result: dict, key: str) -> Any:
    m = METRICS[key]
    if m.trained_only and is_zero_shot(method_of(result)):
        return None
    v = m.get(result)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else None  # drop NaN


def method_of(r: dict) -> str:
    return str(get_in(r, "config", "method", "name") or "?")


def model_of(r: dict) -> str:
    return str(get_in(r, "config", "model", "spec") or "?")


def task_of(r: dict) -> str:
    return str(get_in(r, "config", "data", "task") or "?")


def is_random(r: dict) -> bool:
    return model_of(r).startswith("random:") or get_in(r, "model", "pretrained") is False


def fmt(key: str, v: Any) -> str:
    if v is None:
        return "–"
    f = METRICS[key].fmt
    if f == "int":
        return f"{int(v):,}"
    if f == "bytes":
        return human_bytes(v)
    if f == "ms":
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if f == "pct":
        return f"{v:+.1f} %"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def spread(s: dict, f: Callable[[float], str]) -> str:
    """A summary as ``mean [low, high]``, each number through ``f``; the mean alone where it has no interval
    (or is exact: a count has none)."""
    if s.get("low") is None or s.get("high") is None or s.get("how") == "exact":
        return f(s["mean"])
    return f"{f(s['mean'])} [{f(s['low'])}, {f(s['high'])}]"


def best(results: list[dict], key: str) -> tuple[float | None, list[dict]]:
    """The best value of the metric among the results, and the results that reach it."""
    vals = [(value(r, key), r) for r in results]
    vals = [(v, r) for v, r in vals if v is not None]
    if not vals:
        return None, []
    pick = max if METRICS[key].better == "max" else min
    b = pick(v for v, _ in vals)
    return b, [r for v, r in vals if v == b]


def pareto(points: list[tuple[Any, float, float]], better: tuple[str, str]) -> list[Any]:
    """Labels of the non-dominated points; each point is (label, x, y) with a direction per axis."""

    def score(v: float, b: str) -> float:
        return v if b == "max" else -v

    keep = []
    for label, x, y in points:
        sx, sy = score(x, better[0]), score(y, better[1])
        dominated = any(
            score(x2, better[0]) >= sx
            and score(y2, better[1]) >= sy
            and (score(x2, better[0]) > sx or score(y2, better[1]) > sy)
            for l2, x2, y2 in points
            if l2 != label
        )
        if not dominated:
            keep.append(label)
    return keep
