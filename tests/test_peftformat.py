"""peft's method-comparison format in and out (issue 28): a folder of peft experiments becomes a suite (training
parameters mapped exactly, an optimizer peftbench lacks left out with its reason, peft's own adapter file as the
method, a key the installed peft lacks accepted with a warning), the suite runs, and `export-peft` writes peft's
result layout with the adapter's config, the exact trainable-parameter count and the weights file's size."""

import json
import logging

import pytest
import yaml
from conftest import FAST_MEASURE, save_tiny

from peftbench import cli
from peftbench.report.peftformat import import_peft

DEFAULTS = {
    "model_id": "meta-llama/Llama-3.2-3B",
    "dtype": "bfloat16",
    "max_seq_length": 48,
    "batch_size": 4,
    "max_steps": 5000,
    "eval_steps": 250,
    "compile": False,
    "seed": 0,
    "grad_norm_clip": 1.0,
    "optimizer_kwargs": {"lr": 1e-4, "weight_decay": 0.1},
    "lr_scheduler": "cosine",
}


def _peft_folder(tmp_path):
    from peft import LoraConfig

    root = tmp_path / "MetaMathQA"
    (root / "experiments").mkdir(parents=True)
    (root / "default_training_params.json").write_text(json.dumps(DEFAULTS))
    lora = root / "experiments" / "lora" / "tiny-rank8"
    LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM").save_pretrained(lora)
    cfg = json.loads((lora / "adapter_config.json").read_text())
    (lora / "adapter_config.json").write_text(json.dumps({**cfg, "a_key_of_a_newer_peft": 1}))
    (lora / "training_params.json").write_text(json.dumps({"max_steps": 2, "optimizer_kwargs": {"lr": 1e-3}}))
    fa = root / "experiments" / "lora" / "tiny-lorafa"
    LoraConfig(r=8, target_modules=["q_proj"]).save_pretrained(fa)
    (fa / "training_params.json").write_text(json.dumps({"optimizer_type": "lora-fa"}))
    full = root / "experiments" / "full-finetuning" / "tiny-lr"
    full.mkdir(parents=True)
    params = {"max_steps": 2, "optimizer_kwargs": {"lr": 1e-5}, "init_kv_cache_prefix": True}  # a key not carried over
    (full / "training_params.json").write_text(json.dumps(params))
    return root


def test_peft_experiments_become_a_suite_with_their_parameters_mapped(tmp_path):
    suite, notes = import_peft(_peft_folder(tmp_path))
    by = {e["id"]: e for e in suite["experiments"]}
    assert sorted(by) == ["full-finetuning--tiny-lr", "lora--tiny-rank8"]
    lora = by["lora--tiny-rank8"]
    assert lora["model"] == {"spec": "hf:meta-llama/Llama-3.2-3B", "dtype": "bfloat16"}
    assert lora["method"]["peft_config"].endswith("experiments/lora/tiny-rank8/adapter_config.json")
    assert lora["train"] == {
        "max_steps": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "weight_decay": 0.01,  # its optimizer_kwargs replace the defaults' whole (as in peft's run): AdamW's default
        "warmup_ratio": 0.1,
        "max_grad_norm": 1.0,
        "lr_scheduler": "cosine",
        "seed": 0,
        "eval_steps": 250,
        "compile": "off",
        "mixed_precision": "no",  # peft trains the bf16 weights without autocast
    }
    assert lora["data"] == {"max_source_length": 48}
    assert by["full-finetuning--tiny-lr"]["method"] == {"name": "full"}
    assert by["full-finetuning--tiny-lr"]["train"]["learning_rate"] == 1e-5
    assert any("lora--tiny-lorafa: left out: optimizer_type 'lora-fa'" in n for n in notes)
    assert "full-finetuning--tiny-lr: not carried over: init_kv_cache_prefix" in notes


def test_import_refuses_a_folder_without_experiments_in_one_line(tmp_path, capsys):
    assert cli.main(["import-peft", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no peft experiment" in err


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("peft-round-trip")
    model = save_tiny(tmp_path_factory, "tiny-llama")
    root = _peft_folder(tmp)
    suite_path = tmp / "suite.yaml"
    args = ["import-peft", str(root), "--model", str(model), "--out", str(suite_path)]
    args += ["--dataset", f"file:{data_dir}/cls.jsonl", "--task", "classification"]
    assert cli.main(args) == 0
    suite = yaml.safe_load(suite_path.read_text())
    suite["defaults"]["data"] |= {"max_train_samples": 16, "max_eval_samples": 8}
    suite["defaults"]["measure"] = {**FAST_MEASURE, "large_batch_size": 0, "stage": "off"}
    suite_path.write_text(yaml.safe_dump(suite))
    out = tmp / "out"
    assert cli.main(["run", str(suite_path), "--out", str(out), "--device", "cpu", "--in-process"]) == 0
    assert cli.main(["export-peft", str(out)]) == 0
    return out


def test_a_peft_file_with_a_key_this_peft_lacks_is_accepted_with_a_warning(tmp_path, caplog):
    from peftbench.run.plan import load_suite

    suite, _ = import_peft(
        _peft_folder(tmp_path),
        model="random:tiny-llama",
        data={"spec": "builtin:spam-assassin", "task": "classification"},
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    with caplog.at_level(logging.WARNING, logger="peftbench"):
        exps = {e.id: e for e in load_suite(str(path)).experiments}
    lora = exps["lora--tiny-rank8"].method
    assert (
        lora.name == "lora"
        and lora.options["r"] == 8
        and sorted(lora.options["target_modules"]) == ["q_proj", "v_proj"]
    )
    assert "a_key_of_a_newer_peft" in caplog.text and "a_key_of_a_newer_peft" not in lora.options


def test_export_writes_peft_results_with_exact_counts_and_the_adapter_config(round_trip):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = round_trip
    files = sorted(p.name for p in (out / "peft-results").glob("*.json"))
    assert files == ["full-finetuning--tiny-lr.json", "lora--tiny-rank8.json"]
    doc = json.loads((out / "peft-results" / "lora--tiny-rank8.json").read_text())
    assert set(doc) == {"run_info", "train_info", "meta_info"}
    run, train = doc["run_info"], doc["train_info"]
    assert run["experiment_name"] == "lora/tiny-rank8" and run["error_msg"] == ""
    assert run["peft_config"]["r"] == 8 and sorted(run["peft_config"]["target_modules"]) == ["q_proj", "v_proj"]
    assert run["train_config"]["max_steps"] == 2 and run["train_config"]["optimizer_kwargs"] == {
        "lr": 1e-3,
        "weight_decay": 0.01,
    }
    result = json.loads((out / "results" / "lora--tiny-rank8.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(result["config"]["model"]["spec"])
    expected = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"])).get_nb_trainable_parameters()[
        0
    ]
    assert train["num_trainable_params"] == result["params"]["trainable"] == expected
    weights = out / "adapters" / "lora--tiny-rank8" / "adapter_model.safetensors"
    assert train["file_size"] == weights.stat().st_size and train["status"] == "success"
    final = train["metrics"][-1]
    assert final["step"] == 2 and final["test accuracy"] == pytest.approx(result["quality"]["accuracy"] / 100)
    assert doc["meta_info"]["package_info"]["peft-version"] == result["env"]["peft"]
