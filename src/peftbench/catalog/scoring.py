"""Scoring, written once per model family: what a (prompt, target) pair is fed as, its log-likelihood,
perplexity windows over a token stream, and generation. Tasks say what to score; this says how.

Usage:
    s = scorer(model, tok, family="causal", device=dev, batch_size=8)
    feat = SCORERS["seq2seq"].pair(prompt_ids, target_ids)   # also for training features (no model)
    s.loglikelihood([feat, ...])         # sum of log p(target | prompt) per feature
    s.nll([feat, ...])                   # (summed negative log-likelihood, scored tokens) per feature
    feats, note = s.windows(stream, block=512, stride=256, limit=None)   # perplexity windows
    s.generate(prompts, max_new_tokens=32)                               # decoded continuations
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from peftbench.catalog.batches import IGNORE, pad_batch

GENERATION = {"do_sample": False, "num_beams": 1}  # greedy: deterministic, so runs compare


class Scorer:
    """The family-independent loops; subclasses say how a batch becomes scored logits."""

    generate_side = "right"  # where prompts are padded for generation

    def __init__(self, model, tok, *, device, batch_size: int):
        self.model, self.tok, self.device, self.batch_size = model, tok, device, batch_size

    @staticmethod
    def pair(prompt: list[int], target: list[int]) -> dict:
        raise NotImplementedError

    def _batches(self, feats: list[dict], side: str = "right"):
        for i in range(0, len(feats), self.batch_size):
            chunk = feats[i : i + self.batch_size]
            yield chunk, self._batch(chunk, side)

    def _batch(self, chunk: list[dict], side: str, fixed: int | None = None) -> dict:
        """A chunk padded and on the device; ``fixed``: of one shape whatever the chunk, padded to that length and
        filled to the batch size with repeats of its last feature (the caller drops their outputs)."""
        fill = chunk + [chunk[-1]] * (self.batch_size - len(chunk)) if fixed else chunk
        batch = pad_batch(fill, pad_id=self.tok.pad_token_id, side=side, multiple_of=fixed or 1)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _scored(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits, labels

    @torch.no_grad()
    def loglikelihood(self, feats: list[dict], progress: Callable[[int], None] | None = None) -> list[float]:
        """Sum of log p(label tokens | prompt) for each feature (labels -100 where not scored); ``progress(n)``
        after each batch of n features."""
        scores: list[float] = []
        for chunk, batch in self._batches(feats):
            logits, labels = self._scored(self.model(**batch).logits.float(), batch["labels"])
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            scores += (picked * (labels != IGNORE)).sum(-1).tolist()
            if progress:
                progress(len(chunk))
        return scores

    @torch.no_grad()
    def nll(self, feats: list[dict]) -> tuple[list[float], list[int]]:
        """Summed negative log-likelihood and scored-token count of each feature."""
        nlls: list[float] = []
        counts: list[int] = []
        for _, batch in self._batches(feats):
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **self._teacher(batch)
            ).logits.float()
            logits, labels = self._scored(logits, batch["labels"])
            loss = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
            )
            nlls += loss.sum(-1).tolist()
            counts += (labels != IGNORE).sum(-1).tolist()
        return nlls, counts

    def _teacher(self, batch: dict) -> dict:
        return {}

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        progress: Callable[[int], None] | None = None,
        mode: str = "off",
        record: dict | None = None,
    ) -> list[str]:
        """Greedy continuations. ``mode``: "off" (transformers' dynamic cache), "static" (a static KV cache, every
        batch of one shape: prompts padded to the longest of all, the last batch filled with repeats of its last
        prompt whose outputs are dropped) or "compile" (that, with the one-token decoding step compiled as CUDA
        graphs: transformers' ``compile_config``). A model whose generation refuses the static cache falls back to
        "off", said in ``record["generation"]`` with the error."""
        feats = [{"input_ids": p} for p in prompts]
        longest = max((len(p) for p in prompts), default=1)  # one shape for the static cache's graphs
        base = {"pad_token_id": self.tok.pad_token_id, "eos_token_id": self.tok.eos_token_id, **GENERATION}
        kw = base
        if mode != "off":
            compiled = {"compile_config": _decode_compiled()} if mode == "compile" else {"disable_compile": True}
            kw = {**base, "cache_implementation": "static", **compiled}
        info = {"mode": mode}
        outs: list[str] = []
        for i in range(0, len(feats), self.batch_size):
            chunk = feats[i : i + self.batch_size]
            batch = self._batch(chunk, self.generate_side, fixed=longest if mode != "off" else None)
            try:
                gen = self.model.generate(**batch, max_new_tokens=max_new_tokens, **kw)
            except Exception as e:  # noqa: BLE001 - a model or method without static-cache support: eager
                if mode == "off" or outs:
                    raise
                info.update(mode="off", fallback=f"{mode}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                mode, kw = "off", base
                gen = self.model.generate(**batch, max_new_tokens=max_new_tokens, **kw)
            text = self.tok.batch_decode(self._continuation(gen, batch), skip_special_tokens=True)
            outs += [t.strip() for t in text[: len(chunk)]]
            if progress:
                progress(len(chunk))
        if record is not None:
            record["generation"] = info
        return outs

    def _continuation(self, gen: torch.Tensor, batch: dict) -> torch.Tensor:
        return gen

    def next_token_logprobs(self, prompts: list[list[int]], cands: list[list[int]], progress=None) -> list | None:
        """log p(each candidate | prompt) from one forward per prompt, where the family can (else None);
        ``progress(n)`` after each batch of n prompts."""
        return None


class CausalScorer(Scorer):
    """Decoder-only: the target follows the prompt in one sequence; token t is predicted at t-1."""

    generate_side = "left"

    @staticmethod
    def pair(prompt: list[int], target: list[int]) -> dict:
        return {"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target}

    def _scored(self, logits, labels):
        # prompt tuning prepends its virtual tokens' logits: keep the input's own positions, then shift
        return logits[:, logits.shape[1] - labels.shape[1] :][:, :-1], labels[:, 1:]

    def _continuation(self, gen, batch):
        return gen[:, batch["input_ids"].shape[1] :]

    @torch.no_grad()
    def next_token_logprobs(self, prompts, cands, progress=None):
        """Every candidate one distinct token: the next-token log-probs at each prompt's end."""
        if not all(len(c) == 1 for c in cands) or len({c[0] for c in cands}) != len(cands):
            return None
        out: list[list[float]] = []
        for chunk, batch in self._batches([{"input_ids": p} for p in prompts], side="left"):
            # left padding: positions count from each prompt's first real token, as teacher forcing sees them
            batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = _last_logits(self.model, batch)
            out += torch.log_softmax(logits, dim=-1)[:, [c[0] for c in cands]].tolist()
            if progress:
                progress(len(chunk))
        return out

    @staticmethod
    def windows(stream: list[int], *, block: int, stride: int, limit: int | None) -> tuple[list[dict], str]:
        """Sliding windows of ``block`` tokens, ``stride`` apart, each token scored once with at least
        (block - stride) tokens of context."""
        feats, prev_end = [], 0
        for begin in range(0, max(1, len(stream) - 1), stride):
            end = min(begin + block, len(stream))
            ids = stream[begin:end]
            new = end - prev_end  # score only tokens not scored by the previous window
            feats.append({"input_ids": ids, "labels": [IGNORE] * (len(ids) - new) + ids[-new:]})
            prev_end = end
            if end == len(stream) or (limit is not None and len(feats) >= limit):
                break
        return feats, f"causal: sliding window of {block} tokens, stride {stride}"


class Seq2SeqScorer(Scorer):
    """Encoder-decoder: the prompt is the encoder's input, the target the decoder's labels."""

    @staticmethod
    def pair(prompt: list[int], target: list[int]) -> dict:
        return {"input_ids": prompt, "labels": target, "decoder": True}

    def _teacher(self, batch):
        return {"labels": batch["labels"]}  # the decoder's inputs are the labels shifted right

    @staticmethod
    def windows(stream: list[int], *, block: int, stride: int, limit: int | None) -> tuple[list[dict], str]:
        """Consecutive blocks of ``block`` tokens; the second half of each is scored given the first."""
        n = len(stream) // block if limit is None else min(len(stream) // block, limit)
        half = block // 2
        feats = [
            Seq2SeqScorer.pair(stream[i * block : i * block + half], stream[i * block + half : (i + 1) * block])
            for i in range(n)
        ]
        return feats, (
            f"seq2seq: perplexity of the second {block - half} tokens of each {block}-token block given the first half"
        )


def _last_logits(model, batch: dict) -> torch.Tensor:
    """Next-token logits at the last position; ``logits_to_keep=1`` skips the vocabulary projection
    of every other position (a fifth of the forward pass for a 49k-token vocabulary)."""
    try:
        return model(**batch, logits_to_keep=1).logits[:, -1].float()
    except TypeError:  # architectures whose forward does not take it (or position ids)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -1].float()


def _decode_compiled():
    """transformers' compiled decoding step: the one-token forward under torch.compile with CUDA graphs, static
    shapes (the static cache and the fixed batch keep it one graph)."""
    from transformers import CompileConfig

    config = CompileConfig(mode="reduce-overhead", dynamic=False, fullgraph=False)
    config._compile_all_devices = True  # asked for ("on") off CUDA too, where generate would not compile by itself
    return config


# A decoding step compiled as CUDA graphs against the eager step (one H200, random gpt2 and t5-small, batch 8, cold
# caches; benchmarks/results/eval_generation_h200.md): 1.7-2.0 ms against 8.0-11.6 ms a step, compiling and
# recording 10-17 s, so it repays from 1,400-2,800 decoding steps (batches x new tokens).
DECODE_COMPILE_STEPS = 2000


def generation_mode(value: str, *, device_type: str, steps: int) -> tuple[str, str]:
    """``train.eval_generation`` as it will run: ("off" | "static" | "compile", why). ``steps``: the decoding steps
    the evaluation will take (batches x new tokens)."""
    if value == "on":
        return "compile", "on: static cache, compiled decoding step"
    if value in ("static", "off"):
        return value, f"{value}: {'static cache, eager' if value == 'static' else 'dynamic cache, eager'}"
    if device_type != "cuda":
        return "off", "auto: eager off CUDA (the compiled step's CUDA graphs are what saves time)"
    if steps < DECODE_COMPILE_STEPS:
        return "off", f"auto: eager ({steps} decoding steps; compiling repays from {DECODE_COMPILE_STEPS})"
    return "compile", f"auto: static cache, compiled decoding step ({steps} decoding steps)"


SCORERS: dict[str, type[Scorer]] = {"causal": CausalScorer, "seq2seq": Seq2SeqScorer}


def scorer(model, tok, *, family: str, device, batch_size: int) -> Scorer:
    return SCORERS[family](model, tok, device=device, batch_size=batch_size)
