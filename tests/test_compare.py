"""`peftbench compare` (issue 28): two studies of one suite pair their runs by config hash; the same runs tie with
a zero interval, a changed configuration is listed and not compared, and the environment's changes are named."""

import json

import pytest
import yaml
from conftest import FAST_MEASURE, save_tiny

from peftbench import cli
from peftbench.report.compare import compare_dirs


@pytest.fixture(scope="module")
def studies(tmp_path_factory, data_dir):
    model = save_tiny(tmp_path_factory, "tiny-llama")
    tmp = tmp_path_factory.mktemp("cmp")

    def study(name, lr):
        raw = {
            "name": name,
            "defaults": {
                "train": {"max_steps": 2, "batch_size": 4},
                "data": {"max_train_samples": 16, "max_eval_samples": 8, "max_source_length": 48},
                "measure": {**FAST_MEASURE, "large_batch_size": 0, "stage": "off"},
            },
            "matrix": {
                "model_task": [
                    {
                        "model": {"spec": str(model)},
                        "data": {"spec": f"file:{data_dir}/cls.jsonl", "task": "classification"},
                    }  # noqa: E501
                ],
                "methods": [{"method": {"name": "lora"}, "train": {"learning_rate": lr}}, {"method": {"name": "ia3"}}],
            },
        }
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        out = tmp / name
        assert cli.main(["run", str(tmp / f"{name}.yaml"), "--out", str(out), "--device", "cpu", "--in-process"]) == 0
        return out

    return study("a", 1e-3), study("b", 1e-3), study("c", 2e-3)


def test_the_same_suite_twice_ties_on_quality_and_counts(studies):
    a, b, _ = studies
    text, data = compare_dirs([a, b])
    (block,) = data["against"]
    assert len(block["paired"]) == 2 and not block["unpaired"]
    for p in block["paired"]:
        by = {m["measure"]: m for m in p["measures"]}
        assert by["accuracy"]["effect"] == 0 and by["accuracy"]["low"] == by["accuracy"]["high"] == 0
        assert by["accuracy"]["changed"] is False and "paired bootstrap over examples" in by["accuracy"]["test"]
        assert by["trainable"]["effect"] == 0 and by["trainable"]["test"] == "exact"
        assert by["latency_p50_ms"]["relative"] and by["latency_p50_ms"]["low"] < by["latency_p50_ms"]["high"]
    assert "| accuracy |" in text and "git_commit" not in block["environment_changed"]


def test_a_changed_configuration_is_listed_not_compared(studies, tmp_path, capsys):
    a, _, c = studies
    assert cli.main(["compare", str(a), str(c), "--out", str(tmp_path / "cmp")]) == 0
    data = json.loads((tmp_path / "cmp.json").read_text())
    (block,) = data["against"]
    assert [u["why"] for u in block["unpaired"]] == ["configuration changed"]  # lora's rate differs
    assert [p["id"] for p in block["paired"]] == [i for i in (p["id"] for p in block["paired"]) if "ia3" in i]
    assert "not compared: configuration changed" in (tmp_path / "cmp.md").read_text()


def test_compare_refuses_a_folder_without_results(tmp_path, capsys, studies):
    assert cli.main(["compare", str(studies[0]), str(tmp_path)]) == 2
    assert "holds no results/ folder" in capsys.readouterr().err


def _slowed(study, base, tmp_path, name, *, latency: float, reference: float):
    """A copy of ``study`` whose inference timings read ``latency`` times slower, and whose runs' machine reference
    (timed after training) reads ``reference`` times ``base``'s same run's: the machine's speed set exactly, so the
    comparison does not depend on how quiet this machine was while the fixtures ran."""
    import shutil

    out = tmp_path / name
    shutil.copytree(study, out)
    for path in (out / "results").glob("*.json"):
        r = json.loads(path.read_text())
        lat = r["inference"]["latency_ms"]
        lat["samples_ms"] = [v * latency for v in lat["samples_ms"]]
        lat["p50_ms"] *= latency
        ref = json.loads((base / "results" / path.name).read_text())["train"]["reference_ms"]
        r["train"]["reference_ms"] = {k: v * reference for k, v in ref.items()}
        path.write_text(json.dumps(r))
    return out


def test_a_busy_machine_under_one_study_is_no_change_and_a_slower_run_on_the_same_machine_is(studies, tmp_path):
    """Identical configurations, the second study timed with a load beside it (its inference 30x slower and the
    machine's own reference too): not compared, no change. The same 30x slower inference with the machine's
    reference where it was: a change."""
    a, b, _ = studies
    busy = _slowed(b, a, tmp_path, "busy", latency=30.0, reference=30.0)
    _, data = compare_dirs([a, busy])
    for p in data["against"][0]["paired"]:
        lat = next(m for m in p["measures"] if m["measure"] == "latency_p50_ms")
        assert lat["changed"] is False and lat["margin"] == float("inf") and lat["machine_drift_percent"] == 2900.0
    # the slower copy is a's own (not b's: the two fixture studies' own timings differ by the machine's load while
    # they ran, up to 3x in CI), so the effect is exactly the factor set here
    slower = _slowed(a, a, tmp_path, "slower", latency=30.0, reference=1.0)
    text, data = compare_dirs([a, slower])
    for p in data["against"][0]["paired"]:
        lat = next(m for m in p["measures"] if m["measure"] == "latency_p50_ms")
        assert lat["changed"] is True and lat["machine_drift_percent"] == 0.0
        assert lat["effect"] == pytest.approx(2900.0, rel=1e-6)
    assert "not compared: the machine's speed moved" not in text.split("| p50 ms |")[1].split("\n")[0]


def test_a_gpu_slowed_by_its_clock_is_machine_drift_not_a_slower_method():
    """Two runs with unmoved reference timings, one of whose GPUs ran its steady laps at 1,500 MHz against the
    other's 1,980 (a power or thermal limit): their training speeds are not compared; clocks within 1.5 % are."""
    from peftbench.report.metrics import METRICS, drift_percent, margin

    def run(clock):
        return {"train": {"reference_ms": {"before": 2.0, "after": 2.0}, "gpu_clock_mhz": {"median": clock}}}

    speed = METRICS["train_tokens_per_second"]
    assert speed.across_runs
    assert drift_percent([run(1980), run(1500)]) == 32.0
    assert margin(speed, "cuda", [run(1980), run(1500)]) == float("inf")
    assert drift_percent([run(1980), run(1950)]) == 1.54 and margin(speed, "cuda", [run(1980), run(1950)]) == 10.0
    no_clock = [{"train": {"reference_ms": {"before": 2.0, "after": 2.1}}}] * 2  # CPU runs: the references alone
    assert drift_percent(no_clock) == 5.0
