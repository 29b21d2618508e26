"""Task registry: how examples become tokens (prompts, label masking) and how quality is scored.

Usage:
    task = TASKS["summarization"]
    features = task.encode(records, tok=tok, family="causal", args=data_args, label_names=None)
    metrics = task.evaluate(model, records, tok=tok, family="causal", args=data_args, ...)

Canonical fields: summarization ``source``/``target``; classification ``text``/``label`` (int);
language modelling ``text``. Causal LMs see ``<source> TL;DR: <target>`` (GPT-2's own
summarisation prompt) and the loss counts target tokens only; T5 sees ``summarize: <source>``.
Classification is scored by ranking the label words by their log-likelihood (works zero-shot
and for both families); language modelling by perplexity with a sliding window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from peftbench.catalog.scoring import SCORERS, scorer
from peftbench.catalog.taskspecs import SPECS, TaskSpec

SUMMARY_PROMPT = " TL;DR:"
T5_SUMMARY_PREFIX = "summarize: "
CHAT_SUMMARY_SUFFIX = "\n\nSummarize the text above in one line."


# ---------------------------------------------------------------- tokenization helpers


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _bos(tok) -> list[int]:
    """[bos] when the tokenizer adds one by itself (Llama-style), else []."""
    bos = tok.bos_token_id
    if bos is None:
        return []
    probe = tok("a")["input_ids"]
    return [bos] if probe and probe[0] == bos else []


def _eos(tok) -> list[int]:
    return [tok.eos_token_id] if tok.eos_token_id is not None else []


def _chat_ids(tok, content: str) -> list[int]:
    """A user turn in the tokenizer's chat template, ending where the assistant's answer starts."""
    text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    return _ids(tok, text)


def _chat_prompt(tok, body: str, suffix: str, max_len: int) -> list[int]:
    """The chat-wrapped prompt with the body cut so the whole stays within ``max_len`` tokens."""
    budget = max(1, max_len - len(_chat_ids(tok, suffix)))
    ids = _ids(tok, body)
    if len(ids) > budget:
        body = tok.decode(ids[:budget])
    return _chat_ids(tok, body + suffix)


def encode_summarization(records, *, tok, family, args, label_names=None, chat=False) -> list[dict]:
    out = []
    for r in records:
        if family == "seq2seq":
            prompt = tok(T5_SUMMARY_PREFIX + r["source"], truncation=True, max_length=args.max_source_length)
            tgt = tok(r["target"], truncation=True, max_length=args.max_target_length)["input_ids"]
            out.append(SCORERS[family].pair(prompt["input_ids"], tgt))
        else:
            prompt = summary_prompt(tok, r["source"], args.max_source_length, chat=chat)
            tgt = _ids(tok, ("" if chat else " ") + r["target"])[: args.max_target_length] + _eos(tok)
            out.append(SCORERS[family].pair(prompt, tgt))
    return out


def summary_prompt(tok, source: str, max_len: int, *, chat: bool = False) -> list[int]:
    if chat:
        return _chat_prompt(tok, source, CHAT_SUMMARY_SUFFIX, max_len)
    suffix = _ids(tok, SUMMARY_PROMPT)
    head = _bos(tok)
    body = _ids(tok, source)[: max(1, max_len - len(suffix) - len(head))]
    return head + body + suffix


def summarization_scores(predictions: list[str], references: list[str]) -> dict:
    """ROUGE-1/2/L F-measure (rouge-score, stemmed) and corpus BLEU (sacrebleu), both in 0..100,
    with the per-example columns (ROUGE F per example, BLEU's n-gram statistics per sentence)
    from which ``stats`` recomputes them on resamples."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    bleu = sacrebleu.metrics.BLEU()
    cols: dict[str, list] = {"rouge1": [], "rouge2": [], "rougeL": [], "bleu_stats": []}
    for p, r in zip(predictions, references):
        s = scorer.score(r, p)
        for k in ("rouge1", "rouge2", "rougeL"):
            cols[k].append(s[k].fmeasure)
        b = bleu.corpus_score([p], [[r]])
        cols["bleu_stats"].append([b.sys_len, b.ref_len, *b.counts, *b.totals])
    n = max(1, len(predictions))
    out = {k: round(100 * sum(cols[k]) / n, 4) for k in ("rouge1", "rouge2", "rougeL")}
    out["bleu"] = round(sacrebleu.corpus_bleu(predictions, [references]).score, 4)
    out["gen_len"] = round(sum(len(p.split()) for p in predictions) / n, 2)
    out["samples"] = {"n": len(predictions), "params": {}, "columns": cols}
    return out


def evaluate_summarization(
    model,
    records,
    *,
    tok,
    family,
    args,
    device,
    batch_size,
    label_names=None,
    progress=None,
    chat=False,
    generation=("off", "off"),
) -> dict:
    """ROUGE and BLEU of greedy summaries; ``generation``: (the decoding path, ``Scorer.generate``'s mode; why),
    what ran and why in ``metrics["generation"]``."""
    if family == "seq2seq":
        prompts = [
            tok(T5_SUMMARY_PREFIX + r["source"], truncation=True, max_length=args.max_source_length)["input_ids"]
            for r in records
        ]
    else:
        prompts = [summary_prompt(tok, r["source"], args.max_source_length, chat=chat) for r in records]
    ran: dict = {}
    preds = scorer(model, tok, family=family, device=device, batch_size=batch_size).generate(
        prompts, max_new_tokens=args.max_target_length, progress=progress, mode=generation[0], record=ran
    )
    metrics = summarization_scores(preds, [r["target"] for r in records])
    metrics["generation"] = {**ran["generation"], "reason": generation[1]}
    metrics["examples"] = [{"target": r["target"], "prediction": p} for r, p in list(zip(records, preds))[:3]]
    return metrics


# ---------------------------------------------------------------- classification


def class_prompt(tok, text: str, names: Sequence[str], family: str, max_len: int, *, chat: bool = False) -> list[int]:
    choices = ", ".join(names[:-1]) + " or " + names[-1]
    if chat and family == "causal":
        return _chat_prompt(tok, text, f"\n\nIs this {choices}? Answer with one word.", max_len)
    if family == "seq2seq":
        prefix, suffix = "classify: ", f" Options: {choices}."
        body = _ids(tok, prefix + text)[: max(1, max_len - len(_ids(tok, suffix)) - 1)]
        return body + _ids(tok, suffix) + _eos(tok)
    suffix = _ids(tok, f"\nIs this {choices}? Answer:")
    head = _bos(tok)
    body = _ids(tok, text)[: max(1, max_len - len(suffix) - len(head))]
    return head + body + suffix


def label_ids(tok, name: str, family: str, *, chat: bool = False) -> list[int]:
    """The answer's tokens: a chat answer starts a fresh turn (no leading space)."""
    if family == "seq2seq":
        return _ids(tok, name) + _eos(tok)
    return _ids(tok, name if chat else " " + name)


def encode_classification(records, *, tok, family, args, label_names, chat=False) -> list[dict]:
    out = []
    for r in records:
        prompt = class_prompt(tok, r["text"], label_names, family, args.max_source_length, chat=chat)
        target = label_ids(tok, label_names[r["label"]], family, chat=chat)
        if family == "causal":  # the trained answer ends, so generation stops after it
            target = target + _eos(tok)
        out.append(SCORERS[family].pair(prompt, target))
    return out


def classification_scores(preds: Sequence[int], golds: Sequence[int], n_labels: int) -> dict:
    """Accuracy and macro-F1 (over the classes present in golds or preds, as scikit-learn's default),
    in 0..100, with the per-example predictions for paired comparisons."""
    from peftbench import stats

    samples = {
        "n": len(golds),
        "params": {"n_labels": n_labels},
        "columns": {"pred": [int(p) for p in preds], "gold": [int(g) for g in golds]},
    }
    return {
        "accuracy": round(stats.statistic(samples, "accuracy"), 4),
        "macro_f1": round(stats.statistic(samples, "macro_f1"), 4),
        "samples": samples,
    }


def evaluate_classification(
    model, records, *, tok, family, args, device, batch_size, label_names, progress=None, chat=False
) -> dict:
    k = len(label_names)
    golds = [r["label"] for r in records]
    s = scorer(model, tok, family=family, device=device, batch_size=batch_size)
    prompts = [class_prompt(tok, r["text"], label_names, family, args.max_source_length, chat=chat) for r in records]
    cands = [label_ids(tok, name, family, chat=chat) for name in label_names]
    done = [0]

    def step(n: int, per: int = 1) -> None:  # the bar counts examples: a pair-scoring pass has k features each
        if progress:
            before = done[0] // per
            done[0] += n
            progress(done[0] // per - before)

    rows = s.next_token_logprobs(prompts, cands, progress=step)  # one forward per prompt, where the family allows it
    if rows is not None:
        preds = [max(range(k), key=lambda j: row[j]) for row in rows]
    else:
        scores = s.loglikelihood([s.pair(p, c) for p in prompts for c in cands], progress=lambda n: step(n, k))
        preds = [max(range(k), key=lambda j: scores[i * k + j]) for i in range(len(records))]
    return classification_scores(preds, golds, k)


# ---------------------------------------------------------------- language modelling


def lm_blocks(records, *, tok, block: int, limit: int | None = None) -> list[list[int]]:
    """Concatenate the texts (separated by eos) and cut into blocks of ``block`` tokens."""
    stream: list[int] = []
    blocks: list[list[int]] = []
    for r in records:
        stream += _ids(tok, r["text"]) + _eos(tok)
        while len(stream) >= block:
            blocks.append(stream[:block])
            stream = stream[block:]
            if limit is not None and len(blocks) >= limit:
                return blocks
    return blocks


def encode_language_modeling(records, *, tok, family, args, label_names=None, limit=None, chat=False) -> list[dict]:
    blocks = lm_blocks(records, tok=tok, block=args.max_source_length, limit=limit)
    if family == "seq2seq":  # T5: continue the second half of a block from its first half
        half = args.max_source_length // 2
        return [SCORERS[family].pair(b[:half], b[half:]) for b in blocks]
    return [{"input_ids": b, "labels": list(b)} for b in blocks]


@torch.no_grad()
def evaluate_language_modeling(
    model, records, *, tok, family, args, device, batch_size, label_names=None, limit=None, progress=None, chat=False
) -> dict:
    """Perplexity. Causal: sliding window of ``max_source_length`` with ``lm_stride`` (default half),
    each token scored once with at least (window - stride) tokens of context. Seq2seq: second half of
    each block given the first half."""
    block = args.max_source_length
    stride = args.lm_stride or max(1, block // 2)
    s = scorer(model, tok, family=family, device=device, batch_size=batch_size)
    stream: list[int] = []
    for r in records:
        stream += _ids(tok, r["text"]) + _eos(tok)
    feats, note = s.windows(stream, block=block, stride=stride, limit=limit)
    nlls, counts = s.nll(feats)
    if progress:
        progress(len(records))
    nll, count = sum(nlls), sum(counts)
    ppl = math.exp(nll / count) if count else float("nan")
    samples = {"n": len(nlls), "params": {}, "columns": {"nll": nlls, "tokens": counts}}  # one row per window
    return {"perplexity": round(ppl, 4), "eval_tokens": count, "perplexity_protocol": note, "samples": samples}


def mean_loss(model, feats, *, tok, family, device, batch_size) -> float:
    """Mean token loss of teacher-forced features (validation loss, for any model)."""
    nlls, counts = scorer(model, tok, family=family, device=device, batch_size=batch_size).nll(feats)
    return sum(nlls) / sum(counts) if sum(counts) else float("nan")


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Task:
    """A task's declaration (``taskspecs.SPECS``) with its behaviour attached."""

    spec: TaskSpec
    encode: Callable[..., list[dict]]
    evaluate: Callable[..., dict]

    def __getattr__(self, key: str):  # name, fields, metrics, primary, label_field, blocks, ...
        return getattr(self.spec, key)


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(SPECS["summarization"], encode_summarization, evaluate_summarization),
        Task(SPECS["classification"], encode_classification, evaluate_classification),
        Task(SPECS["language-modeling"], encode_language_modeling, evaluate_language_modeling),
    ]
}
