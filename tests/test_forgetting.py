"""Forgetting: the general-text probe scored on the base before and the trained model after."""

import csv
import json
import random

import pytest
import torch
import yaml
from conftest import FAST_MEASURE, save_tiny

from peftbench import cli
from peftbench.catalog import methods, models
from peftbench.catalog.forgetting import Probe, resolve
from peftbench.errors import ConfigError
from peftbench.report import aggregate
from peftbench.results import load_results
from peftbench.run.plan import load_suite


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    return save_tiny(tmp_path_factory, "tiny-gpt2")


@pytest.fixture(scope="module")
def general(tmp_path_factory):
    """'General text' the task never shows: digits and capitals, where the task is lower-case words."""
    rng = random.Random(1)
    d = tmp_path_factory.mktemp("general")
    with open(d / "general.jsonl", "w") as f:
        for _ in range(40):
            words = ["".join(rng.choice("0123456789XYZQ") for _ in range(rng.randint(2, 6))) for _ in range(30)]
            f.write(json.dumps({"text": " ".join(words)}) + "\n")
    return d / "general.jsonl"


SETTING = {"samples": 12, "tokens": 32}


def test_auto_is_the_offline_corpus_for_pretrained_models_and_off_for_random_weights():
    auto = {"spec": "auto", **SETTING}
    assert resolve(auto, model_spec="builtin:smollm2-135m", task_data="builtin:spam-assassin")["spec"] == (
        "builtin:moby-dick"
    )
    assert resolve(auto, model_spec="gpt2", task_data="builtin:moby-dick")["spec"] == "builtin:sotu"  # not the task
    assert resolve(auto, model_spec="random:gpt2", task_data="x") is None
    assert resolve(None, model_spec="gpt2", task_data="x") is None
    assert resolve({"spec": "off"}, model_spec="gpt2", task_data="x") is None


def test_zero_shot_and_a_zero_adapter_forget_exactly_nothing(tiny_pretrained, general):
    loaded = models.load(models.ModelArgs(spec=str(tiny_pretrained)), seed=0, device=torch.device("cpu"))
    probe = Probe.load(
        {"spec": f"file:{general}", **SETTING}, tok=loaded.tokenizer, family="causal", data_seed=0, max_positions=64
    )
    assert len(probe.feats) == 12 and all(len(f["input_ids"]) == 32 for f in probe.feats)
    before = probe.nll(loaded.model, tok=loaded.tokenizer, device="cpu", batch_size=4)
    none = probe.record(before, list(before))
    assert (none["increase"], none["low"], none["high"]) == (0, 0, 0)
    # LoRA as initialised (B = 0): its model is the base to the bit, unmerged or merged
    applied = methods.apply(name="lora", options={}, model=loaded.model, family="causal", total_steps=1)
    after = probe.nll(applied.model, tok=loaded.tokenizer, device="cpu", batch_size=4)
    assert after == before
    merged, _ = methods.merge(applied.model)
    zero = probe.record(before, probe.nll(merged, tok=loaded.tokenizer, device="cpu", batch_size=4))
    assert (zero["increase"], zero["low"], zero["high"]) == (0, 0, 0)
    # a changed weight moves it, and the interval holds the estimate
    with torch.no_grad():
        merged.transformer.wte.weight.add_(torch.randn_like(merged.transformer.wte.weight))
    moved = probe.record(before, probe.nll(merged, tok=loaded.tokenizer, device="cpu", batch_size=4))
    assert moved["increase"] > 0 and moved["low"] <= moved["increase"] <= moved["high"]


def _suite(tmp_path, model, data_dir, general, experiments, **forgetting):
    raw = {
        "name": "forget",
        "defaults": {
            "model": {"spec": str(model)},
            "data": {
                "spec": f"file:{data_dir}/cls.jsonl",
                "task": "classification",
                "max_train_samples": 32,
                "max_eval_samples": 8,
                "max_source_length": 32,
            },
            "train": {"max_steps": 6, "batch_size": 8, "log_steps": 1},
            "measure": {**FAST_MEASURE, "forgetting": {"spec": f"file:{general}", **SETTING, **forgetting}},
        },
        "experiments": experiments,
    }
    path = tmp_path / "forget.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_huge_rate_forgets_more_than_a_tiny_one_and_the_report_says_so(tmp_path, tiny_pretrained, data_dir, general):
    exps = [
        {"id": "none", "method": {"name": "none"}},
        {"id": "tiny", "method": {"name": "full"}, "train": {"learning_rate": 1.0e-7}},
        {"id": "huge", "method": {"name": "full"}, "train": {"learning_rate": 3.0e-2}},
    ]
    out = tmp_path / "out"
    suite = _suite(tmp_path, tiny_pretrained, data_dir, general, exps)
    assert cli.main(["run", str(suite), "--out", str(out), "--device", "cpu", "--in-process"]) == 0
    res = {r["id"]: r for r in load_results(out)}
    none, tiny, huge = res["none"]["forgetting"], res["tiny"]["forgetting"], res["huge"]["forgetting"]
    assert (none["increase"], none["low"], none["high"]) == (0, 0, 0)
    assert none["samples"]["columns"]["before"] == huge["samples"]["columns"]["before"]  # one base, one probe
    assert abs(tiny["increase"]) < 0.01 < huge["increase"]
    aggs = aggregate.aggregate(load_results(out))
    by = {a.id: a for a in aggs}
    c = aggregate.compare_aggs(by["tiny"], by["huge"], "forgetting")
    assert c.significant and c.effect > 0.01 and "paired" in c.test  # the same windows on both sides
    verdict = json.loads((out / "verdict.json").read_text())
    group = verdict["groups"][0]
    forget = next(m for m in group["measures"] if m["measure"] == "forgetting")
    assert forget["winners"] == ["tiny"] and forget["better"] == "lower"
    lf = group["learning_forgetting"]
    assert {p["id"] for p in lf["points"]} == {"none", "tiny", "huge"} and "huge" not in lf["pareto"]
    assert list((out / "plots").glob("*learning-forgetting.png"))
    rows = {r["id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert float(rows["huge"]["forgetting_mean"]) == pytest.approx(huge["increase"], abs=1e-6)
    assert "forgetting" in (out / "report.md").read_text()


def test_bad_forgetting_settings_are_refused_before_anything_loads(tmp_path, tiny_pretrained, data_dir, general):
    for bad, words in (
        ({"samples": 1}, "measure.forgetting.samples: an integer >= 2"),
        ({"windows": 3}, "measure.forgetting.windows: unknown key"),
        ({"spec": "nowhere:x"}, "measure.forgetting.spec: 'nowhere:x' must start with one of"),
    ):
        suite = _suite(tmp_path, tiny_pretrained, data_dir, general, [{"method": {"name": "lora"}}], **bad)
        with pytest.raises(ConfigError, match=words):
            load_suite(str(suite))
