"""Scale: published large shapes built without host memory, and training over several processes
(FSDP against DDP, two CPU processes over gloo, started by torchrun as a user would)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import single

from peftbench import cli
from peftbench.catalog import models
from peftbench.run.distributed import strategy
from peftbench.spec.config import TrainArgs

# Published parameter counts (the model cards'), from shapes alone: tied embeddings counted once.
PUBLISHED = {
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "t5-large": 737_668_096,
    "t5-3b": 2_851_598_336,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "qwen2.5-7b": 7_615_616_512,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_large_shapes_build_on_the_meta_device_with_their_published_counts(name):
    model = models.build_random(name, seed=0, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert models.count_parameters(model) == (PUBLISHED[name], PUBLISHED[name])


def test_random_weights_are_created_where_asked_and_equal_for_equal_seeds():
    a = models.build_random("tiny-llama", seed=3, device="cpu")
    b = models.build_random("tiny-llama", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = models.build_random("tiny-llama", seed=4)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_strategy_is_single_with_one_process_and_ddp_by_default():
    assert strategy(TrainArgs(distributed="fsdp"), world_size=1) == "single"
    assert strategy(TrainArgs(), world_size=2) == "ddp"
    assert strategy(TrainArgs(distributed="fsdp"), world_size=4) == "fsdp"


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("train.distributed=zero3", "train.distributed: 'zero3' is not one of auto, ddp, fsdp"),
        ("method.name=qlora", "train.distributed: fsdp does not shard a quantised base"),
    ],
)
def test_bad_distributed_settings_exit_2(tmp_path, monkeypatch, capsys, setting, fragment):
    monkeypatch.chdir(tmp_path)
    argv = [
        *single("run", "random:tiny-llama", "lora", "classification", "hf:imdb"),
        "--set",
        "train.distributed=fsdp",
        "--set",
        setting,
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def _torchrun(tmp_path, data_dir, name: str, distributed: str, experiments: str | None = None) -> dict:
    suite = tmp_path / f"{name}.yaml"
    experiments = experiments or (
        "  - {id: full, model: {spec: 'random:tiny-llama'}, method: {name: full}}\n"
        "  - {id: lora, model: {spec: 'random:tiny-llama'}, method: {name: lora}}\n"
        "  - {id: after, model: {spec: 'random:tiny-llama'}, method: {name: lora}, train: {distributed: ddp}}\n"
    )
    suite.write_text(
        f"name: {name}\n"
        f"defaults:\n"
        f"  data: {{spec: 'file:{data_dir}/lm.jsonl', task: language-modeling, max_source_length: 16}}\n"
        f"  train: {{max_steps: 3, batch_size: 2, distributed: {distributed}, gradient_checkpointing: true,"
        f" learning_rate: 0.01}}\n"
        f"  measure: {{enabled: false}}\n"
        f"experiments:\n{experiments}"
    )
    # one thread per process, and inductor compiling in the process (no worker pool per rank on 2 cores)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    out = tmp_path / name
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "peftbench", "run", str(suite), "--out", str(out), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = {f.stem: json.loads(f.read_text()) for f in sorted((out / "results").glob("*.json"))}
    tracebacks = "\n".join(f"{k}: {r.get('traceback')}" for k, r in results.items())  # stdout held them
    assert proc.returncode == 0, proc.stderr[-3000:] + tracebacks[-3000:]
    return {k: r | {"dir": out / "adapters" / k} for k, r in results.items()}


def test_fsdp_trains_what_ddp_trains_and_ships_a_plain_model(tmp_path, data_dir):
    from safetensors.torch import load_file

    ddp = _torchrun(tmp_path, data_dir, "ddp", "ddp")
    fsdp = _torchrun(tmp_path, data_dir, "fsdp", "fsdp")
    # an FSDP run leaves nothing behind in the process: the next experiment is plain data parallel again
    assert fsdp["after"]["status"] == "success" and not fsdp["after"]["train"]["speed"]["sharded"]
    for key, weights in (("full", "model.safetensors"), ("lora", "adapter_model.safetensors")):
        a, b = ddp[key], fsdp[key]
        assert a["status"] == b["status"] == "success"
        assert b["resolved"]["distributed"] == {"strategy": "fsdp", "world_size": 2, "gradient_checkpointing": True}
        assert a["resolved"]["distributed"]["strategy"] == "ddp"
        assert b["train"]["speed"]["sharded"] == ["LlamaDecoderLayer"] and not a["train"]["speed"]["sharded"]
        assert len(b["train"]["memory"]["per_process_peak_bytes"]) == 2
        assert a["train"]["tokens"] == b["train"]["tokens"] > 0  # both processes' tokens counted
        assert a["params"] == b["params"]
        wa, wb = load_file(a["dir"] / weights), load_file(b["dir"] / weights)
        assert wa.keys() == wb.keys()
        moved = (
            max(
                float(
                    (wa[k] - models.build_random("tiny-llama", seed=0).state_dict().get(k, torch.zeros_like(wa[k])))
                    .abs()
                    .max()
                )
                for k in wa
            )
            if key == "full"
            else 1.0
        )
        assert moved > 1e-3  # training changed the weights, so equality below says something
        for k in wa:
            assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), k


def test_compiled_sharded_training_gives_the_eager_losses_and_weights(tmp_path, data_dir):
    """train.compile under FSDP (auto leaves it off there; on or regions compile): every repeated block
    compiled with its sharding hooks, the same losses and trained weights as the eager sharded run."""
    from safetensors.torch import load_file

    runs = _torchrun(
        tmp_path,
        data_dir,
        "fsdpc",
        "fsdp",
        "  - {id: eager, model: {spec: 'random:tiny-llama'}, method: {name: full}, train: {compile: 'off'}}\n"
        "  - {id: compiled, model: {spec: 'random:tiny-llama'}, method: {name: full}, train: {compile: regions}}\n",
    )
    eager, compiled = runs["eager"], runs["compiled"]
    assert any((Path(os.environ["PEFTBENCH_CACHE"]) / "inductor").iterdir())  # graphs kept in peftbench's cache
    assert eager["status"] == compiled["status"] == "success"
    assert compiled["train"]["speed"]["compile"] == "regions" and eager["train"]["speed"]["compile"] == "off"
    assert compiled["train"]["speed"]["sharded"] == ["LlamaDecoderLayer"]
    losses = [[x["loss"] for x in r["train"]["loss_curve"]] for r in (eager, compiled)]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    wa, wb = (load_file(r["dir"] / "model.safetensors") for r in (eager, compiled))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-4), k


def test_two_processes_train_on_the_one_process_schedule_for_ddp_and_fsdp(tmp_path, data_dir):
    """Under torchrun with 2 processes the learning rate at every step is the one-process rate (accelerate's
    prepared scheduler stepped once per process, so a 10-step schedule ended at step 5), stays above 0
    until the last step, and epoch mode counts each process's share of the batches once (loop, schedule
    and the recorded steps and epochs agree)."""
    steps = "train: {max_steps: 10, log_steps: 1, gradient_checkpointing: false}"
    runs = _torchrun(
        tmp_path,
        data_dir,
        "sched",
        "ddp",
        f"  - {{id: ddp, model: {{spec: 'random:tiny-llama'}}, method: {{name: lora}}, {steps}}}\n"
        f"  - {{id: fsdp, model: {{spec: 'random:tiny-llama'}}, method: {{name: full}}, {steps[:-1]}, "
        "distributed: fsdp}}\n"
        "  - {id: epochs, model: {spec: 'random:tiny-llama'}, method: {name: lora},"
        " train: {max_steps: -1, epochs: 2, log_steps: 1}}\n",
    )
    one = tmp_path / "one"
    assert cli.main(["run", str(tmp_path / "sched.yaml"), "--out", str(one), "--in-process", "--device", "cpu"]) == 0
    for key in ("ddp", "fsdp", "epochs"):
        single = json.loads((one / "results" / f"{key}.json").read_text())
        two = runs[key]
        assert two["resolved"]["distributed"]["world_size"] == 2 and single["resolved"]["num_processes"] == 1
        rates = [[x["learning_rate"] for x in r["train"]["loss_curve"]] for r in (single, two)]
        if key != "epochs":
            assert [x["step"] for x in two["train"]["loss_curve"]] == list(range(1, 11))
            assert rates[1] == pytest.approx(rates[0], rel=1e-9, abs=1e-12)  # step for step
        assert all(lr > 0 for lr in rates[1][:-1]) and rates[1][-1] == pytest.approx(0.0, abs=1e-12)
        assert two["train"]["steps"] == two["resolved"]["total_steps"] == len(rates[1])
    # epoch mode: both make 2 passes; two processes share each pass, so they take half the steps
    single, two = json.loads((one / "results" / "epochs.json").read_text()), runs["epochs"]
    assert single["train"]["epochs"] == two["train"]["epochs"] == 2.0
    per_epoch = single["resolved"]["batches_per_epoch"]
    assert two["resolved"]["batches_per_epoch"] == -(-per_epoch // 2)
    assert single["train"]["steps"] == 2 * per_epoch and two["train"]["steps"] == 2 * -(-per_epoch // 2)
