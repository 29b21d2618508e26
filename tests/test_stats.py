"""Statistics against known truth: coverage of bootstrap intervals, scipy's t-interval, paired tests
that tie on identical predictions and separate clear differences, metrics recomputed from per-example
columns equal the library's own numbers."""

import math
import random

import numpy as np
import pytest
import sacrebleu
from scipy import stats as st

from peftbench import stats


def bernoulli(p: float, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    pred = [0 if rng.random() < p else 1 for _ in range(n)]
    return {"n": n, "fingerprint": "x", "params": {"n_labels": 2}, "columns": {"pred": pred, "gold": [0] * n}}


def test_bootstrap_interval_of_a_bernoulli_covers_p_at_its_nominal_rate():
    p, n, draws = 0.3, 120, 300
    hits = 0
    for seed in range(draws):
        _, lo, hi = stats.bootstrap_interval(bernoulli(p, n, seed), "accuracy", resamples=1000, seed=seed)
        hits += lo <= 100 * p <= hi
    assert 0.90 <= hits / draws <= 0.98  # nominal 0.95; percentile bootstrap runs slightly narrow at n=120


def test_t_interval_equals_scipy():
    xs = [71.2, 69.8, 73.0, 70.4]
    mean, lo, hi = stats.t_interval(xs)
    half = st.t.ppf(0.975, len(xs) - 1) * np.std(xs, ddof=1) / math.sqrt(len(xs))
    assert (mean, lo, hi) == pytest.approx((np.mean(xs), np.mean(xs) - half, np.mean(xs) + half))
    assert stats.t_interval([5.0]) == (5.0, None, None)
    assert stats.t_interval([2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_paired_test_ties_on_identical_predictions_and_separates_clear_differences():
    a = bernoulli(0.7, 200, 1)
    same = stats.compare([a], [a], "accuracy")
    assert (same.effect, same.low, same.high, same.significant, same.p_value) == (0.0, 0.0, 0.0, False, 1.0)
    better = {**a, "columns": {"pred": [0] * 200, "gold": [0] * 200}}
    clear = stats.compare([better], [a], "accuracy")
    assert clear.significant and clear.low > 0 and clear.effect == pytest.approx(100 - stats.statistic(a, "accuracy"))
    assert clear.test.startswith("paired bootstrap over examples")


def test_two_discordant_examples_in_two_hundred_are_a_tie():
    gold = [0] * 200
    x = {"n": 200, "fingerprint": "f", "params": {}, "columns": {"pred": [0] * 180 + [1] * 20, "gold": gold}}
    y = {"n": 200, "fingerprint": "f", "params": {}, "columns": {"pred": [0] * 178 + [1] * 22, "gold": gold}}
    c = stats.compare([x], [y], "accuracy")
    assert c.effect == pytest.approx(1.0) and not c.significant and c.low <= 0 <= c.high


def test_unpaired_when_the_examples_differ_and_seed_pairing():
    a, b = bernoulli(0.8, 100, 1), bernoulli(0.8, 100, 2)
    b["fingerprint"] = "other"
    assert stats.compare([a], [b], "accuracy").test.startswith("unpaired bootstrap")
    c = stats.compare([a, a], [a, a], "accuracy")
    assert c.effect == 0 and not c.significant and "2/2 seeds" in c.test


def test_relative_timing_comparison_and_margin():
    rng = np.random.default_rng(0)
    slow = stats.samples_of(list(10.0 + rng.normal(0, 0.1, 50)))
    fast = stats.samples_of(list(9.5 + rng.normal(0, 0.1, 50)))
    c = stats.compare([slow], [fast], "median", relative=True)
    assert c.effect == pytest.approx(100 * (10 / 9.5 - 1), abs=0.5) and c.significant
    assert not stats.compare([slow], [fast], "median", relative=True, margin=10.0).significant  # 5 % < 10 %


def test_bleu_from_per_sentence_statistics_equals_sacrebleu_corpus_bleu():
    from peftbench.catalog.tasks import summarization_scores

    refs = ["the cat sat on the mat", "a quick brown fox jumps", "hello world again", "one two three four five"]
    preds = ["the cat sat on a mat", "a quick fox jumps", "hello there world", "one two three"]
    out = summarization_scores(preds, refs)
    assert stats.statistic(out["samples"], "bleu") == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert stats.statistic(out["samples"], "rougeL") == pytest.approx(out["rougeL"], abs=1e-3)


def _macro_f1_reference(pred, gold):
    classes = sorted(set(pred) | set(gold))
    f1 = []
    for c in classes:
        tp = sum(p == c == g for p, g in zip(pred, gold))
        fp = sum(p == c != g for p, g in zip(pred, gold))
        fn = sum(g == c != p for p, g in zip(pred, gold))
        f1.append(2 * tp / (2 * tp + fp + fn))
    return 100 * sum(f1) / len(f1)


@pytest.mark.parametrize("seed", range(6))
def test_macro_f1_statistic_matches_the_definition_including_absent_classes(seed):
    rng = random.Random(seed)
    n = rng.randint(5, 40)
    pred = [rng.choice([0, 1, 3]) for _ in range(n)]  # class 2 never appears, 3 only in predictions
    gold = [rng.choice([0, 1]) for _ in range(n)]
    s = {"n": n, "params": {"n_labels": 4}, "columns": {"pred": pred, "gold": gold}}
    assert stats.statistic(s, "macro_f1") == pytest.approx(_macro_f1_reference(pred, gold))


def test_perplexity_and_rate_statistics():
    s = {"n": 3, "params": {}, "columns": {"nll": [2.0, 4.0, 6.0], "tokens": [1, 2, 3]}}
    assert stats.statistic(s, "perplexity") == pytest.approx(math.exp(12 / 6))
    r = stats.rate_samples([100, 300], [1.0, 2.0])
    assert stats.statistic(r, "rate") == pytest.approx(400 / 3)


def test_block_bootstrap_widens_the_interval_of_a_drifting_series():
    """Timed calls that drift (a machine getting busier) are not independent: contiguous blocks keep
    that in the interval, which an iid bootstrap would hide."""
    xs = [10.0 + 0.1 * i + (0.05 if i % 2 else -0.05) for i in range(64)]  # a slow trend
    blocked = stats.samples_of(xs)
    iid = {**blocked, "block": 1}
    assert blocked["block"] == 4
    _, lo_b, hi_b = stats.bootstrap_interval(blocked, "mean")
    _, lo_i, hi_i = stats.bootstrap_interval(iid, "mean")
    assert hi_b - lo_b > hi_i - lo_i > 0
    idx = stats.resample_indices(np.random.default_rng(0), 10, 5, block=3)
    assert idx.shape == (5, 10) and all((np.diff(row[:3]) == 1).all() for row in idx)


@pytest.mark.parametrize("seed", range(8))
def test_accuracy_and_macro_f1_equal_scikit_learn(seed):
    from sklearn.metrics import accuracy_score, f1_score

    rng = random.Random(100 + seed)
    n = rng.randint(3, 60)
    gold = [rng.choice([0, 1, 2]) for _ in range(n)]
    pred = [rng.choice([0, 1, 3]) for _ in range(n)]  # class 3 only predicted, 2 never predicted
    s = {"n": n, "params": {"n_labels": 5}, "columns": {"pred": pred, "gold": gold}}  # class 4 absent everywhere
    assert stats.statistic(s, "accuracy") == pytest.approx(100 * accuracy_score(gold, pred))
    assert stats.statistic(s, "macro_f1") == pytest.approx(100 * f1_score(gold, pred, average="macro", zero_division=0))


def test_holm_adjusted_p_values_by_hand_and_the_family_wise_rate():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3p, 2p, then monotone
    assert stats.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002]) and stats.holm([]) == []
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # 2 x 0.8 capped at 1, and the larger p never below it
    # ten true nulls, each p uniform: some p < 0.05 in about 40 % of families, Holm's any-rejection rate <= 5 %
    rng = np.random.default_rng(0)
    ps = rng.uniform(size=(4000, 10))
    raw = (ps < 0.05).any(axis=1).mean()
    corrected = np.mean([min(stats.holm(list(row))) < 0.05 for row in ps])
    assert raw > 0.35 and corrected <= 0.06
