"""Tasks: prompt formatting, label masking, dynamic padding, metrics against known values."""

import math

import pytest
import torch

from peftbench.catalog import batches, models, tasks
from peftbench.spec.config import DataArgs, ModelArgs

IGNORE = -100


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer("bytes")


def test_causal_summarization_masks_every_prompt_token(tok):
    args = DataArgs(spec="x", task="summarization", max_source_length=40, max_target_length=8)
    recs = [{"source": "the quick brown fox jumps over the lazy dog " * 3, "target": "fox jumps"}]
    (f,) = tasks.encode_summarization(recs, tok=tok, family="causal", args=args)
    prompt = tasks.summary_prompt(tok, recs[0]["source"], 40)
    assert len(prompt) == 40  # source truncated so the TL;DR suffix survives
    assert tok.decode(prompt).endswith(" TL;DR:")
    assert f["labels"][: len(prompt)] == [IGNORE] * len(prompt)
    target = f["labels"][len(prompt) :]
    assert IGNORE not in target and target == f["input_ids"][len(prompt) :]
    assert tok.decode(target, skip_special_tokens=True) == " fox jum"  # 8 target tokens kept, then eos
    assert target[-1] == tok.eos_token_id


def test_seq2seq_summarization_uses_t5_prefix(tok):
    args = DataArgs(spec="x", task="summarization", max_source_length=64, max_target_length=16)
    (f,) = tasks.encode_summarization([{"source": "body", "target": "subj"}], tok=tok, family="seq2seq", args=args)
    assert tok.decode(f["input_ids"], skip_special_tokens=True) == "summarize: body"
    assert tok.decode(f["labels"], skip_special_tokens=True) == "subj" and f["labels"][-1] == tok.eos_token_id


def test_causal_classification_scores_only_the_label_word(tok):
    args = DataArgs(spec="x", task="classification", max_source_length=64)
    (f,) = tasks.encode_classification(
        [{"text": "great film", "label": 1}], tok=tok, family="causal", args=args, label_names=["negative", "positive"]
    )
    scored = [t for t in f["labels"] if t != IGNORE]
    assert tok.decode(scored, skip_special_tokens=True) == " positive"
    assert "Is this negative or positive? Answer:" in tok.decode(f["input_ids"])


def test_pad_batch_pads_dynamically_and_masks_labels():
    feats = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    b = batches.pad_batch(feats, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[5, 6, 7], [8, IGNORE, IGNORE]]
    left = batches.pad_batch([{"input_ids": [5, 6]}, {"input_ids": [7]}], pad_id=0, side="left", multiple_of=4)
    assert left["input_ids"].tolist() == [[0, 0, 5, 6], [0, 0, 0, 7]]


def test_classification_metrics_known_values():
    m = tasks.classification_scores([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert m["accuracy"] == 75.0
    # class 0: tp1 fp1 fn0 -> F1 2/3; class 1: tp2 fp0 fn1 -> F1 0.8
    assert m["macro_f1"] == pytest.approx(100 * (2 / 3 + 0.8) / 2, abs=1e-3)


def test_summarization_metrics_perfect_and_disjoint():
    perfect = tasks.summarization_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert perfect["rouge1"] == perfect["rouge2"] == perfect["rougeL"] == 100.0 and perfect["bleu"] == pytest.approx(
        100
    )
    none = tasks.summarization_scores(["dogs bark"], ["the cat sat on the mat"])
    assert none["rouge1"] == 0.0 and none["bleu"] == 0.0


class Fixed(torch.nn.Module):
    """A 'language model' whose next-token logits always favour one token."""

    def __init__(self, vocab, favourite):
        super().__init__()
        self.vocab, self.fav = vocab, favourite

    def forward(self, input_ids, attention_mask=None, labels=None, **kw):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.fav] = 5.0
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("names", [["a", "b"], ["xx", "yyyy"]])  # single-token fast path and the general path
def test_rank_classification_picks_the_likeliest_label(tok, names):
    args = DataArgs(spec="x", task="classification", max_source_length=32)
    fav = tasks.label_ids(tok, names[1], "causal")[0]
    recs = [{"text": "t1", "label": 1}, {"text": "t2", "label": 0}]
    m = tasks.evaluate_classification(
        Fixed(384, fav), recs, tok=tok, family="causal", args=args, device="cpu", batch_size=2, label_names=names
    )
    assert m["accuracy"] == 50.0  # predicts names[1] for both


@pytest.mark.parametrize("names", [["a", "b"], ["xx", "yyyy"]])
def test_classification_evaluation_reports_progress_batch_by_batch(tok, names):
    """Validation and test sat minutes without a line on CPU: the bar now moves after every batch, in examples."""
    args = DataArgs(spec="x", task="classification", max_source_length=32)
    fav = tasks.label_ids(tok, names[1], "causal")[0]
    recs = [{"text": f"t{i}", "label": i % 2} for i in range(7)]
    steps = []
    tasks.evaluate_classification(
        Fixed(384, fav), recs, tok=tok, family="causal", args=args, device="cpu", batch_size=2, label_names=names,
        progress=steps.append,
    )  # fmt: skip
    assert sum(steps) == 7 and len([s for s in steps if s]) >= 3  # 7 examples in batches of 2 (pairs: 14 features)


def test_perplexity_of_uniform_model_is_vocab_size(tok):
    model = models.build_random("tiny-gpt2", seed=0).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: logits are all zero -> uniform over 384 tokens
    args = DataArgs(spec="x", task="language-modeling", max_source_length=32)
    recs = [{"text": "some held-out english text " * 8}]
    m = tasks.evaluate_language_modeling(model, recs, tok=tok, family="causal", args=args, device="cpu", batch_size=4)
    assert m["perplexity"] == pytest.approx(384, rel=1e-4)
    stream_len = len(tok(recs[0]["text"], add_special_tokens=False)["input_ids"]) + 1
    assert m["eval_tokens"] == stream_len - 1  # every token but the first scored exactly once
    assert "stride 16" in m["perplexity_protocol"]


def test_lm_blocks_and_seq2seq_halves(tok):
    args = DataArgs(spec="x", task="language-modeling", max_source_length=10)
    recs = [{"text": "abcdefghijklmnopqrstuvwxyz"}]
    causal = tasks.encode_language_modeling(recs, tok=tok, family="causal", args=args)
    assert [len(f["input_ids"]) for f in causal] == [10, 10] and causal[0]["labels"] == causal[0]["input_ids"]
    s2s = tasks.encode_language_modeling(recs, tok=tok, family="seq2seq", args=args, limit=1)
    assert len(s2s) == 1 and s2s[0]["input_ids"] + s2s[0]["labels"] == causal[0]["input_ids"]


def test_generation_on_tiny_models_returns_one_text_per_prompt(tok):
    for spec in ("random:tiny-gpt2", "random:tiny-t5"):
        lm = models.load(ModelArgs(spec=spec), seed=0)
        args = DataArgs(spec="x", task="summarization", max_source_length=32, max_target_length=4)
        m = tasks.evaluate_summarization(
            lm.model.eval(),
            [{"source": "hello world", "target": "hi"}] * 3,
            tok=lm.tokenizer,
            family=lm.family,
            args=args,
            device="cpu",
            batch_size=2,
        )
        assert len(m["examples"]) == 3 and all(math.isfinite(m[k]) for k in ("rouge1", "bleu"))


CHAT = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"


@pytest.fixture
def chat_tok():
    t = models.load_tokenizer("bytes")
    t.chat_template = CHAT
    return t


def test_chat_template_wraps_prompts_and_answers_start_a_fresh_turn(chat_tok):
    args = DataArgs(spec="x", task="classification", max_source_length=100)
    (f,) = tasks.encode_classification(
        [{"text": "great film", "label": 1}],
        tok=chat_tok,
        family="causal",
        args=args,
        label_names=["bad", "good"],
        chat=True,
    )
    prompt = [t for t, lab in zip(f["input_ids"], f["labels"]) if lab == IGNORE]
    text = chat_tok.decode(prompt)
    assert text.startswith("<u>great film") and text.endswith("Answer with one word.</u><a>")
    answer = chat_tok.decode([t for t in f["labels"] if t != IGNORE], skip_special_tokens=True)
    assert answer == "good"  # no leading space inside a chat turn
    plain = tasks.class_prompt(chat_tok, "great film", ["bad", "good"], "causal", 60, chat=False)
    assert "<u>" not in chat_tok.decode(plain) and chat_tok.decode(plain).endswith("Answer:")


def test_chat_prompt_cuts_the_body_to_fit(chat_tok):
    ids = tasks.summary_prompt(chat_tok, "word " * 100, 60, chat=True)
    text = chat_tok.decode(ids)
    assert len(ids) <= 60 and text.startswith("<u>word word") and text.endswith("one line.</u><a>")


def test_scoring_paths_of_one_family_agree(tok):
    """The causal fast path (one forward, next-token log-probs) and teacher-forced log-likelihood give the
    same numbers; both families' log-likelihood is minus their summed NLL; seq2seq windows are the
    training halves."""
    from peftbench.catalog.scoring import scorer

    causal = models.load(ModelArgs(spec="random:tiny-gpt2"), seed=0).model.eval()
    s = scorer(causal, tok, family="causal", device=torch.device("cpu"), batch_size=3)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("one two", "three")]
    cands = [[5], [9], [17]]
    fast = s.next_token_logprobs(prompts, cands)
    slow = s.loglikelihood([s.pair(p, c) for p in prompts for c in cands])
    assert torch.allclose(torch.tensor(fast).flatten(), torch.tensor(slow), atol=1e-5)
    assert s.next_token_logprobs(prompts, [[5, 6], [9]]) is None  # a two-token candidate: no fast path
    for family, spec in (("causal", "random:tiny-gpt2"), ("seq2seq", "random:tiny-t5")):
        m = models.load(ModelArgs(spec=spec), seed=0).model.eval()
        sc = scorer(m, tok, family=family, device=torch.device("cpu"), batch_size=2)
        feats = [sc.pair(p, c) for p in prompts for c in ([5, 6], [9])]
        nlls, counts = sc.nll(feats)
        assert torch.allclose(torch.tensor(sc.loglikelihood(feats)), -torch.tensor(nlls), atol=1e-4)
        assert counts == [2, 1, 2, 1]
    args = DataArgs(spec="x", task="language-modeling", max_source_length=10)
    recs = [{"text": "abcdefghijklmnopqrstuvwxyz"}]
    stream = tok(recs[0]["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    from peftbench.catalog.scoring import Seq2SeqScorer

    windows, _ = Seq2SeqScorer.windows(stream, block=10, stride=5, limit=None)
    assert windows == tasks.encode_language_modeling(recs, tok=tok, family="seq2seq", args=args)


def test_evaluation_keeps_no_autograd_graph(tok):
    """Validation loss, perplexity, classification and generation run without gradients: a 7B shape's
    validation loss once kept every activation for a backward that never came (138 GiB on an H200)."""
    from peftbench.catalog.scoring import scorer

    for family, spec in (("causal", "random:tiny-gpt2"), ("seq2seq", "random:tiny-t5")):
        m = models.load(ModelArgs(spec=spec), seed=0).model.eval()
        seen = []
        m.register_forward_hook(lambda *_, seen=seen: seen.append(torch.is_grad_enabled()))
        feats = [
            {"input_ids": [5, 6, 7, 8], "labels": [6, 7, 8, 9], **({"decoder": True} if family == "seq2seq" else {})}
        ]
        tasks.mean_loss(m, feats, tok=tok, family=family, device=torch.device("cpu"), batch_size=2)
        s = scorer(m, tok, family=family, device=torch.device("cpu"), batch_size=2)
        s.loglikelihood([s.pair([5, 6], [7])])
        s.generate([[5, 6, 7]], max_new_tokens=2)
        assert seen and not any(seen), f"{family}: a forward ran with gradients enabled"
