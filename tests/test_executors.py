"""Several runs at once (issue 27): `--executor local --jobs N` and `--executor ray` give the serial suite's results,
overlap in time, survive a lost worker, spread over a cluster's nodes, and refuse what would make timings share."""

import json

import pytest
import yaml
from conftest import save_tiny

from peftbench import cli, results
from peftbench.errors import ConfigError
from peftbench.run import executors, plan

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    return save_tiny(tmp_path_factory, "tiny-llama")


def _suite(tmp_path, data_dir, model, *, steps=3, measure=False) -> str:
    raw = {
        "name": "four",
        "defaults": {
            "train": {"max_steps": steps, "batch_size": 4},
            "data": {"max_train_samples": 16, "max_eval_samples": 8, "max_source_length": 48, "max_target_length": 4},
            "measure": {"enabled": measure, "forgetting": None},
        },
        "matrix": {
            "model_task": [
                {
                    "model": {"spec": str(model)},
                    "data": {"spec": f"file:{data_dir}/cls.jsonl", "task": "classification"},
                }
            ],  # noqa: E501
            "methods": [
                {"method": {"name": "none"}},
                {"method": {"name": "lora"}, "train": {"learning_rate": 1e-3}},
                {"method": {"name": "ia3"}, "train": {"learning_rate": 1e-2}},
                {"method": {"name": "lora", "options": {"r": 4}}, "id": "lora-r4", "train": {"learning_rate": 1e-3}},
            ],
        },
    }
    path = tmp_path / "four.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _results(out) -> dict:
    return {r.run_id: r for r in (results.read_result(p) for p in sorted((out / "results").glob("*.json")))}


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and len(a) == 4
    for k in a:
        ra, rb = a[k], b[k]
        assert ra.status == rb.status == "success", (ra.error, rb.error)
        assert ra.config_hash == rb.config_hash and ra.params == rb.params
        assert ra.quality == rb.quality and ra.quality is not None and ra.quality["accuracy"] is not None
        assert ra.train.get("loss_curve") == rb.train.get("loss_curve")


def _overlapping(rs: dict) -> int:
    spans = [(r.env["placement"]["began"], r.env["placement"]["ended"]) for r in rs.values()]
    return sum(1 for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1])


@pytest.fixture(scope="module")
def serial(tmp_path_factory, data_dir, tiny_pretrained):
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")  # what each of two slots on two cores gets: the same float reductions
    tmp = tmp_path_factory.mktemp("serial")
    try:
        assert (
            cli.main(["run", _suite(tmp, data_dir, tiny_pretrained), "--device", "cpu", "--out", str(tmp / "o")]) == 0
        )
    finally:
        mp.undo()
    return _results(tmp / "o")


def test_local_jobs_give_the_serial_results_with_runs_side_by_side(tmp_path, data_dir, tiny_pretrained, serial):
    argv = ["run", _suite(tmp_path, data_dir, tiny_pretrained), "--device", "cpu", "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--executor", "local", "--jobs", "2"]) == 0
    got = _results(tmp_path / "o")
    _same(got, serial)
    assert {r.env["placement"]["slot"] for r in got.values()} == {0, 1} and _overlapping(got) >= 1
    assert {r.env["placement"]["executor"] for r in got.values()} == {"local"}
    assert (tmp_path / "o" / "adapters" / "lora-r4" / "adapter_config.json").is_file()


def test_ray_gives_the_serial_results_and_retries_a_lost_worker(
    tmp_path, data_dir, tiny_pretrained, serial, monkeypatch
):
    """A local Ray of 2 CPUs; the worker running lora-r4 dies the first time it takes it (as on a lost node)."""
    monkeypatch.setenv("PEFTBENCH_FAULT", "worker-lost:lora-r4")
    monkeypatch.setenv("PEFTBENCH_FAULT_MARK", str(tmp_path / "lost-once"))
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    argv = ["run", _suite(tmp_path, data_dir, tiny_pretrained), "--device", "cpu", "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--executor", "ray", "--jobs", "2"]) == 0
    assert (tmp_path / "lost-once").read_text() == "lost once"  # the first attempt's worker did die
    got = _results(tmp_path / "o")
    _same(got, serial)
    assert _overlapping(got) >= 1 and {r.env["placement"]["executor"] for r in got.values()} == {"ray"}
    # the adapter came back from the worker and loads where the driver put it
    cfg = json.loads((tmp_path / "o" / "adapters" / "lora-r4" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and got["lora-r4"].storage["adapter_dir"] == "adapters/lora-r4"
    # a rerun skips what is done, on any executor
    assert cli.main([*argv, "--executor", "ray", "--jobs", "2"]) == 0
    assert _results(tmp_path / "o")["lora-r4"].attempt == got["lora-r4"].attempt


def test_a_run_whose_worker_is_lost_twice_is_recorded_failed_and_the_suite_goes_on(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_FAULT", "worker-lost-always:random-tiny-gpt2--language-modeling--lora")
    argv = ["run", "--model", "random:tiny-gpt2", "--method", "lora", "--task", "language-modeling"]
    argv += ["--dataset", f"file:{data_dir}/lm.jsonl", "--set", "train.max_steps=1", "--set", "measure.enabled=false"]
    code = cli.main([*argv, "--device", "cpu", "--out", str(tmp_path / "o"), "--executor", "ray", "--jobs", "1"])
    assert code == 1
    (r,) = _results(tmp_path / "o").values()
    assert r.status == "failed" and "its Ray worker was lost and the retry failed too" in r.error


def test_a_two_node_cluster_spreads_the_runs_over_both_nodes(tmp_path, data_dir, tiny_pretrained):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        argv = ["run", _suite(tmp_path, data_dir, tiny_pretrained, steps=6), "--device", "cpu"]
        argv += ["--out", str(tmp_path / "o"), "--executor", "ray", "--address", cluster.address]
        assert cli.main(argv) == 0
    finally:
        ray.shutdown()
        cluster.shutdown()
    got = _results(tmp_path / "o")
    assert len({r.env["placement"]["ray_node_id"] for r in got.values()}) == 2


@pytest.mark.parametrize(
    ("options", "measure", "fragment"),
    [
        (executors.Options("local", jobs=0), False, "--jobs: 0 is not a positive number"),
        (executors.Options("serial", jobs=3), False, "need --executor local or ray"),
        (executors.Options("local", address="auto"), False, "--address: only with --executor ray"),
        (executors.Options("local", runs_per_gpu=4), True, "timing runs never share a GPU"),
    ],
)
def test_bad_executor_options_are_refused_before_anything_runs(tmp_path, data_dir, options, measure, fragment):
    suite = plan.load_suite(_suite(tmp_path, data_dir, "random:tiny-llama", measure=measure))
    with pytest.raises(ConfigError, match=fragment):
        executors.check(options, runs=plan.plan_runs(suite), device="cuda", gpus=1)


def test_local_slots_pin_each_run_to_its_gpu_or_its_share_of_the_cores():
    slots = executors.local_slots(
        executors.Options("local", runs_per_gpu=2), device="cuda", gpus=1, visible=["0", "3"], cores=16
    )  # noqa: E501
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "3", "3"]
    pairs = executors.local_slots(
        executors.Options("local"), device="cuda", gpus=2, visible=["0", "1", "2", "3"], cores=16
    )  # noqa: E501
    assert [s["CUDA_VISIBLE_DEVICES"] for s in pairs] == ["0,1", "2,3"]
    cpu = executors.local_slots(executors.Options("local", jobs=3), device="cpu", gpus=1, visible=[], cores=8)
    assert [s["OMP_NUM_THREADS"] for s in cpu] == ["2", "2", "2"]
    with pytest.raises(ConfigError, match="hold 2 runs at once"):
        executors.local_slots(executors.Options("local", jobs=3), device="cuda", gpus=1, visible=["0", "1"], cores=8)


def test_a_signal_to_the_driver_cancels_every_run_in_flight(tmp_path, data_dir):
    import signal
    import subprocess
    import sys
    import time

    argv = [sys.executable, "-m", "peftbench", "run", "--model", "random:tiny-gpt2", "--method", "lora"]
    argv += ["--task", "language-modeling", "--dataset", f"file:{data_dir}/lm.jsonl", "--set", "train.max_steps=100000"]
    argv += ["--set", "measure.enabled=false", "--seeds", "1,2,3", "--device", "cpu", "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(
        [*argv, "--executor", "local", "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        running = 0
        for line in proc.stdout:  # two runs in flight
            running += ": running" in line
            if running == 2:
                break
        time.sleep(4)  # both training by now
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    got = _results(tmp_path / "o")
    assert sorted(r.status for r in got.values()) == ["cancelled", "cancelled"]  # the third never started
    assert all("cancelled by SIGINT" in r.error for r in got.values())
