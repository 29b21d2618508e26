"""Evaluation's generation paths (train.eval_generation): the static cache gives the dynamic cache's greedy tokens,
every batch of one shape; a model that refuses it falls back to eager, said; auto's choice and its reason."""

import pytest
import torch

from peftbench import cli
from peftbench.catalog import models, scoring, tasks
from peftbench.spec.config import DataArgs, ModelArgs

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19], [20, 21]]  # 5 prompts: a last batch of 1


class Shapes(torch.nn.Module):
    """The model's generate, with the shape of every batch it was asked for (and optionally refusing a static
    cache, as a model without support does)."""

    def __init__(self, model, refuse: bool = False):
        super().__init__()
        self.model, self.refuse, self.shapes, self.tokens = model, refuse, [], []

    def generate(self, **kw):
        if self.refuse and kw.get("cache_implementation") == "static":
            raise ValueError("this model does not support a static cache")
        self.shapes.append(tuple(kw["input_ids"].shape))
        out = self.model.generate(**kw)
        new = out[:, kw["input_ids"].shape[1] :] if not self.model.config.is_encoder_decoder else out
        self.tokens += [[t for t in row if t != kw["pad_token_id"]] for row in new.tolist()]
        return out


@pytest.mark.parametrize("spec", ["random:tiny-gpt2", "random:tiny-t5"])
def test_static_cache_gives_the_dynamic_caches_tokens_in_batches_of_one_shape(spec):
    lm = models.load(ModelArgs(spec=spec), seed=0)
    model = lm.model.eval()
    s = scoring.scorer(Shapes(model), lm.tokenizer, family=lm.family, device="cpu", batch_size=2)
    eager = s.generate(PROMPTS, max_new_tokens=6, mode="off")
    (dynamic_shapes, s.model.shapes), (dynamic_tokens, s.model.tokens) = (s.model.shapes, []), (s.model.tokens, [])
    ran: dict = {}
    static = s.generate(PROMPTS, max_new_tokens=6, mode="static", record=ran)
    assert static == eager
    static_tokens = s.model.tokens[:5]  # the last batch's filler row dropped
    assert static_tokens == dynamic_tokens and any(dynamic_tokens)  # the same greedy tokens, not all empty
    assert len(static) == len(PROMPTS) and ran["generation"] == {"mode": "static"}
    assert set(s.model.shapes) == {(2, 7)}  # every batch padded to the longest prompt, the last one filled
    assert len(set(dynamic_shapes)) > 1  # eager pads each batch to its own longest, and keeps the last one small


def test_a_model_refusing_the_static_cache_falls_back_to_eager_and_says_so():
    lm = models.load(ModelArgs(spec="random:tiny-gpt2"), seed=0)
    s = scoring.scorer(lm.model.eval(), lm.tokenizer, family="causal", device="cpu", batch_size=2)
    eager = s.generate(PROMPTS, max_new_tokens=4)
    s.model = Shapes(s.model, refuse=True)
    ran: dict = {}
    assert s.generate(PROMPTS, max_new_tokens=4, mode="compile", record=ran) == eager
    assert ran["generation"]["mode"] == "off"
    assert ran["generation"]["fallback"] == "compile: ValueError: this model does not support a static cache"


def test_summarization_records_the_path_that_ran_and_why():
    lm = models.load(ModelArgs(spec="random:tiny-gpt2"), seed=0)
    args = DataArgs(spec="x", task="summarization", max_source_length=32, max_target_length=4)
    records = [{"source": f"text number {i}", "target": "t"} for i in range(3)]
    kw = {"tok": lm.tokenizer, "family": "causal", "args": args, "device": "cpu", "batch_size": 2}
    eager = tasks.evaluate_summarization(lm.model.eval(), records, **kw)
    static = tasks.evaluate_summarization(lm.model, records, **kw, generation=("static", "static: why"))
    assert eager["generation"] == {"mode": "off", "reason": "off"}
    assert static["generation"] == {"mode": "static", "reason": "static: why"}
    assert [e["prediction"] for e in static["examples"]] == [e["prediction"] for e in eager["examples"]]


def test_auto_compiles_the_decoding_step_only_on_cuda_and_where_it_repays():
    n = scoring.DECODE_COMPILE_STEPS
    assert scoring.generation_mode("auto", device_type="cpu", steps=10 * n)[0] == "off"
    assert scoring.generation_mode("auto", device_type="cuda", steps=n - 1) == (
        "off",
        f"auto: eager ({n - 1} decoding steps; compiling repays from {n})",
    )
    assert scoring.generation_mode("auto", device_type="cuda", steps=n)[0] == "compile"
    assert scoring.generation_mode("on", device_type="cpu", steps=1)[0] == "compile"
    assert scoring.generation_mode("static", device_type="cuda", steps=10 * n)[0] == "static"
    assert scoring.generation_mode("off", device_type="cuda", steps=10 * n)[0] == "off"


def test_a_bad_eval_generation_exits_2_naming_it_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", "random:tiny-gpt2", "--method", "lora", "--task", "summarization"]
    argv += ["--dataset", "hf:cnn_dailymail/3.0.0", "--set", "train.eval_generation=fast", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "train.eval_generation: 'fast' is not one of auto, on, static, off" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
