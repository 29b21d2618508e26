"""Experiment trackers: TensorBoard event files and MLflow's file store hold what the result holds."""

import json

import pytest
import yaml
from conftest import FAST_MEASURE, single

from peftbench import cli

FAST = {
    "train": {"max_steps": 4, "batch_size": 4, "log_steps": 1, "eval_steps": 2},
    "data": {"max_train_samples": 16, "max_eval_samples": 4, "max_source_length": 32},
    "measure": {**FAST_MEASURE, "new_tokens": 2},
}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("tracked")
    suite = tmp / "tracked.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "tracked",
                "defaults": FAST,
                "log_with": ["tensorboard"],
                "experiments": [
                    {
                        "id": "lm-lora",
                        "model": {"spec": "random:tiny-gpt2"},
                        "method": {"name": "lora"},
                        "data": {"spec": f"file:{data_dir}/lm.jsonl", "task": "language-modeling"},
                    }
                ],
            }
        )
    )
    out = tmp / "out"
    code = cli.main(["run", str(suite), "--out", str(out), "--device", "cpu", "--log-with", "tensorboard,mlflow"])
    result = json.loads((out / "results" / "lm-lora.json").read_text())
    return code, out, result


def test_tensorboard_event_files_hold_the_loss_curve(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out, result = tracked
    assert code == 0
    acc = EventAccumulator(str(out / "trackers" / "tensorboard" / "lm-lora"))
    acc.Reload()
    events = acc.Scalars("train/loss")
    curve = result["train"]["loss_curve"]
    assert [e.step for e in events] == [p["step"] for p in curve] == [1, 2, 3, 4]
    assert [round(e.value, 4) for e in events] == [round(p["loss"], 4) for p in curve]
    assert acc.Scalars("params/trainable")[-1].value == result["params"]["trainable"]


def test_mlflow_file_store_holds_the_params_and_metrics(tracked, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the local file store, as peftbench wrote it
    _, out, result = tracked
    client = MlflowClient(tracking_uri=(out / "trackers" / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "lm-lora"
    assert run.data.params["train.max_steps"] == "4" and run.data.params["method.name"] == "lora"
    assert run.data.params["config_hash"] == result["config_hash"]
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [round(m.value, 4) for m in history] == [round(p["loss"], 4) for p in result["train"]["loss_curve"]]
    assert run.data.metrics["storage/adapter_bytes"] == result["storage"]["adapter_bytes"]
    assert run.data.metrics["validation/loss"] == pytest.approx(result["validation"]["loss"])


@pytest.mark.parametrize(
    "flag,needle",
    [("wandb", "wandb is not installed (pip install 'peftbench[tracking]')"), ("neptune", "unknown tracker 'neptune'")],
)
def test_a_tracker_that_cannot_run_is_refused_before_anything_runs(flag, needle, tmp_path, capsys, data_dir):
    code = cli.main(
        [
            *single("run", "random:tiny-gpt2", "lora", "language-modeling", f"file:{data_dir}/lm.jsonl"),
            "--out",
            str(tmp_path / "o"),
            "--log-with",
            flag,
        ]
    )
    assert code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "o" / "results").exists()
