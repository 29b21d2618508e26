"""peftbench against peft's own numbers (issue 28): trainable parameters of peft's method-comparison experiments
on Llama-3.2-3B, exactly, on the meta device; AdaLoRA's rank scalars kept frozen; what a plot calls an experiment."""

import pytest
import torch

from peftbench.catalog import methods, models
from peftbench.report.plots import exp_label


@pytest.mark.parametrize(
    ("method", "options", "peft_count"),
    [  # peft's method_comparison/MetaMathQA experiments on meta-llama/Llama-3.2-3B (their trainable_params)
        ("lora", {"r": 32}, 9_175_040),
        ("lora", {"r": 64}, 18_350_080),
        ("loha", {"r": 32}, 18_350_080),
        ("ia3", {}, 286_720),
        ("full", {}, 3_212_749_824),
    ],
)
def test_trainable_parameters_equal_peft_method_comparison_on_llama_3_2_3b(method, options, peft_count):
    model = models.build_random("llama-3.2-3b", seed=0, device="meta")
    applied = methods.apply(name=method, options=options, model=model, family="causal", total_steps=100)
    assert sum(p.numel() for p in applied.model.parameters() if p.requires_grad) == peft_count


def test_adalora_rank_scalars_stay_frozen_under_a_bf16_base():
    """peft 0.21's adapter-dtype cast re-wraps AdaLoRA's ``ranknum`` as trainable Parameters (AdamW moved them:
    4.0 -> 3.988 in 3 steps); they stay constants, and the result says so."""
    for dtype in (torch.bfloat16, torch.float32):
        model = models.build_random("tiny-llama", seed=0, dtype=dtype)
        applied = methods.apply(name="adalora", options={}, model=model, family="causal", total_steps=20)
        ranknum = [p for n, p in applied.model.named_parameters() if ".ranknum." in n]
        assert len(ranknum) == 4 and not any(p.requires_grad for p in ranknum)
        trainable = sum(p.numel() for p in applied.model.parameters() if p.requires_grad)
        assert trainable == 5424  # the lora_A, lora_B and lora_E factors alone, whatever the base's dtype
        assert bool(applied.resolved.get("workarounds")) == (dtype == torch.bfloat16)


class _Agg:
    def __init__(self, id_, method):
        self.id, self.method = id_, method


def test_plots_call_two_experiments_of_one_method_by_their_ids():
    aggs = [_Agg("m--t--none", "none"), _Agg("m--t--lora", "lora"), _Agg("m--t--lora-r4", "lora")]
    assert [exp_label(a, aggs) for a in aggs] == ["none", "lora", "lora-r4"]
    assert exp_label(_Agg("x", "ia3"), [_Agg("x", "ia3")]) == "ia3"


PEFT_LORA_R32 = {  # as peft's method_comparison writes an experiment's adapter_config.json (Llama-3.2-3B, LoRA r32)
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": None,
    "inference_mode": False,
    "r": 32,
    "lora_alpha": 64,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
    "an_option_of_a_later_peft": True,
}


def _suite_with(tmp_path, data_dir, method: dict, model="random:tiny-llama") -> str:
    import yaml

    raw = {
        "name": "from-peft",
        "defaults": {
            "train": {"max_steps": 2, "batch_size": 4},
            "data": {"max_train_samples": 8, "max_eval_samples": 4, "max_source_length": 32},
            "measure": {"enabled": False, "forgetting": None},
        },
        "matrix": {
            "model_task": [
                {"model": {"spec": model}, "data": {"spec": f"file:{data_dir}/cls.jsonl", "task": "classification"}}
            ],  # noqa: E501
            "methods": [{"method": method}],
        },
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    return str(tmp_path / "s.yaml")


def test_a_peft_adapter_config_is_a_method_with_peft_counts_and_a_warning_for_keys_this_peft_lacks(
    tmp_path, data_dir, caplog
):
    import json

    from peftbench.run import plan

    (tmp_path / "adapter_config.json").write_text(json.dumps(PEFT_LORA_R32))
    path = _suite_with(
        tmp_path, data_dir, {"peft_config": str(tmp_path / "adapter_config.json")}, "random:llama-3.2-3b"
    )
    with caplog.at_level("WARNING", logger="peftbench"):
        (exp,) = plan.load_suite(path).experiments
    assert "an_option_of_a_later_peft" in caplog.text
    assert exp.id == "random-llama-3.2-3b--classification--lora" and exp.method.name == "lora"
    assert exp.method.options == {
        "r": 32,
        "lora_alpha": 64,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
    }
    model = models.build_random("llama-3.2-3b", seed=0, device="meta")
    applied = methods.apply(name=exp.method.name, options=exp.method.options, model=model, family="causal")
    assert sum(p.numel() for p in applied.model.parameters() if p.requires_grad) == 9_175_040  # peft's count


def test_options_beside_a_peft_file_win_and_a_typo_beside_it_is_still_refused(tmp_path, data_dir, capsys):
    import json

    from peftbench import cli
    from peftbench.run import plan

    (tmp_path / "adapter_config.json").write_text(json.dumps(PEFT_LORA_R32))
    f = str(tmp_path / "adapter_config.json")
    (exp,) = plan.load_suite(_suite_with(tmp_path, data_dir, {"peft_config": f, "r": 4})).experiments
    assert exp.method.options["r"] == 4 and exp.method.options["lora_alpha"] == 64
    assert (
        cli.main(
            ["run", _suite_with(tmp_path, data_dir, {"peft_config": f, "lora_alfa": 8}), "--out", str(tmp_path / "o")]
        )
        == 2
    )  # noqa: E501
    assert "method.lora_alfa: not an option of LoraConfig" in capsys.readouterr().err
    assert cli.main(["run", _suite_with(tmp_path, data_dir, {"peft_config": str(tmp_path / "nope.json")})]) == 2
    err = capsys.readouterr().err
    assert (
        f"method.peft_config: {str(tmp_path / 'nope.json')!r}: not found" in err and len(err.strip().splitlines()) == 1
    )
    odd = str(tmp_path / "no\rpe\n.json")  # control characters in the path: still one line (the fuzzer's find)
    assert cli.main(["run", _suite_with(tmp_path, data_dir, {"peft_config": odd})]) == 2
    err = capsys.readouterr().err
    assert f"method.peft_config: {odd!r}: not found" in err and len(err.strip().splitlines()) == 1
