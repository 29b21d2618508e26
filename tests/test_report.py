"""Report from fixture result JSON: winners only when significant, ties for identical results,
seeds and sweeps aggregated, no quality claims for random weights, the files (verdict.json and
summary.csv columns), HTML embeds every image, and the report imports without torch."""

import copy
import csv
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peftbench import stats
from peftbench.report import aggregate, build
from peftbench.report.metrics import pareto, value
from peftbench.results import load_results

N_TEST = 200


def correct_set(k: int) -> list[int]:
    """Predictions with exactly the first k of N_TEST examples right (gold is always 0)."""
    return [0] * k + [1] * (N_TEST - k)


def result(
    model,
    task,
    method,
    *,
    correct=None,
    trainable=0,
    adapter=0,
    p50=10.0,
    merged_p50=None,
    train_mem=3e9,
    tok_s=100.0,
    random_weights=False,
    seed=42,
    lr=None,
    exp_id=None,
    val=None,
    jitter=0.02,
):
    rng = random.Random(f"{method}|{seed}|{lr}|{exp_id}")  # str seeds are stable; hash() of str is not
    exp_id = exp_id or f"{model.replace(':', '-')}--{task}--{method}"
    run_id = exp_id + (f"--lr{lr:g}" if lr is not None else "") + f"--seed{seed}"
    quality, samples = {"rougeL": None}, None
    if correct is not None:
        pred = correct_set(correct)
        samples = {
            "n": N_TEST,
            "fingerprint": "same-test-set",
            "params": {"n_labels": 2},
            "columns": {"pred": pred, "gold": [0] * N_TEST},
        }
        quality = {"accuracy": stats.statistic(samples, "accuracy"), "macro_f1": stats.statistic(samples, "macro_f1")}
    lat = [p50 * (1 + rng.uniform(-jitter, jitter)) for _ in range(40)]
    mlat = None if merged_p50 is None else [merged_p50 * (1 + rng.uniform(-jitter, jitter)) for _ in range(40)]
    trained = method != "none"
    return {
        "schema": "peftbench.result/2",
        "id": exp_id,
        "run_id": run_id,
        "config_hash": "0",
        "status": "success",
        "seed": seed,
        "error": None,
        "config": {
            "model": {"spec": model},
            "data": {"spec": "builtin:x", "task": task},
            "method": {"name": method},
            "train": {"max_steps": 10, "batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": lr},
        },
        "env": {"cpu_count": 2, "device": "cpu"},
        "model": {"pretrained": not random_weights},
        "data": {"train_examples": 100, "test_examples": N_TEST},
        "params": {"total": 1000, "trainable": trainable},
        "storage": {"adapter_bytes": adapter, "full_model_bytes": 4000},
        "train": {
            "tokens_per_second": tok_s if trained else None,
            "peak_memory_bytes": train_mem if trained else None,
            "laps": [
                {"step": s, "tokens": 100, "seconds": 100 / tok_s * (1 + rng.uniform(-jitter, jitter))}
                for s in range(1, 11)
            ]
            if trained
            else [],
            "loss_curve": [{"step": s, "loss": 3.0 / s} for s in (1, 2, 3)] if trained else [],
            "eval_curve": [],
            "examples_seen": 40 if trained else 0,
        },
        "validation": {"loss": 1.0, **(val or {})},
        "quality": quality,
        "quality_samples": samples,
        "quality_note": "random weights" if random_weights else None,
        "quality_baselines": {"majority_class": "a", "majority_accuracy": 40.0, "chance_accuracy": 50.0}
        if correct is not None
        else None,
        "inference": {
            "shapes": {"batch_size": 1, "seq_len": 32, "new_tokens": 4},
            "latency_ms": {"p50_ms": sorted(lat)[20], "p95_ms": max(lat), "samples_ms": lat},
            "throughput_tokens_per_second": 1000 / p50,
            "throughput_unit": "generated tokens/s",
            "peak_memory_bytes": 1e9,
            "merged": None
            if mlat is None
            else {
                "latency_ms": {"p50_ms": sorted(mlat)[20], "samples_ms": mlat},
                "unmerged_overhead_percent": 100 * (p50 / merged_p50 - 1),
            },
        },
    }


def write(tmp_path, rs):
    (tmp_path / "results").mkdir(exist_ok=True)
    for r in rs:
        (tmp_path / "results" / f"{r['run_id']}.json").write_text(json.dumps(r))
    return tmp_path


M, C = "builtin:m", "classification"


@pytest.fixture
def fixture_dir(tmp_path):
    return _fixture(tmp_path)


def _fixture(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rs = [
        result(M, C, "none", correct=100),
        result(M, C, "full", correct=180, trainable=1000, adapter=4000, train_mem=9e9, tok_s=50),
        result(
            M, C, "lora", correct=178, trainable=16, adapter=80, p50=14.0, merged_p50=10.0, train_mem=4e9, tok_s=120
        ),
        result(M, C, "ia3", correct=140, trainable=4, adapter=20, p50=11.0, merged_p50=10.0, train_mem=3e9, tok_s=130),
        result(
            "random:gpt2",
            "summarization",
            "lora",
            trainable=16,
            adapter=80,
            p50=5.0,
            merged_p50=4.0,
            random_weights=True,
        ),
        result(
            "random:gpt2", "summarization", "ia3", trainable=4, adapter=20, p50=4.5, merged_p50=4.4, random_weights=True
        ),
    ]
    failed = {
        "schema": "peftbench.result/2",
        "id": "oops",
        "run_id": "oops",
        "config_hash": "0",
        "status": "failed",
        "error": "ValueError: boom",
        "config": {"model": {"spec": "x"}, "data": {"task": "classification"}, "method": {"name": "lora"}},
    }
    write(folder, rs + [failed])
    (folder / "results" / "notes.json").write_text('{"not": "a result"}')  # ignored
    return folder


def group_verdicts(folder, model=M, task=C):
    aggs = [a for a in aggregate.aggregate(load_results(folder)) if a.model == model and a.task == task]
    return {v["measure"]: v for v in aggregate.verdicts(aggs, task)}, aggs


def test_pareto_known_sets():
    pts = [("a", 1, 10), ("b", 2, 20), ("c", 3, 15), ("d", 1, 5)]
    assert pareto(pts, ("min", "max")) == ["a", "b"]
    assert sorted(pareto(pts, ("max", "max"))) == ["b", "c"]
    assert pareto([("x", 1, 1), ("y", 1, 1)], ("min", "max")) == ["x", "y"]  # ties: neither dominates


def test_a_difference_inside_the_noise_is_a_tie_and_a_clear_one_a_win(fixture_dir):
    v, _ = group_verdicts(fixture_dir)
    ids = {m: f"builtin-m--classification--{m}" for m in ("none", "full", "lora", "ia3")}
    acc = v["accuracy"]
    # full 90 % vs lora 89 %: 2 discordant examples of 200, a tie; ia3 70 % is clearly worse
    assert acc["winners"] == [ids["full"], ids["lora"]]
    assert acc["effect"]["versus"] == ids["ia3"] and acc["effect"]["significant"]
    assert acc["effect"]["estimate"] == pytest.approx(20.0) and acc["effect"]["low"] > 0
    assert "paired bootstrap over examples" in acc["test"] and acc["n"]["experiments"] == 4
    assert v["adapter_bytes"]["winners"] == [ids["ia3"]] and v["adapter_bytes"]["test"].startswith("exact")
    # ia3 130 tok/s vs lora 120: 8 % apart, under the 25 % CPU margin: a tie, said so
    assert set(v["train_tokens_per_second"]["winners"]) == {ids["ia3"], ids["lora"]}
    assert "effects under 25 %" in v["train_tokens_per_second"]["test"]
    # deployed latency: merged lora/ia3 at 10 ms tie with none and full at 10 ms
    assert set(v["deploy_p50_ms"]["winners"]) == set(ids.values())


def test_verdict_lines_carry_units_intervals_and_latency_against_base(fixture_dir):
    _, aggs = group_verdicts(fixture_dir)
    lines = "\n".join(build.verdict_lines(aggs, C, aggregate.verdicts(aggs, C)))
    assert re.search(
        r"accuracy \(higher is better\): a tie between full, lora \(90 best\); 20\.00 points above "
        r"ia3 \(95 % interval [0-9.]+ to [0-9.]+\)\.",
        lines,
    )
    assert re.search(r"full: unmerged [+-]\d+\.\d % \([^)]*\), a tie", lines)  # same architecture as the base
    assert re.search(r"lora: unmerged \+(3[5-9]|4[0-5])\.\d % \([^)]*\); merged", lines)  # 14 vs 10 ms: not a tie


def test_identical_configurations_tie_on_every_measure(tmp_path):
    a = result(M, C, "lora", correct=150, trainable=16, adapter=80, p50=12.0, merged_p50=10.0, exp_id="a")
    b = copy.deepcopy(a)
    b["id"], b["run_id"] = "b", "b--seed42"
    v, _ = group_verdicts(write(tmp_path, [a, b]))
    assert v and all(set(m["winners"]) == {"a", "b"} for m in v.values()), {k: m["winners"] for k, m in v.items()}
    assert v["accuracy"]["effect"]["estimate"] == 0 and v["accuracy"]["effect"]["low"] == 0


def test_seeds_aggregate_with_a_t_interval_and_pair_by_seed(tmp_path):
    rs = [
        result(M, C, m, correct=k + d, seed=s)
        for m, k in (("lora", 150), ("ia3", 120))
        for s, d in ((1, 0), (2, 4), (3, -2))
    ]
    _, aggs = group_verdicts(write(tmp_path, rs))
    lora = next(a for a in aggs if a.method == "lora")
    s = aggregate.summarize(lora, "accuracy")
    mean, lo, hi = stats.t_interval([75.0, 77.0, 74.0])
    assert (s["mean"], s["low"], s["high"], s["n"]) == pytest.approx((mean, lo, hi, 3))
    comp = aggregate.compare_aggs(lora, next(a for a in aggs if a.method == "ia3"), "accuracy")
    assert comp.n_seeds == (3, 3) and comp.significant and "3/3 seeds" in comp.test


def test_sweep_selects_on_validation_never_on_test(tmp_path):
    # lr 1e-3 is best on validation, lr 1e-2 best on test: the report must pick 1e-3
    rs = [result(M, C, "lora", correct=120, lr=1e-3, val={"accuracy": 80.0}, seed=s) for s in (1, 2)]
    rs += [result(M, C, "lora", correct=190, lr=1e-2, val={"accuracy": 60.0}, seed=s) for s in (1, 2)]
    rs += [result(M, C, "none", correct=100)]
    folder = write(tmp_path, rs)
    lora = next(a for a in aggregate.aggregate(load_results(folder)) if a.method == "lora")
    assert lora.selected_lr == 1e-3 and lora.selection == "validation accuracy"
    assert {r["config"]["train"]["learning_rate"] for r in lora.runs} == {1e-3} and len(lora.runs) == 2
    assert [row["selected"] for row in lora.sweep] == [True, False]
    md = build.build_report(folder)["md"].read_text()
    assert "Learning-rate sweep (selected on validation)" in md and "learning rates lora 0.001 (selected)" in md
    assert (folder / "plots" / "builtin-m--classification-learning-rates.png").is_file()


def test_random_groups_make_no_quality_claims(fixture_dir):
    v, aggs = group_verdicts(fixture_dir, "random:gpt2", "summarization")
    assert not set(v) & {"rouge1", "rouge2", "rougeL", "bleu"}
    text = "\n".join(build.verdict_lines(aggs, "summarization", list(v.values())))
    assert "not compared" in text and "Pareto" not in text


def test_report_files_verdict_json_and_summary_csv(fixture_dir):
    paths = build.build_report(fixture_dir)
    md = paths["md"].read_text()
    assert "## builtin:m · classification" in md and "## random:gpt2 · summarization" in md
    assert re.search(r"\| full \| 1,000 \| 4 KB \| \*\*90 \(8\d[.\d]*–9\d[.\d]*\)\*\* \|", md)
    assert "always 'a' (the majority class) scores 40.0 % accuracy" in md and "(40 examples seen)" in md
    assert "Failed, cancelled, skipped or pruned" in md and "ValueError: boom" in md
    pngs = sorted((fixture_dir / "plots").glob("*.png"))
    assert len(pngs) >= 7 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert sorted(re.findall(r"\]\((plots/[^)]+)\)", md)) == sorted(f"plots/{p.name}" for p in pngs)
    html = paths["html"].read_text()
    figures = sorted((fixture_dir / "plots").glob("*.plotly.json"))  # each PNG's interactive figure, inlined
    assert [f.name.replace(".plotly.json", ".png") for f in figures] == [p.name for p in pngs]
    assert html.count("class='figure'") == len(pngs) and "plots/" not in html and "<img" not in html
    verdict = json.loads(paths["verdict"].read_text())
    group = next(g for g in verdict["groups"] if g["model"] == M)
    for m in group["measures"]:
        assert set(m) >= {"measure", "winners", "effect", "test", "n", "values"} and isinstance(m["winners"], list)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 7 and len({r["id"] for r in rows}) == 7  # one per experiment id, the failed one too
    lora = next(r for r in rows if r["id"] == "builtin-m--classification--lora")
    assert lora["n_seeds"] == "1" and float(lora["accuracy_mean"]) == 89.0
    assert float(lora["accuracy_ci95_low"]) < 89.0 < float(lora["accuracy_ci95_high"])
    assert {"trainable_mean", "latency_p50_ms_ci95_high", "train_tokens_per_second_ci95_low"} <= set(rows[0])


def test_report_imports_and_runs_without_torch(fixture_dir):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from peftbench.report import build_report\n"
        f"build_report(__import__('pathlib').Path({str(fixture_dir)!r}))\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_merged_throughput_is_read_from_the_merged_measurement():
    from peftbench.report.metrics import METRICS

    def gen(ms):
        return {"scenarios": {"generate_b1": {"new_tokens": 4, "latency_ms": {"samples_ms": [ms, ms]}}}}

    r = {"inference": {"shapes": {"batch_size": 1}, **gen(100.0), "merged": gen(50.0)}}
    assert stats.statistic(METRICS["throughput"].samples(r), "rate") == pytest.approx(40.0)  # 4 tokens / 0.1 s
    assert stats.statistic(METRICS["merged_throughput"].samples(r), "rate") == pytest.approx(80.0)


GOLDEN = Path(__file__).parent / "golden"


def test_report_text_is_byte_identical_to_the_golden_one(tmp_path):
    """Refactors must not change a report: the fixture's report.md, summary.csv and verdict.json equal the
    committed ones byte for byte (regenerate with PEFTBENCH_UPDATE_GOLDEN=1 only for an intended change)."""
    import os
    import shutil

    folder = _fixture(tmp_path / "golden-run")  # the folder's name is in the report's title
    paths = build.build_report(folder)
    for key in ("md", "csv"):
        name = paths[key].name
        if os.environ.get("PEFTBENCH_UPDATE_GOLDEN"):
            GOLDEN.mkdir(exist_ok=True)
            shutil.copy(paths[key], GOLDEN / name)
        assert paths[key].read_bytes() == (GOLDEN / name).read_bytes(), f"{name} changed"
    verdict = folder / "verdict.json"
    if os.environ.get("PEFTBENCH_UPDATE_GOLDEN"):
        shutil.copy(verdict, GOLDEN / "verdict.json")
    assert verdict.read_bytes() == (GOLDEN / "verdict.json").read_bytes()


def test_intervals_over_seeds_respect_their_quantity(tmp_path):
    """2 seeds: too few for an interval (t on one degree of freedom spans more than the value); 3 seeds of
    a time: a ratio's interval around the geometric mean, never below zero however far apart they are."""
    two = [result(M, C, "lora", correct=150, p50=p, seed=s) for s, p in ((1, 10.0), (2, 60.0))]
    (tmp_path / "two").mkdir()
    _, aggs = group_verdicts(write(tmp_path / "two", two))
    s = aggregate.summarize(aggs[0], "latency_p50_ms")
    vals = [value(r, "latency_p50_ms") for r in aggs[0].runs]
    assert s["mean"] == pytest.approx(sum(vals) / 2) and (s["low"], s["high"]) == (None, None)
    assert s["how"] == "2 seeds: too few for an interval"
    three = [result(M, C, "lora", correct=150, p50=p, seed=s) for s, p in ((1, 10.0), (2, 60.0), (3, 12.0))]
    (tmp_path / "three").mkdir()
    _, aggs = group_verdicts(write(tmp_path / "three", three))
    s = aggregate.summarize(aggs[0], "latency_p50_ms")
    vals = [value(r, "latency_p50_ms") for r in aggs[0].runs]
    g, lo, hi = stats.t_interval([math.log(v) for v in vals])
    assert (s["mean"], s["low"], s["high"]) == pytest.approx((math.exp(g), math.exp(lo), math.exp(hi)))
    assert 0 < s["low"] < s["mean"] < s["high"] and stats.t_interval(vals)[1] < 0  # the linear one: below zero


def test_three_identical_candidates_tie_under_the_family_correction(tmp_path):
    a = result(M, C, "lora", correct=150, trainable=16, adapter=80, p50=12.0, merged_p50=10.0, exp_id="a")
    copies = []
    for name in ("b", "c"):
        x = copy.deepcopy(a)
        x["id"], x["run_id"] = name, f"{name}--seed42"
        copies.append(x)
    v, _ = group_verdicts(write(tmp_path, [a, *copies]))
    assert v and all(set(m["winners"]) == {"a", "b", "c"} for m in v.values()), {k: m["winners"] for k, m in v.items()}
    acc = v["accuracy"]
    assert acc["correction"] == {"method": "holm", "family_size": 2, "alpha": 0.05}
    assert acc["effect"]["p_value"] == 1.0 and acc["effect"]["p_holm"] == 1.0


def test_a_win_must_hold_for_the_group_not_for_one_comparison(tmp_path):
    """Five more examples right of 200 (each paired comparison p ~ 2e^-5 = 0.013) is a win against one
    rival, but not against nine such rivals at once: Holm multiplies the smallest p by nine."""
    one = [result(M, C, "full", correct=150, exp_id="best"), result(M, C, "lora", correct=145, exp_id="r0")]
    (tmp_path / "one").mkdir()
    (tmp_path / "nine").mkdir()
    v, _ = group_verdicts(write(tmp_path / "one", one))
    assert v["accuracy"]["winners"] == ["best"] and v["accuracy"]["correction"]["family_size"] == 1
    nine = [result(M, C, "full", correct=150, exp_id="best")]
    nine += [result(M, C, "lora", correct=145, exp_id=f"r{i}") for i in range(9)]
    v, aggs = group_verdicts(write(tmp_path / "nine", nine))
    acc = v["accuracy"]
    assert acc["correction"]["family_size"] == 9 and len(acc["winners"]) == 10
    e = acc["effect"]
    assert e["low"] > 0 and e["p_value"] < 0.05 <= e["p_holm"] and not e["significant"]  # each alone: a win
    lines = "\n".join(build.verdict_lines(aggs, C, aggregate.verdicts(aggs, C)))
    assert "not significant once the group's 9 comparisons are corrected (Holm)" in lines


def test_the_report_says_when_prompts_were_wrapped_in_a_chat_template(tmp_path):
    rs = [result(M, C, m, correct=60, trainable=4, adapter=20) for m in ("none", "lora")]
    for r in rs:
        r["config"]["model"]["chat_template"] = "auto"

    def report(name, used):
        for r, u in zip(rs, used):
            r["resolved"] = {"chat_template": u}
        (tmp_path / name).mkdir()
        return build.build_report(write(tmp_path / name, rs))["md"].read_text()

    assert "Prompts wrapped in the tokenizer's chat template (model.chat_template: auto)" in report("a", [True, True])
    assert "some did not (see resolved.chat_template)" in report("b", [True, False])
    assert "chat template" not in report("c", [False, False])


def test_plots_drawn_by_worker_processes_equal_the_ones_drawn_in_turn(fixture_dir, tmp_path):
    """A group's plots drawn side by side in forked processes (machines of 4+ cores) give the files drawn here."""
    from peftbench.report.plots import plot_group, plot_workers

    _, aggs = group_verdicts(fixture_dir)
    made = {}
    for workers in (1, 3):
        folder = tmp_path / f"plots-{workers}"
        made[workers] = plot_group(aggs, folder=folder, slug="g", title="t", task=C, workers=workers)
    assert set(made[1]) == set(made[3]) and len(made[1]) >= 4
    for name, path in made[1].items():
        other = made[3][name]
        assert other.read_bytes() == path.read_bytes(), name
        side, other_side = path.with_suffix(".plotly.json"), other.with_suffix(".plotly.json")
        assert json.loads(side.read_text()) == json.loads(other_side.read_text()), name
    assert plot_workers(8) == (1 if (os.cpu_count() or 1) < 4 else min(8, os.cpu_count() - 1))
