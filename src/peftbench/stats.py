"""Intervals and comparisons: bootstrap over examples (and seeds), t-intervals over seeds. Torch-free.

Usage:
    est, low, high = bootstrap_interval(samples, "accuracy")        # one run, 95 % interval
    mean, low, high = t_interval([71.2, 69.8, 73.0])                  # over seeds (scipy's t)
    c = compare([samples_a_seed1, ...], [samples_b_seed1, ...], "accuracy")
    c.effect, c.low, c.high, c.p_value, c.significant

A run's per-example ``samples`` are ``{"n": N, "fingerprint": ..., "params": {...}, "columns":
{name: [N values]}, "block": L}`` (L > 1: a series resampled in contiguous blocks);
each quality metric is a statistic of some columns (``STATISTICS``), so
the report recomputes any metric on a resample without torch. ``compare`` resamples examples
with the same indices for both sides when they were scored on the same examples (paired), and
resamples seeds (paired by seed when both sides ran the same seeds): a two-level bootstrap whose
interval holds both the test-set noise and the seed-to-seed noise. Identical inputs give an
effect of exactly 0 with a [0, 0] interval: a tie, always.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000  # bootstrap resamples: the 2.5/97.5 % tails each hold 50 draws
LEVEL = 0.95
BOOT_SEED = 1234  # fixed, so a report rebuilt from the same results prints the same intervals


# ---------------------------------------------------------------- statistics of per-example columns
# Each takes the columns (numpy arrays, one row per example), an index matrix (B, n) that picks a
# resample per row, and the run's params; it returns B values.


def _mean100(col: str) -> Callable:
    return lambda c, idx, p: 100 * c[col][idx].mean(axis=1)


def _accuracy(c, idx, p):
    return 100 * (c["pred"][idx] == c["gold"][idx]).mean(axis=1)


def _macro_f1(c, idx, p):
    """Macro-F1 over the classes present in the gold labels or predictions of each resample
    (scikit-learn's ``f1_score(average="macro")`` with its default labels)."""
    pred, gold = c["pred"][idx], c["gold"][idx]
    k = int(p.get("n_labels") or (max(pred.max(), gold.max()) + 1))
    out = np.zeros(len(idx))
    f1s = np.zeros((len(idx), k))
    present = np.zeros((len(idx), k), dtype=bool)
    for cls in range(k):
        tp = ((pred == cls) & (gold == cls)).sum(axis=1)
        fp = ((pred == cls) & (gold != cls)).sum(axis=1)
        fn = ((pred != cls) & (gold == cls)).sum(axis=1)
        denom = 2 * tp + fp + fn
        present[:, cls] = denom > 0
        f1s[:, cls] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    count = present.sum(axis=1)
    out = np.where(count > 0, (f1s * present).sum(axis=1) / np.maximum(count, 1), 0.0)
    return 100 * out


def _bleu(c, idx, p):
    """Corpus BLEU (sacrebleu's formula, exp smoothing) from per-sentence n-gram statistics:
    columns ``bleu_stats`` = [sys_len, ref_len, correct1..4, total1..4]."""
    from sacrebleu.metrics.bleu import BLEU

    sums = c["bleu_stats"][idx].sum(axis=1)  # (B, 10)
    return np.array(
        [
            BLEU.compute_bleu(
                correct=[int(x) for x in s[2:6]], total=[int(x) for x in s[6:10]], sys_len=int(s[0]), ref_len=int(s[1])
            ).score
            for s in sums
        ]
    )


def _perplexity(c, idx, p):
    nll, tok = c["nll"][idx].sum(axis=1), c["tokens"][idx].sum(axis=1)
    return np.exp(nll / np.maximum(tok, 1))


def _mean(c, idx, p):
    return c["x"][idx].mean(axis=1)


def _increase(c, idx, p):
    """Forgetting: the mean of after - before over the rows (windows of general text)."""
    return (c["after"][idx] - c["before"][idx]).mean(axis=1)


def _median(c, idx, p):
    return np.median(c["x"][idx], axis=1)


def _rate(c, idx, p):
    return c["volume"][idx].sum(axis=1) / np.maximum(c["seconds"][idx].sum(axis=1), 1e-12)


STATISTICS: dict[str, Callable] = {
    "accuracy": _accuracy,
    "macro_f1": _macro_f1,
    "rouge1": _mean100("rouge1"),
    "rouge2": _mean100("rouge2"),
    "rougeL": _mean100("rougeL"),
    "bleu": _bleu,
    "perplexity": _perplexity,
    "forgetting": _increase,
    # efficiency: latency samples (x), throughput laps (volume, seconds)
    "mean": _mean,
    "median": _median,
    "rate": _rate,
}


def _columns(samples: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=float if k not in ("pred", "gold") else int) for k, v in samples["columns"].items()}


def statistic(samples: dict, name: str) -> float:
    """The statistic on all rows (the point estimate)."""
    n = int(samples["n"])
    return float(STATISTICS[name](_columns(samples), np.arange(n)[None, :], samples.get("params") or {})[0])


def bootstrap_interval(
    samples: dict, name: str, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = BOOT_SEED
) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap over the rows of one run."""
    n = int(samples["n"])
    est = statistic(samples, name)
    if n < 2:
        return est, est, est
    idx = resample_indices(np.random.default_rng(seed), n, resamples, int(samples.get("block") or 1))
    vals = STATISTICS[name](_columns(samples), idx, samples.get("params") or {})
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return est, float(lo), float(hi)


def t_interval(values: Sequence[float], *, level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(mean, low, high) with Student's t over independent replicates (seeds); None below 2 values."""
    from scipy import stats as st

    xs = [float(v) for v in values]
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None, None
    sem = st.sem(xs)
    if sem == 0:
        return mean, mean, mean
    lo, hi = st.t.interval(level, len(xs) - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi)


def log_t_interval(values: Sequence[float], *, level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """A positive quantity's (geometric mean, low, high): ``t_interval`` on the logs, so never below zero."""
    g, lo, hi = t_interval([math.log(v) for v in values], level=level)
    return math.exp(g), None if lo is None else math.exp(lo), None if hi is None else math.exp(hi)


# ---------------------------------------------------------------- comparisons


@dataclass
class Comparison:
    """A minus B, with its interval. ``relative``: the effect is A / B - 1, in percent."""

    effect: float
    low: float
    high: float
    p_value: float
    significant: bool
    test: str
    n_examples: int
    n_seeds: tuple[int, int]
    relative: bool = False
    margin: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_seeds"] = list(self.n_seeds)
        return d


def compare_rounds(a: Sequence[float], b: Sequence[float], *, level: float = LEVEL) -> Comparison:
    """``a`` against ``b`` measured in the same interleaved rounds (one value per round each, positive:
    a time or a rate): the effect is a / b - 1 in percent, from Student's t over the rounds' log ratios,
    so a drift of the machine between rounds moves both sides alike and cancels. Identical inputs give
    0 with a [0, 0] interval; the interval is a ratio's, never past -100 %."""
    from scipy import stats as st

    logs = np.log(np.asarray(a, dtype=float)) - np.log(np.asarray(b, dtype=float))
    n = len(logs)
    mean = float(logs.mean())
    sem = float(logs.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    if sem == 0:
        lo = hi = mean
        p = 1.0 if mean == 0 else 0.0
    elif math.isinf(sem):
        lo, hi, p = -math.inf, math.inf, 1.0
    else:
        lo, hi = st.t.interval(level, n - 1, loc=mean, scale=sem)
        p = float(2 * st.t.sf(abs(mean) / sem, n - 1))
    pct = lambda x: 100 * math.expm1(x) if math.isfinite(x) else x  # noqa: E731
    return Comparison(
        effect=pct(mean),
        low=pct(lo),
        high=pct(hi),
        p_value=p,
        significant=bool(lo > 0 or hi < 0),
        test=f"paired over {n} interleaved rounds (t on the rounds' log ratios)",
        n_examples=n,
        n_seeds=(1, 1),
        relative=True,
    )


def _per_seed(runs: list[dict], name: str, idx_fn: Callable[[dict], np.ndarray]) -> np.ndarray:
    """(S, B) statistic values: each seed's run on the rows that idx_fn(run) picks."""
    return np.stack([STATISTICS[name](_columns(r), idx_fn(r), r.get("params") or {}) for r in runs])


def resample_indices(rng: np.random.Generator, n: int, resamples: int, block: int = 1) -> np.ndarray:
    """(resamples, n) row indices: iid rows, or a moving-block bootstrap (contiguous blocks of
    ``block`` rows) for series such as timed calls, whose neighbours share the machine's state."""
    if block <= 1 or n <= block:
        return rng.integers(0, n, size=(resamples, n))
    k = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(resamples, k))
    return (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]


def compare(
    a: list[dict],
    b: list[dict],
    name: str,
    *,
    relative: bool = False,
    margin: float = 0.0,
    paired_seeds: bool | None = None,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = BOOT_SEED,
) -> Comparison:
    """A against B, each a list of runs (one per seed) of per-example samples.

    Rows are resampled with the same indices on both sides when every run was scored on the
    same examples (same fingerprint): the paired bootstrap. Seeds are resampled too, paired by
    position when ``paired_seeds`` (default: both sides have the same number of seeds). With
    ``relative`` the effect is A / B - 1 in percent. ``significant`` needs the interval to exclude
    0 and the effect to be at least ``margin`` (in the effect's unit) away from 0.
    """
    rng = np.random.default_rng(seed)
    prints = {r.get("fingerprint") for r in a + b}
    ns = {int(r["n"]) for r in a + b}
    paired_rows = len(prints) == 1 and None not in prints and len(ns) == 1
    if paired_seeds is None:
        paired_seeds = len(a) == len(b)
    n = ns.pop() if len(ns) == 1 else min(ns)

    def combine(sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
        return (sa / sb - 1) * 100 if relative else sa - sb

    def full(r: dict) -> np.ndarray:
        return np.arange(int(r["n"]))[None, :]

    est = combine(_per_seed(a, name, full).mean(), _per_seed(b, name, full).mean())
    shared = rng.integers(0, n, size=(resamples, n)) if paired_rows else None

    def draw(r: dict) -> np.ndarray:
        if shared is not None:
            return shared
        return resample_indices(rng, int(r["n"]), resamples, int(r.get("block") or 1))

    va, vb = _per_seed(a, name, draw), _per_seed(b, name, draw)  # (S, B)
    cols = np.arange(resamples)[:, None]
    sa = rng.integers(0, len(a), size=(resamples, len(a)))
    sb = sa if paired_seeds and len(a) == len(b) else rng.integers(0, len(b), size=(resamples, len(b)))
    deltas = combine(va[sa, cols].mean(axis=1), vb[sb, cols].mean(axis=1))
    lo, hi = (float(x) for x in np.percentile(deltas, [50 * (1 - level), 50 * (1 + level)]))
    p = min(1.0, 2 * min(float((deltas <= 0).mean()), float((deltas >= 0).mean())))
    significant = (lo > 0 or hi < 0) and abs(float(est)) >= margin
    test = (
        ("paired" if paired_rows else "unpaired")
        + " bootstrap over "
        + ("examples" if name not in ("mean", "median", "rate") else "timed samples")
        + (f" and {len(a)}/{len(b)} seeds" if max(len(a), len(b)) > 1 else "")
        + f", {resamples} resamples"
    )
    return Comparison(float(est), lo, hi, p, bool(significant), test, n, (len(a), len(b)), relative, margin)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of one family of comparisons, in the input's order: the k-th
    smallest p times (m - k + 1), made monotone and capped at 1. Rejecting where the adjusted p is below
    alpha keeps the chance of any false winner in the family at most alpha, whatever their dependence."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def correct(comps: dict[str, Comparison | None], *, alpha: float = round(1 - LEVEL, 6)) -> dict:
    """The best's comparisons with the others as one family (Holm-Bonferroni over their p-values): a
    comparison stays significant only when its interval excludes zero (and any margin) *and* Holm rejects,
    so the chance of naming any false winner in the group stays at most ``alpha``. Changes ``comps`` in
    place; returns what ``verdict.json`` records (method, family size, each adjusted p)."""
    tested = {k: c for k, c in comps.items() if c is not None}
    adjusted = dict(zip(tested, holm([c.p_value for c in tested.values()])))
    for k, c in tested.items():
        c.significant = bool(c.significant and adjusted[k] < alpha)
    return {"method": "holm", "family_size": len(tested), "alpha": alpha, "p_holm": adjusted}


def fingerprint(items: Sequence[str]) -> str:
    """A short hash of the examples a run was scored on, to know when two runs can be paired."""
    import hashlib

    h = hashlib.sha256()
    for it in items:
        h.update(it.encode("utf-8", "replace"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def block_size(n: int) -> int:
    """Block length of the moving-block bootstrap for a series of n timed calls: n ** 1/3, and plain
    rows below 20 calls, where a handful of blocks would leave too few distinct resamples."""
    return 1 if n < 20 else round(n ** (1 / 3))


def samples_of(values: Sequence[float]) -> dict:
    """Per-call values (e.g. latency in ms) in call order, as samples for ``mean`` / ``median``;
    resampled in contiguous blocks, so slow stretches of a busy machine stay together."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return {"n": len(xs), "fingerprint": None, "params": {}, "columns": {"x": xs}, "block": block_size(len(xs))}


def rate_samples(volumes: Sequence[float], seconds: Sequence[float]) -> dict:
    """Per-interval (volume, seconds) pairs as samples for the ``rate`` statistic (volume / second)."""
    pairs = [(float(v), float(s)) for v, s in zip(volumes, seconds) if s and s > 0]
    return {
        "n": len(pairs),
        "fingerprint": None,
        "params": {},
        "block": block_size(len(pairs)),
        "columns": {"volume": [v for v, _ in pairs], "seconds": [s for _, s in pairs]},
    }
