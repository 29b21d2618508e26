"""Methods that need the loop, end to end through the runner: AdaLoRA's rank reallocation, the
prompt family (trained, saved, reloaded, scored, measured unmerged), LoftQ, quantised bases
recorded as skipped on CPU, and methods refused before anything loads."""

import json

import pytest
import torch
import yaml
from conftest import FAST_MEASURE, save_tiny

from peftbench import cli
from peftbench.catalog import methods, models
from peftbench.catalog.loftq import NF4_LEVELS, nf4_roundtrip
from peftbench.spec.config import TrainArgs

FAST = {
    "train": {"max_steps": 2, "batch_size": 4},
    "data": {"max_train_samples": 16, "max_eval_samples": 4, "max_source_length": 48, "max_target_length": 4},
    "measure": {**FAST_MEASURE},
}


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    return save_tiny(tmp_path_factory, "tiny-gpt2")


def _suite(tmp_path, experiments, name="m"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "defaults": FAST, "experiments": experiments}))
    return path


@pytest.fixture(scope="module")
def prompt_runs(tmp_path_factory, data_dir, tiny_pretrained):
    tmp = tmp_path_factory.mktemp("prompt")
    cls = {
        "model": {"spec": str(tiny_pretrained)},
        "data": {"spec": f"file:{data_dir}/cls.jsonl", "task": "classification"},
    }
    summ = {
        "model": {"spec": "random:tiny-t5"},
        "data": {
            "spec": f"file:{data_dir}/summ.jsonl",
            "task": "summarization",
            "fields": {"source": "article", "target": "highlights"},
        },
    }
    exps = [
        {"id": "pt", **cls, "method": {"name": "prompt-tuning", "num_virtual_tokens": 4}},
        {"id": "prefix", **cls, "method": {"name": "prefix_tuning", "num_virtual_tokens": 4}},
        {"id": "ptune-t5", **summ, "method": {"name": "p_tuning", "num_virtual_tokens": 4}},
        {"id": "ada", **cls, "method": {"name": "adalora", "init_r": 4, "target_r": 2}},
        {"id": "q", **cls, "method": {"name": "qlora"}},
    ]
    out = tmp / "out"
    code = cli.main(["run", str(_suite(tmp, exps)), "--out", str(out), "--device", "cpu", "--in-process"])
    res = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    return code, out, res


def test_prompt_methods_train_save_score_and_measure_unmerged(prompt_runs):
    from peft import PeftModel

    from peftbench.report import stages

    code, out, res = prompt_runs
    assert code == 0  # the skipped qlora run does not fail the suite
    # pt and prefix are timed in their group's stage (measure.stage: auto), ptune-t5, alone, by its own run
    assert res["pt"]["inference"]["stage"]["file"] and "stage" not in res["ptune-t5"]["inference"]
    stages.attach(list(res.values()), out)
    for rid, peft_type in (("pt", "PROMPT_TUNING"), ("prefix", "PREFIX_TUNING"), ("ptune-t5", "P_TUNING")):
        r = res[rid]
        assert r["status"] == "success", r.get("error")
        assert r["method_resolved"]["peft_type"] == peft_type and r["method_resolved"]["num_virtual_tokens"] == 4
        assert r["inference"]["merged"] is None and "do not merge" in r["inference"]["merge_note"]
        assert r["inference"]["latency_ms"]["p50_ms"] > 0
        assert r["params"]["trainable"] > 0 and r["storage"]["adapter_bytes"] > 0
    r = res["pt"]
    assert r["quality"]["accuracy"] is not None
    reloaded = PeftModel.from_pretrained(models.build_random("tiny-gpt2", seed=0), out / r["storage"]["adapter_dir"])
    assert reloaded.peft_config["default"].num_virtual_tokens == 4


def test_adalora_gets_the_run_length_and_its_rank_budget_each_step(prompt_runs):
    _, _, res = prompt_runs
    r = res["ada"]
    assert r["status"] == "success", r.get("error")
    assert r["method_resolved"]["total_step"] == 2 and r["method_resolved"]["target_r"] == 2


def test_adalora_hook_masks_ranks_down_to_the_target():
    from accelerate import Accelerator

    from peftbench.run.settings import for_loop
    from peftbench.run.train import train

    applied = methods.apply(
        name="adalora",
        options={"init_r": 6, "target_r": 1, "tinit": 1, "tfinal": 1, "deltaT": 1},
        model=models.build_random("tiny-llama", seed=0),
        family="causal",
        total_steps=8,
    )
    calls = []

    def hook(step):
        calls.append(step)
        applied.step_hook(step)

    feats = [{"input_ids": list(range(5, 25)), "labels": list(range(5, 25))} for _ in range(16)]
    args, acc = TrainArgs(max_steps=8, batch_size=2), Accelerator(cpu=True)
    settings = for_loop(n_examples=len(feats), args=args, learning_rate=1e-2, accelerator=acc)
    train(applied.model, feats, args=args, settings=settings, accelerator=acc, pad_id=0, step_hook=hook)
    assert calls == list(range(1, 9))
    ranks = [int((p != 0).sum()) for n, p in applied.model.named_parameters() if "lora_E" in n]
    assert ranks and sum(ranks) < 6 * len(ranks)  # the budget cut ranks below init_r


def test_quantised_base_is_skipped_on_cpu_with_the_reason(prompt_runs):
    _, out, res = prompt_runs
    r = res["q"]
    assert r["status"] == "skipped" and "needs CUDA" in r["error"]
    assert "1 skipped" in (out / "report.md").read_text()


def test_loftq_initialises_lora_for_the_quantisation_it_records():
    base = models.build_random("tiny-llama", seed=0)
    w0 = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    applied = methods.apply(name="loftq", options={"bits": 4, "iterations": 1}, model=base, family="causal")
    loftq = applied.resolved["loftq_config"]
    assert applied.resolved["init_lora_weights"] == "loftq" and loftq["loftq_bits"] == 4 and loftq["loftq_iter"] == 1
    layer = applied.model.base_model.model.model.layers[0].self_attn.q_proj
    # the base holds the NF4 reconstruction of the weight; base + B A approximates it better than the base alone
    q = layer.base_layer.weight.detach()
    assert torch.equal(q, nf4_roundtrip(w0))
    ab = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    assert (q + ab - w0).norm() < 0.9 * (q - w0).norm()


def test_loftq_for_a_quantised_base_initialises_before_quantising_and_carries_the_adapter_over():
    import copy

    opts = {"bits": 4, "iterations": 2}
    base = models.build_random("tiny-llama", seed=0)
    direct = methods.apply(name="loftq", options=opts, model=copy.deepcopy(base), family="causal").model
    q_base, factors = methods.loftq_base(options=opts, model=base, family="causal")
    w = q_base.model.layers[0].self_attn.q_proj.weight
    assert type(q_base).__name__ == "LlamaForCausalLM" and torch.equal(nf4_roundtrip(w), w)  # Q: stored as is
    assert len(factors) == 2 * len(q_base.model.layers)  # q_proj and v_proj of every layer
    # here the quantiser is left out (bitsandbytes needs CUDA): the adapter lands on Q as LoftQ made it
    again = methods.apply(name="loftq", options=opts, model=q_base, family="causal", loftq_factors=factors).model
    ids = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(direct(input_ids=ids).logits, again(input_ids=ids).logits)


def test_loftq_with_model_quantization_runs_through_the_recipe(monkeypatch, tmp_path, data_dir):
    """The run's order: LoftQ on the full-precision base, the base quantised (a stand-in here), LoRA
    on it with LoftQ's adapter; the result records the quantisation."""
    seen = []

    def stand_in(loaded, quant, device):
        seen.append((quant, loaded.model.model.layers[0].self_attn.q_proj.weight.detach().clone()))
        return loaded

    monkeypatch.setattr(models, "quantization_unavailable", lambda quant, device: None)
    monkeypatch.setattr(models, "quantize", stand_in)
    path = _suite(
        tmp_path,
        [
            {
                "id": "lq",
                "model": {"spec": "random:tiny-llama", "quantization": "nf4"},
                "data": {"spec": f"file:{data_dir}/cls.jsonl", "task": "classification"},
                "method": {"name": "loftq"},
            }
        ],
    )
    out = tmp_path / "o"
    assert cli.main(["run", str(path), "--out", str(out), "--device", "cpu", "--in-process"]) == 0
    r = json.loads((out / "results" / "lq.json").read_text())
    assert r["status"] == "success" and r["resolved"]["quantization"] == "nf4"
    assert r["method_resolved"]["loftq_config"]["quantization"] == "nf4"
    ((quant, w),) = seen
    assert quant == "nf4" and torch.equal(nf4_roundtrip(w), w)  # the quantiser was handed LoftQ's Q


def test_nf4_roundtrip_keeps_the_sixteen_levels_per_block():
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    q = nf4_roundtrip(w)
    for block in q.reshape(-1, 64):
        scale = block.abs().max()
        levels = {round(float(v), 5) for v in NF4_LEVELS * scale}
        assert {round(float(v), 5) for v in block} <= levels
    assert (q - w).abs().max() <= w.abs().max() * 0.2


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model", "random:gpt2", "--method", "loha"], "loha cannot apply to random:gpt2"),
        (
            ["--model", "random:tiny-t5", "--method", "cpt", "--set", "method.cpt_token_ids=[1,2]"],
            "cpt cannot apply to random:tiny-t5",
        ),
        (["--model", "random:tiny-gpt2", "--method", "cpt"], "method.cpt_token_ids: cpt needs it"),
        (["--model", "random:tiny-gpt2", "--method", "trainable_tokens"], "method.token_indices: trainable_tokens"),
        (["--model", "random:tiny-gpt2", "--method", "no-such-method"], "unknown method 'no_such_method'"),
        (
            ["--model", "random:tiny-gpt2", "--method", "full", "--set", "model.quantization=nf4"],
            "cannot train a quantised",
        ),
        (["--model", "random:tiny-gpt2", "--method", "loftq", "--set", "method.bits=3"], "4 (nf4) or 8 (int8) bits"),
        (
            [
                "--model",
                "random:tiny-gpt2",
                "--method",
                "loftq",
                "--set",
                "method.bits=8",
                "--set",
                "model.quantization=nf4",
            ],
            "LoftQ must be initialised for the base's quantisation (nf4: bits 4), got 8",
        ),
    ],
)
def test_methods_that_cannot_run_are_refused_before_loading(argv, needle, tmp_path, capsys, data_dir):
    code = cli.main(
        [
            "run",
            *argv,
            "--task",
            "classification",
            "--dataset",
            f"file:{data_dir}/cls.jsonl",
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "results").exists()


def test_every_peft_method_type_is_a_method_name_with_either_spelling():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    for t in PEFT_TYPE_TO_CONFIG_MAPPING:
        name = str(getattr(t, "value", t)).lower()
        assert methods.lookup(name) is not None and methods.lookup(name.replace("_", "-")).name == name


def test_list_methods_prints_the_support_table(capsys):
    assert cli.main(["list", "--methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert set(rows) == set(methods.names())
    assert "| loha | no: TypeError: Target module of type" in rows["loha"] and rows["loha"].count("works") == 2
    assert rows["lora"].count("works") == 3


def test_initialisations_that_need_weights_are_probed_on_real_layers():
    """PiSSA's SVD and OLoRA's QR cannot run on the meta device: the plan probes their layers there and
    the initialisation on a small real layer of each kind, so PiSSA is accepted everywhere and OLoRA
    refused on GPT-2's Conv1D (where its QR breaks the layer's shapes), as real runs find."""
    meta = {arch: models.build_random(arch, seed=0, device="meta") for arch in ("tiny-gpt2", "tiny-llama")}
    assert methods.probe("pissa", {}, model=meta["tiny-gpt2"], family="causal") is None
    assert methods.probe("olora", {}, model=meta["tiny-llama"], family="causal") is None
    why = methods.probe("olora", {}, model=meta["tiny-gpt2"], family="causal")
    assert why.startswith("init_lora_weights=olora on Conv1D layers: RuntimeError")
    assert methods.probe("lora", {"init_lora_weights": "olora"}, model=meta["tiny-gpt2"], family="causal") == why
