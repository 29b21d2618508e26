"""The measurement stage: a group's candidates timed together in one process, interleaved in seeded
shuffled rounds with a reference in every round, comparisons paired round by round, a run's JSON pointing
to its group's measurements, and identical configurations tying under load."""

import json
import random
import subprocess
import sys

import pytest
import yaml

from peftbench import cli, results, stats
from peftbench.measure.stage import ORDER_SEED, reference_spread

ROUNDS, BLOCK = 4, 1


def stage_suite(tmp_path, data_dir, experiments) -> str:
    raw = {
        "name": "stage",
        "defaults": {
            "model": {"spec": "random:tiny-gpt2"},
            "data": {"spec": f"file:{data_dir}/cls.jsonl", "task": "classification", "max_train_samples": 16},
            "train": {"max_steps": 2, "batch_size": 4},
            "measure": {
                "stage": "on",
                "rounds": ROUNDS,
                "block_iterations": BLOCK,
                "warmup": 1,
                "seq_len": 8,
                "new_tokens": 2,
                "large_batch_size": 0,
            },
        },
        "experiments": [{"id": i, "method": {"name": m}} for i, m in experiments],
    }
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def staged(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("stage")
    runs = [("zero", "none"), ("full", "full"), ("a", "lora"), ("b", "lora"), ("ia3", "ia3")]
    suite = stage_suite(tmp, data_dir, runs)
    out = tmp / "out"
    assert cli.main(["run", suite, "--out", str(out), "--device", "cpu"]) == 0
    (doc_path,) = (out / "measurements").glob("*.json")
    return suite, out, json.loads(doc_path.read_text()), doc_path


def test_every_candidate_is_timed_once_per_round_in_a_seeded_shuffled_order(staged):
    _, out, doc, _ = staged
    names = {c["name"] for c in doc["candidates"]}
    # b's adapter is bit-identical to a's (same config, same seed): one model, timed once for both
    assert names == {"reference", "zero", "full", "a", "a:merged", "ia3", "ia3:merged"} and doc["aliases"] == {"b": "a"}
    assert len(doc["orders"]) == ROUNDS and all(sorted(o) == sorted(names) for o in doc["orders"])
    rng, order = random.Random(ORDER_SEED), [c["name"] for c in doc["candidates"]]
    for got in doc["orders"]:  # the seeded shuffle, reproduced
        expect = list(order)
        rng.shuffle(expect)
        assert got == expect
    assert len({tuple(o) for o in doc["orders"]}) > 1
    for scenario, by_name in doc["timings"].items():
        for name, blocks in by_name.items():
            timed = name != "reference" or scenario == "forward_b1"  # the reference: one workload
            assert len(blocks) == (ROUNDS if timed else 0) and all(len(b) == BLOCK and min(b) > 0 for b in blocks)
    spread = reference_spread(doc["timings"]["forward_b1"]["reference"])
    assert doc["reference"]["spread"] == pytest.approx(spread, abs=1e-5)
    assert doc["noisy"] == (doc["reference"]["spread"] > doc["noisy_threshold"])


def test_a_run_points_to_its_group_and_the_report_reads_the_stage(staged):
    _, out, doc, doc_path = staged
    run = json.loads((out / "results" / "a.json").read_text())
    assert run["inference"] == {"stage": {"file": f"measurements/{doc_path.name}"}}
    assert run["quality"] is not None and run["train"]["steps"] == 2 and run["storage"]["adapter_bytes"] > 0
    a = doc["inference"]["a"]
    assert a["stage"]["candidate"] == "a" and a["merged"]["stage"]["candidate"] == "a:merged"
    assert a["merged"]["max_abs_logit_diff"] < 1e-4 and len(a["merged"]["unmerged_overhead_ci95"]) == 2
    assert a["latency_ms"]["n"] == ROUNDS * BLOCK and doc["inference"]["b"]["latency_ms"] == a["latency_ms"]
    verdict = json.loads((out / "verdict.json").read_text())
    measures = {m["measure"]: m for m in verdict["groups"][0]["measures"]}
    for key in ("deploy_p50_ms", "throughput"):
        assert measures[key]["test"] == f"paired over {ROUNDS} interleaved rounds (t on the rounds' log ratios)"
        assert "margin" not in measures[key]["test"]
    report = (out / "report.md").read_text()
    assert f"candidates interleaved over {ROUNDS} rounds (order seed {ORDER_SEED})" in report
    csv = (out / "summary.csv").read_text()
    assert "deploy_p50_ms_mean" in csv.splitlines()[0]


def test_a_group_is_measured_again_only_when_one_of_its_runs_changed(staged, capsys):
    suite, out, _, doc_path = staged
    before = doc_path.read_text()
    capsys.readouterr()
    assert cli.main(["run", suite, "--out", str(out), "--device", "cpu", "--in-process"]) == 0
    assert "done, skipped" in capsys.readouterr().out.splitlines()[-2] and doc_path.read_text() == before
    again = ["run", suite, "--out", str(out), "--device", "cpu", "--in-process"]
    assert cli.main([*again, "--only", "ia3", "--force"]) == 0
    again = json.loads(doc_path.read_text())
    assert again["runs"]["ia3"]["attempt"] != json.loads(before)["runs"]["ia3"]["attempt"]
    assert set(again["runs"]) == {"zero", "full", "a", "b", "ia3"}  # the whole group, not only the rerun


def test_identical_configurations_tie_on_every_measure_with_load_started_between_them(tmp_path, data_dir):
    """A/A: ``a`` trains on a quiet machine, then a process starts spinning on a core, then ``b`` trains and
    the group is measured under that load: every measure ties (training speed with the drift its runs'
    reference timings measured, the timings paired in the stage)."""
    suite, out = stage_suite(tmp_path, data_dir, [("a", "lora"), ("b", "lora")]), str(tmp_path / "out")
    assert cli.main(["run", suite, "--out", out, "--device", "cpu", "--only", "a"]) == 0
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert cli.main(["run", suite, "--out", out, "--device", "cpu"]) == 0
    finally:
        busy.kill()
    verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
    measures = verdict["groups"][0]["measures"]
    assert {"trainable", "deploy_p50_ms", "throughput", "train_tokens_per_second"} <= {m["measure"] for m in measures}
    for m in measures:
        assert sorted(m["winners"]) == ["a", "b"], (m["measure"], m["effect"])


def test_paired_rounds_cancel_drift_and_keep_ratio_intervals_positive():
    drift = [1.0, 3.0, 1.5, 6.0, 2.0, 4.0]  # the machine's load, changing from round to round
    a = [10 * d for d in drift]
    assert stats.compare_rounds(a, a).effect == 0 and not stats.compare_rounds(a, a).significant
    slower = [11 * d * (1 + 0.01 * (-1) ** i) for i, d in enumerate(drift)]
    c = stats.compare_rounds(slower, a)
    assert c.significant and c.low < 10 < c.high and c.high - c.low < 3  # 10 % slower, in spite of a 6x drift
    unpaired = stats.compare([stats.samples_of(slower)], [stats.samples_of(a)], "median", relative=True)
    assert not unpaired.significant  # the same numbers compared across moments: the drift hides it
    wild = stats.compare_rounds([1.0, 100.0, 1.0], [100.0, 1.0, 100.0])
    assert wild.low > -100 and not wild.significant  # a ratio's interval: never below -100 %
    assert results.measurement_group({"measure": {"stage": "off"}, "model": {"spec": "x"}}) is None


def test_bit_identical_adapters_are_one_candidate_whatever_order_peft_wrote_their_set_options(tmp_path):
    from peftbench.measure.stage import _fingerprint

    for name, modules, weights in (
        ("a", ["q_proj", "v_proj"], b"w1"),
        ("b", ["v_proj", "q_proj"], b"w1"),
        ("c", ["q_proj"], b"w1"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": modules}))
        (tmp_path / name / "adapter_model.safetensors").write_bytes(weights)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj", "v_proj"]}))
    (tmp_path / "d" / "adapter_model.safetensors").write_bytes(b"w2")
    prints = {n: _fingerprint(tmp_path / n, merged=True) for n in "abcd"}
    assert prints["a"] == prints["b"] and len({prints["a"], prints["c"], prints["d"]}) == 3
    assert _fingerprint(tmp_path / "a", merged=False) != prints["a"]  # merged candidates are part of what is built
