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

from peftbench.batches import IGNORE, pad_batch
from peftbench.taskspecs import SPECS, TaskSpec

SUMMARY_PROMPT = " TL;DR:"
T5_SUMMARY_PREFIX = "summarize: "
CHAT_SUMMARY_SUFFIX = "\n\nSummarize the text above in one line."
GENERATION = {"do_sample": False, "num_beams": 1}  # greedy: reproducible, and what the study used


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
    text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                   tokenize=False)
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
            src = tok(T5_SUMMARY_PREFIX + r["source"], truncation=True, max_length=args.max_source_length)["input_ids"]
            tgt = tok(r["target"], truncation=True, max_length=args.max_target_length)["input_ids"]
            out.append({"input_ids": src, "labels": tgt, "decoder": True})
        else:
            prompt = summary_prompt(tok, r["source"], args.max_source_length, chat=chat)
            tgt = _ids(tok, ("" if chat else " ") + r["target"])[: args.max_target_length] + _eos(tok)
            out.append({"input_ids": prompt + tgt, "labels": [IGNORE] * len(prompt) + tgt})
    return out


def summary_prompt(tok, source: str, max_len: int, *, chat: bool = False) -> list[int]:
    if chat:
        return _chat_prompt(tok, source, CHAT_SUMMARY_SUFFIX, max_len)
    suffix = _ids(tok, SUMMARY_PROMPT)
    head = _bos(tok)
    body = _ids(tok, source)[: max(1, max_len - len(suffix) - len(head))]
    return head + body + suffix


@torch.no_grad()
def generate_texts(model, prompts: list[list[int]], *, tok, family, max_new_tokens: int, batch_size: int,
                   device, progress: Callable[[int], None] | None = None) -> list[str]:
    outs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = [{"input_ids": p} for p in prompts[i:i + batch_size]]
        batch = pad_batch(chunk, pad_id=tok.pad_token_id, side="left" if family == "causal" else "right")
        batch = {k: v.to(device) for k, v in batch.items()}
        gen = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, **GENERATION)
        if family == "causal":
            gen = gen[:, batch["input_ids"].shape[1]:]
        outs += [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]
        if progress:
            progress(len(chunk))
    return outs


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


def evaluate_summarization(model, records, *, tok, family, args, device, batch_size, label_names=None,
                           progress=None, chat=False) -> dict:
    if family == "seq2seq":
        prompts = [tok(T5_SUMMARY_PREFIX + r["source"], truncation=True, max_length=args.max_source_length)["input_ids"]
                   for r in records]
    else:
        prompts = [summary_prompt(tok, r["source"], args.max_source_length, chat=chat) for r in records]
    preds = generate_texts(model, prompts, tok=tok, family=family, max_new_tokens=args.max_target_length,
                           batch_size=batch_size, device=device, progress=progress)
    metrics = summarization_scores(preds, [r["target"] for r in records])
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
        if family == "seq2seq":
            out.append({"input_ids": prompt, "labels": target, "decoder": True})
        else:
            target = target + _eos(tok)
            out.append({"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target})
    return out


@torch.no_grad()
def sequence_logprobs(model, features: list[dict], *, tok, family, device, batch_size) -> list[float]:
    """Sum of log p(label tokens | prompt) for each feature (labels -100 where not scored)."""
    scores: list[float] = []
    for i in range(0, len(features), batch_size):
        chunk = features[i:i + batch_size]
        batch = pad_batch(chunk, pad_id=tok.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch).logits.float()
        labels = batch["labels"]
        if family == "causal":  # token t is predicted at position t-1
            logits, labels = _input_positions(logits, labels)[:, :-1], labels[:, 1:]
        logp = torch.log_softmax(logits, dim=-1)
        mask = labels != IGNORE
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores += (picked * mask).sum(-1).tolist()
    return scores


def classification_scores(preds: Sequence[int], golds: Sequence[int], n_labels: int) -> dict:
    """Accuracy and macro-F1 (over the classes present in golds or preds, as scikit-learn's default),
    in 0..100, with the per-example predictions for paired comparisons."""
    from peftbench import stats

    samples = {"n": len(golds), "params": {"n_labels": n_labels},
               "columns": {"pred": [int(p) for p in preds], "gold": [int(g) for g in golds]}}
    return {"accuracy": round(stats.statistic(samples, "accuracy"), 4),
            "macro_f1": round(stats.statistic(samples, "macro_f1"), 4), "samples": samples}


@torch.no_grad()
def _first_token_scores(
    model, prompts: list[list[int]], cand: list[int], *, tok, device, batch_size
) -> list[list[float]]:
    """Causal LM, every label one token: one forward per prompt, read the next-token log-probs."""
    out: list[list[float]] = []
    for i in range(0, len(prompts), batch_size):
        batch = pad_batch([{"input_ids": p} for p in prompts[i:i + batch_size]], pad_id=tok.pad_token_id, side="left")
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = _last_logits(model, batch)
        out += torch.log_softmax(logits, dim=-1)[:, cand].tolist()
    return out


def _input_positions(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The logits of the input's own positions: prompt tuning prepends its virtual tokens' logits."""
    return logits[:, logits.shape[1] - ids.shape[1]:]


def _last_logits(model, batch: dict) -> torch.Tensor:
    """Next-token logits at the last position; ``logits_to_keep=1`` skips the vocabulary projection
    of every other position (a fifth of the forward pass for a 49k-token vocabulary)."""
    try:
        return model(**batch, logits_to_keep=1).logits[:, -1].float()
    except TypeError:  # architectures whose forward does not take it
        return model(**batch).logits[:, -1].float()


def evaluate_classification(model, records, *, tok, family, args, device, batch_size, label_names,
                            progress=None, chat=False) -> dict:
    k = len(label_names)
    golds = [r["label"] for r in records]
    if family == "causal":
        cands = [label_ids(tok, name, family, chat=chat) for name in label_names]
        if all(len(c) == 1 for c in cands) and len({c[0] for c in cands}) == k:
            prompts = [class_prompt(tok, r["text"], label_names, family, args.max_source_length, chat=chat)
                       for r in records]
            scores = _first_token_scores(model, prompts, [c[0] for c in cands], tok=tok, device=device,
                                         batch_size=batch_size)
            preds = [max(range(k), key=lambda j: row[j]) for row in scores]
            if progress:
                progress(len(records))
            return classification_scores(preds, golds, k)
    feats = []
    for r in records:
        prompt = class_prompt(tok, r["text"], label_names, family, args.max_source_length, chat=chat)
        for name in label_names:
            target = label_ids(tok, name, family, chat=chat)
            if family == "seq2seq":
                feats.append({"input_ids": prompt, "labels": target, "decoder": True})
            else:
                feats.append({"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target})
    scores = sequence_logprobs(model, feats, tok=tok, family=family, device=device, batch_size=batch_size)
    preds = [max(range(k), key=lambda j: scores[i * k + j]) for i in range(len(records))]
    if progress:
        progress(len(records))
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
        return [{"input_ids": b[:half], "labels": b[half:], "decoder": True} for b in blocks]
    return [{"input_ids": b, "labels": list(b)} for b in blocks]


@torch.no_grad()
def evaluate_language_modeling(model, records, *, tok, family, args, device, batch_size, label_names=None,
                               limit=None, progress=None, chat=False) -> dict:
    """Perplexity. Causal: sliding window of ``max_source_length`` with ``lm_stride`` (default half),
    each token scored once with at least (window - stride) tokens of context. Seq2seq: second half of
    each block given the first half."""
    block = args.max_source_length
    stride = args.lm_stride or max(1, block // 2)
    if family == "seq2seq":
        feats = encode_language_modeling(records, tok=tok, family=family, args=args, limit=limit)
        nlls, counts = _nll(model, feats, tok=tok, family=family, device=device, batch_size=batch_size)
        note = (f"seq2seq: perplexity of the second {block - block // 2} tokens of each {block}-token block "
                "given the first half")
    else:
        stream: list[int] = []
        for r in records:
            stream += _ids(tok, r["text"]) + _eos(tok)
        feats, prev_end = [], 0
        for begin in range(0, max(1, len(stream) - 1), stride):
            end = min(begin + block, len(stream))
            ids = stream[begin:end]
            new = end - prev_end  # score only tokens not scored by the previous window
            feats.append({"input_ids": ids, "labels": [IGNORE] * (len(ids) - new) + ids[-new:]})
            prev_end = end
            if end == len(stream) or (limit is not None and len(feats) >= limit):
                break
        nlls, counts = _nll(model, feats, tok=tok, family=family, device=device, batch_size=batch_size)
        note = f"causal: sliding window of {block} tokens, stride {stride}"
    if progress:
        progress(len(records))
    nll, count = sum(nlls), sum(counts)
    ppl = math.exp(nll / count) if count else float("nan")
    samples = {"n": len(nlls), "params": {}, "columns": {"nll": nlls, "tokens": counts}}  # one row per window
    return {"perplexity": round(ppl, 4), "eval_tokens": count, "perplexity_protocol": note, "samples": samples}


def _nll(model, feats, *, tok, family, device, batch_size) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood and scored-token count of each feature."""
    nlls: list[float] = []
    counts: list[int] = []
    for i in range(0, len(feats), batch_size):
        batch = pad_batch(feats[i:i + batch_size], pad_id=tok.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       **({"labels": batch["labels"]} if family == "seq2seq" else {})).logits.float()
        labels = batch["labels"]
        if family == "causal":
            logits, labels = _input_positions(logits, labels)[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                 reduction="none")
        nlls += loss.sum(-1).tolist()
        counts += (labels != IGNORE).sum(-1).tolist()
    return nlls, counts


def mean_loss(model, feats, *, tok, family, device, batch_size) -> float:
    """Mean token loss of teacher-forced features (validation loss, for any model)."""
    nlls, counts = _nll(model, feats, tok=tok, family=family, device=device, batch_size=batch_size)
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


TASKS: dict[str, Task] = {t.name: t for t in [
    Task(SPECS["summarization"], encode_summarization, evaluate_summarization),
    Task(SPECS["classification"], encode_classification, evaluate_classification),
    Task(SPECS["language-modeling"], encode_language_modeling, evaluate_language_modeling),
]}
