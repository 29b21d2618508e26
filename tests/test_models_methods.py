"""Models and methods: exact parameter counts, LoRA identity at init, only adapters train,
save/load round trip, merge equals W + BA."""

import copy
import os

import pytest
import torch

from peftbench.catalog import methods, models
from peftbench.errors import ConfigError
from peftbench.run.settings import for_loop
from peftbench.spec.config import ModelArgs, TrainArgs


@pytest.fixture(scope="module")
def gpt2():
    return models.build_random("gpt2", seed=0)


@pytest.fixture(scope="module")
def t5_small():
    return models.build_random("t5-small", seed=0)


def counts(name, model, family, **options):
    applied = methods.apply(name=name, options=options, model=copy.deepcopy(model), family=family)
    return models.count_parameters(applied.model)


def test_random_gpt2_counts(gpt2):
    assert models.count_parameters(gpt2) == (124_439_808, 124_439_808)
    assert counts("lora", gpt2, "causal", r=8) == (124_734_720, 294_912)
    assert counts("ia3", gpt2, "causal")[1] == 64_512
    assert counts("none", gpt2, "causal") == (124_439_808, 0)
    assert counts("full", gpt2, "causal") == (124_439_808, 124_439_808)


def test_random_t5_small_counts(t5_small):
    assert models.count_parameters(t5_small)[0] == 60_506_624
    assert counts("lora", t5_small, "seq2seq", r=8)[1] == 294_912
    assert counts("ia3", t5_small, "seq2seq")[1] == 43_008


def test_random_weights_are_seeded():
    a, b, c = (models.build_random("tiny-gpt2", seed=s) for s in (1, 1, 2))
    wa, wb, wc = (m.transformer.h[0].attn.c_attn.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_load_marks_random_models_and_family():
    lm = models.load(ModelArgs(spec="random:tiny-t5"), seed=0)
    assert lm.family == "seq2seq" and not lm.pretrained and lm.quality_note == "random weights"
    assert models.load(ModelArgs(spec="random:tiny-gpt2"), seed=0).family == "causal"


def test_tokenizer_larger_than_vocab_is_a_config_error(tmp_path):
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    tok.add_tokens([f"<extra_word_{i}>" for i in range(50)])  # 434 tokens > tiny-gpt2's 384
    tok.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="more than random:tiny-gpt2's vocabulary of 384"):
        models.load(ModelArgs(spec="random:tiny-gpt2", tokenizer=str(tmp_path)), seed=0)


def inputs(family, vocab=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"input_ids": torch.randint(3, vocab, (2, 12), generator=g)}
    if family == "seq2seq":
        x["decoder_input_ids"] = torch.randint(3, vocab, (2, 5), generator=g)
    return x


@pytest.mark.parametrize("name, family", [("tiny-gpt2", "causal"), ("tiny-t5", "seq2seq"), ("tiny-llama", "causal")])
def test_lora_at_init_leaves_logits_unchanged(name, family):
    base = models.build_random(name, seed=0).eval()
    x = inputs(family)
    with torch.no_grad():
        ref = base(**x).logits
        wrapped = methods.apply(name="lora", options={}, model=copy.deepcopy(base), family=family).model.eval()
        assert torch.equal(wrapped(**x).logits, ref)
        ia3 = methods.apply(name="ia3", options={}, model=copy.deepcopy(base), family=family).model.eval()
        assert torch.allclose(ia3(**x).logits, ref, atol=1e-6)


def _train_steps(model, family, steps=3):
    from accelerate import Accelerator

    from peftbench.run.train import train

    feats = [{"input_ids": list(range(5, 15)), "labels": list(range(5, 15))} for _ in range(8)]
    if family == "seq2seq":
        feats = [{"input_ids": list(range(5, 15)), "labels": list(range(20, 26)), "decoder": True} for _ in range(8)]
    args, acc = TrainArgs(max_steps=steps, batch_size=4, warmup_ratio=0.0), Accelerator(cpu=True)
    settings = for_loop(n_examples=len(feats), args=args, learning_rate=1e-2, accelerator=acc)
    return train(model, feats, args=args, settings=settings, accelerator=acc, pad_id=0)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_only_adapter_parameters_change(method):
    applied = methods.apply(name=method, options={}, model=models.build_random("tiny-gpt2", seed=0), family="causal")
    before = {k: v.clone() for k, v in applied.model.state_dict().items()}
    out = _train_steps(applied.model, "causal")
    assert out.steps == 3 and len(out.loss_curve) == 3 and out.tokens == 3 * 4 * 10
    changed = {k for k, v in applied.model.state_dict().items() if not torch.equal(v, before[k])}
    adapter_keys = {k for k in before if f"{method}_" in k}
    assert changed and changed <= adapter_keys  # something trained, and nothing but the adapter


def test_full_fine_tuning_changes_base_weights():
    base = models.build_random("tiny-t5", seed=0)
    before = base.shared.weight.clone()
    applied = methods.apply(name="full", options={}, model=base, family="seq2seq")
    _train_steps(applied.model, "seq2seq")
    assert not torch.equal(before, base.shared.weight)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_adapter_round_trip_gives_identical_logits(tmp_path, method):
    from peft import PeftModel

    applied = methods.apply(name=method, options={}, model=models.build_random("tiny-gpt2", seed=0), family="causal")
    _train_steps(applied.model, "causal")
    applied.model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(models.build_random("tiny-gpt2", seed=0), tmp_path).eval()
    x = inputs("causal")
    with torch.no_grad():
        assert torch.equal(applied.model.eval()(**x).logits, reloaded(**x).logits)


def test_lora_merge_equals_w_plus_scaled_ba():
    applied = methods.apply(
        name="lora",
        options={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]},
        model=models.build_random("tiny-llama", seed=0),
        family="causal",
    )
    layer = applied.model.base_model.model.model.layers[0].self_attn.q_proj
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # B starts at zero: make the update visible
    w = layer.base_layer.weight.detach().clone()
    expected = w + (8 / 4) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    merged = applied.model.merge_and_unload()
    assert torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, expected, atol=1e-6)


def test_gpt2_conv1d_gets_fan_in_fan_out():
    cfg = methods.peft_config("lora", {}, family="causal", model=models.build_random("tiny-gpt2", seed=0))
    assert cfg.fan_in_fan_out is True
    cfg = methods.peft_config("lora", {}, family="causal", model=models.build_random("tiny-llama", seed=0))
    assert cfg.fan_in_fan_out is False


def test_resolved_options_record_peft_defaults():
    applied = methods.apply(
        name="lora", options={"r": 16}, model=models.build_random("tiny-t5", seed=0), family="seq2seq"
    )
    assert applied.resolved["r"] == 16 and applied.resolved["lora_alpha"] == 8
    assert sorted(applied.resolved["target_modules"]) == ["q", "v"]
    assert applied.can_merge


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "missing"),
        ("random:gpt5", "unknown random model"),
        ("builtin:llama", "unknown builtin model"),
        ("ftp:model", "unknown prefix"),
        ("./no/such/dir", "not found"),
        ("a b c", "is not a hub id"),
    ],
)
def test_bad_model_specs(spec, fragment):
    problems = models.check_spec(spec)
    assert len(problems) == 1 and fragment in problems[0]


def test_good_model_specs():
    for spec in ("gpt2", "openai-community/gpt2", "random:gpt2-xl", "random:t5-base", "builtin:smollm2-135m"):
        assert models.check_spec(spec) == []


def test_epochs_and_gradient_accumulation_count_optimizer_steps():
    from accelerate import Accelerator

    from peftbench.run.settings import total_steps
    from peftbench.run.train import train

    assert total_steps(TrainArgs(max_steps=-1, epochs=2.0, gradient_accumulation_steps=2), 5) == 5
    assert total_steps(TrainArgs(max_steps=7), 5) == 7
    feats = [{"input_ids": list(range(5, 15)), "labels": list(range(5, 15))} for _ in range(16)]
    model = methods.apply(
        name="lora", options={}, model=models.build_random("tiny-gpt2", seed=0), family="causal"
    ).model
    args = TrainArgs(max_steps=-1, epochs=1.0, batch_size=4, gradient_accumulation_steps=2)
    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    out = train(
        model,
        feats,
        args=args,
        settings=for_loop(n_examples=len(feats), args=args, learning_rate=1e-3, accelerator=acc),
        accelerator=acc,
        pad_id=0,
    )
    assert (out.steps, out.epochs, out.tokens) == (2, 1.0, 16 * 10)  # 4 micro-batches, 2 per optimizer step


def test_one_dtype_resolver_for_weights_and_inference():
    cpu = torch.device("cpu")
    assert models.resolve_dtype("auto", cpu) is torch.float32  # weights: fp32, autocast does the bf16
    assert models.resolve_dtype("auto", cpu, inference=True) is torch.float32  # no bf16 inference on CPU
    assert models.resolve_dtype("bfloat16", cpu) is torch.bfloat16
    assert models.resolve_dtype("float16", cpu, inference=True) is torch.float16


@pytest.mark.parametrize("method", ["lora", "lily", "prompt_tuning"])
def test_an_unmerged_adapter_leaves_the_base_as_it_ships(method, tmp_path):
    """The full-model bytes of an unmerged run are the base's: its own weights under their own names
    (Lily shares one tensor between layers, which save_pretrained refuses; LoRA's would count)."""
    from peftbench.measure.storage import saved_bytes

    plain = models.build_random("tiny-llama", seed=0)
    base = methods.apply(name=method, options={}, model=models.build_random("tiny-llama", seed=0), family="causal")
    base = base.model.get_base_model()
    weights = methods.base_state_dict(base)
    assert weights.keys() == plain.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in plain.state_dict().items())
    got = saved_bytes(base, scratch=tmp_path, cache=tmp_path / "a.json", state_dict=weights)
    assert got == saved_bytes(plain, scratch=tmp_path, cache=tmp_path / "b.json")


def test_applying_or_probing_a_method_leaves_the_compilers_as_they_were(monkeypatch):
    """peft's BOFT sets CC=CXX=gcc to build its CUDA extension and leaves them set when the build fails
    (always without CUDA); torch.compile later in the process then linked C++ without libstdc++ and
    failed to load its kernels (undefined symbol). apply() and the plan's probe put them back."""
    import peft.tuners.boft.layer as boft_layer

    for step in ("apply", "probe"):
        monkeypatch.setattr(boft_layer, "_FBD_CUDA", None)  # peft tries its build once per process
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setenv("CXX", "g++")
        model = models.build_random("tiny-llama", seed=0)
        if step == "apply":
            methods.apply(name="boft", options={}, model=model, family="causal")
        else:
            assert methods.probe("boft", {}, model=model, family="causal") is None
        assert "CC" not in os.environ and os.environ["CXX"] == "g++", step
