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
