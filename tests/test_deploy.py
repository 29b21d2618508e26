"""Deployment targets: the ONNX export is PyTorch's function (logits and greedy tokens, both families, a
second model's weights written into the first one's graph), a suite deployed to CPU targets re-scores its
test examples (fp32 exactly, int8 reported), targets a machine cannot build are recorded why, and bad
target settings are refused before training."""

import csv
import json

import pytest
import torch
import yaml
from conftest import save_tiny

from peftbench import cli
from peftbench.catalog import models
from peftbench.deploy import targets
from peftbench.deploy.onnx import Graph, OnnxModel, folder_bytes, quantize
from peftbench.run import plan

pytest.importorskip("onnxruntime")


def _inputs(family: str, vocab: int):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row: its real positions must agree
    if family == "seq2seq":
        return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": ids[:, :5]}, torch.ones(3, 5).bool()
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}, mask.bool()


@pytest.mark.parametrize("shape", ["tiny-gpt2", "tiny-llama", "tiny-t5"])
def test_fp32_onnx_is_pytorchs_function_and_takes_another_models_weights(tmp_path, shape):
    a, b = models.build_random(shape, seed=0).eval(), models.build_random(shape, seed=1).eval()
    family = "seq2seq" if a.config.is_encoder_decoder else "causal"
    graph = Graph(a, family=family)
    assert graph.fits(b) and graph.mapped == {n for n, _ in a.named_parameters()}
    for tag, m in (("a", a), ("b", b)):  # b: the graph exported from a, b's weights written in
        path = graph.save(m, tmp_path / tag)
        om = OnnxModel(path, family=family, threads=1, config=m.config)
        inputs, real = _inputs(family, m.config.vocab_size)
        with torch.no_grad():
            ref = m(**inputs).logits
        assert (om(**inputs).logits - ref).abs()[real].max() < 1e-4
        prompt = {"input_ids": inputs["input_ids"][:, :6], "attention_mask": torch.ones(3, 6, dtype=torch.long)}
        kw = {"max_new_tokens": 4, "min_new_tokens": 4, "pad_token_id": 0}
        assert torch.equal(om.generate(**prompt, **kw), m.generate(**prompt, **kw, do_sample=False))
    int8 = quantize(path, tmp_path / "int8", "int8")
    assert folder_bytes(int8.parent) < folder_bytes(path.parent)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("deploy")
    model = save_tiny(tmp_path_factory, "tiny-llama")
    raw = {
        "name": "deploy",
        "defaults": {
            "model": {"spec": str(model)},
            "data": {"spec": f"file:{data_dir}/cls.jsonl", "task": "classification", "max_train_samples": 16},
            "train": {"max_steps": 2, "batch_size": 4},
            "measure": {
                "rounds": 3,
                "block_iterations": 1,
                "warmup": 1,
                "seq_len": 8,
                "new_tokens": 2,
                "large_batch_size": 0,
                "targets": ["torch", "cpu", "onnx", "onnx-int8", "gguf-q8_0"],
                "cpu_threads": 1,
                "forgetting": None,
            },
        },
        "experiments": [
            {"id": "zero", "method": {"name": "none"}},
            {"id": "lora", "method": {"name": "lora"}, "train": {"learning_rate": 0.05}},
            {"id": "pt", "method": {"name": "prompt_tuning"}},
        ],
    }
    suite = tmp / "deploy.yaml"
    suite.write_text(yaml.safe_dump(raw))
    out = tmp / "out"
    assert cli.main(["run", str(suite), "--out", str(out), "--device", "cpu"]) == 0
    (doc,) = (out / "measurements").glob("*.json")
    return out, json.loads(doc.read_text())


def test_cpu_targets_rescore_the_test_examples_fp32_exactly(deployed):
    out, doc = deployed
    for run_id in ("zero", "lora"):
        run = json.loads((out / "results" / f"{run_id}.json").read_text())
        for target in ("cpu", "onnx"):
            rec = doc["deploy"][target][run_id]
            assert rec["status"] == "built" and rec["quality"]["accuracy"] == run["quality"]["accuracy"]
            change = rec["quality_change"]["accuracy"]
            assert (change["effect"], change["low"], change["high"]) == (0.0, 0.0, 0.0)
            assert rec["max_abs_logit_diff"] < 1e-4 and rec["top1_agreement"] == 1.0
        int8 = doc["deploy"]["onnx-int8"][run_id]  # reported as measured, whatever it did
        assert int8["bytes"] < doc["deploy"]["onnx"][run_id]["bytes"] and int8["quality_change"]["accuracy"]
    # the zero-shot base and the merged LoRA share one exported graph: the second was written, not exported
    assert doc["deploy"]["onnx"]["lora"]["note"] is None and "exported here" in doc["deploy"]["onnx"]["zero"]["note"]


def test_targets_that_cannot_be_built_say_why_and_built_ones_are_timed_in_every_round(deployed):
    out, doc = deployed
    assert doc["deploy"]["onnx"]["pt"]["status"] == "not exportable"  # prompt tuning does not merge
    assert "pt:merged" not in {c["name"] for c in doc["candidates"]}
    assert all(r["status"] == "skipped" for r in doc["deploy"]["gguf-q8_0"].values())
    built = [r["candidate"] for t in doc["deploy"].values() for r in t.values() if r["status"] == "built"]
    assert len(built) == 2 * 3  # zero and lora on cpu, onnx and onnx-int8
    for name in built:
        assert len(doc["timings"]["forward_b1"][name]) == doc["rounds"] and all(name in o for o in doc["orders"])
    lora = json.loads((out / "results" / "lora.json").read_text())
    assert lora["config"]["measure"]["stage"] == "on"  # auto: the group holds three runs


def test_the_report_has_a_section_a_verdict_and_columns_per_target(deployed):
    out, doc = deployed
    verdict = json.loads((out / "verdict.json").read_text())
    (group,) = verdict["groups"]
    entries = {d["target"]: d for d in group["deploy"]}
    assert set(entries) == {"cpu", "onnx", "onnx-int8", "gguf-q8_0"}
    lat = next(m for m in entries["onnx"]["measures"] if m["measure"] == "latency_p50_ms")
    assert set(lat["winners"]) <= {"zero", "lora"} and lat["best"] in lat["winners"]
    assert entries["onnx"]["experiments"]["pt"]["status"].startswith("not exportable")
    with open(out / "summary.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert float(rows["lora"]["onnx-int8_bytes_mean"]) == doc["deploy"]["onnx-int8"]["lora"]["bytes"]
    assert float(rows["lora"]["onnx_latency_p50_ms_ci95_low"]) > 0
    report = (out / "report.md").read_text()
    assert "### Deployed: onnx-int8" in report and "What onnx-int8 does to accuracy" in report


def _suite(tmp_path, measure: dict, n: int = 1) -> str:
    raw = {
        "name": "t",
        "defaults": {
            "model": {"spec": "random:tiny-gpt2"},
            "data": {"spec": "builtin:moby-dick", "task": "language-modeling"},
        },
        "experiments": [
            {"id": f"e{i}", "method": {"name": "lora"}, "train": {"seed": i}, "measure": measure} for i in range(n)
        ],
    }
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize(
    "measure,fragment",
    [
        ({"targets": ["onnx", "tflite"]}, "measure.targets: unknown 'tflite'"),
        ({"targets": ["onnx"], "stage": "off"}, "deployment targets are built in the stage; measure.stage is off"),
        ({"targets": ["cpu", "cpu"]}, "measure.targets: 'cpu' named twice"),
        ({"targets": ["cpu"], "cpu_threads": 0}, "measure.cpu_threads: must be >= 1"),
        ({"targets": ["onnx"], "merged": False}, "deployment targets ship the merged model; measure.merged is false"),
    ],
)
def test_bad_targets_exit_2_before_training(tmp_path, capsys, measure, fragment):
    out = tmp_path / "out"
    assert cli.main(["run", _suite(tmp_path, measure), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and not out.exists()


def test_a_missing_extra_is_named(tmp_path, capsys, monkeypatch):
    real = targets.importlib.util.find_spec
    monkeypatch.setattr(targets.importlib.util, "find_spec", lambda m: None if m == "onnxruntime" else real(m))
    assert cli.main(["run", _suite(tmp_path, {"targets": ["onnx-int8"]}), "--out", str(tmp_path / "o")]) == 2
    assert "onnx-int8 needs onnxruntime: pip install 'peftbench[deploy]'" in capsys.readouterr().err
    assert targets.missing_extra("gguf-q8_0") is None or "peftbench[gguf]" in targets.missing_extra("gguf-q8_0")


def test_a_gpu_target_without_a_gpu_is_skipped_with_the_reason(monkeypatch):
    from peftbench.measure import deployed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert deployed.skip_reason("gpu-int4") == "skipped: needs a CUDA GPU" and deployed.skip_reason("onnx") is None


def test_stage_auto_is_on_for_a_group_of_two_or_a_deployment_and_off_for_a_run_alone(tmp_path):
    def stages(measure, n):
        return [r.exp.measure.stage for r in plan.plan_runs(plan.load_suite(_suite(tmp_path, measure, n)))]

    assert stages({}, 1) == ["off"] and stages({}, 2) == ["on", "on"] and stages({"targets": ["cpu"]}, 1) == ["on"]
    assert stages({"stage": "off"}, 2) == ["off", "off"]


def test_gpt2s_conv1d_layers_become_the_same_linear_layers_for_torchao():
    from peftbench.deploy.build import conv1d_to_linear

    m = models.build_random("tiny-gpt2", seed=0).eval()
    ids = torch.randint(3, m.config.vocab_size, (2, 9))
    with torch.no_grad():
        before = m(input_ids=ids).logits
        n = conv1d_to_linear(m)
        after = m(input_ids=ids).logits
    assert n == 4 * m.config.n_layer and not any(type(x).__name__ == "Conv1D" for x in m.modules())
    assert torch.allclose(before, after, atol=1e-5)


def test_plot_labels_drop_what_every_id_shares():
    from peftbench.report.deploy import short_labels

    ids = ["smollm2--classification--none", "smollm2--classification--lora", "smollm2--classification--lora-r16"]
    assert short_labels(ids) == dict(zip(ids, ["none", "lora", "lora-r16"]))
    assert short_labels(["a", "ab"]) == {"a": "a", "ab": "ab"} and short_labels(["only--one"]) == {
        "only--one": "only--one"
    }
