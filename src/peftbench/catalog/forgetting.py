"""Forgetting: how much worse a fine-tuned model predicts general text than its base did.

Usage:
    probe = Probe.load(exp.measure.forgetting, tok=tok, family="causal", data_seed=0)   # N windows
    before = probe.nll(base_model, device=dev, batch_size=8)       # per window, nats per token
    after = probe.nll(trained_model, device=dev, batch_size=8)
    record = probe.record(before, after)    # the result's ``forgetting`` section

Fine-tuning trades what a model learns against what it forgets (Biderman et al., 2024, "LoRA learns
less and forgets less"; peft's method comparison logs the same loss change on a general sample). The probe
is N windows of a general corpus, none of the task's data: the mean negative log-likelihood per token of
each window is scored on the base model before training and on the trained model (merged or not, the
same function) after; ``forgetting`` is the mean increase over windows, with a paired bootstrap interval
(the same windows on both sides). The zero-shot baseline and an adapter that is still zero forget exactly
0 with a [0, 0] interval. Causal models score every token of a window after the first; encoder-decoders
the window's second half given its first (as their perplexity does).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftbench import stats

DEFAULT_CORPUS = "builtin:moby-dick"  # general English prose, offline; a task on it probes with SECOND_CORPUS
SECOND_CORPUS = "builtin:sotu"
DEFAULT = {"spec": "auto", "samples": 32, "tokens": 128}
KEYS = frozenset(DEFAULT)


def resolve(setting, *, model_spec: str, task_data: str) -> dict | None:
    """``measure.forgetting`` as a run measures it: None (off) for random weights (whatever the spec) or
    ``spec: off``;
    ``auto`` names the offline general corpus (another one when the task's own data is that corpus)."""
    if setting is None or setting is False:
        return None
    d = {**DEFAULT, **(setting if isinstance(setting, dict) else {})}
    if d["spec"] in ("off", None, False) or model_spec.startswith("random:"):
        return None  # random weights predict no text: nothing to forget
    if d["spec"] == "auto":
        d["spec"] = SECOND_CORPUS if task_data == DEFAULT_CORPUS else DEFAULT_CORPUS
    return d


def problems(setting) -> list[str]:
    """What is wrong with a ``measure.forgetting`` value (the plan's check)."""
    if setting is None or setting is False:
        return []
    if not isinstance(setting, dict):
        return [f"measure.forgetting: a mapping {{spec, samples, tokens}} or null, got {setting!r}"]
    out = [f"measure.forgetting.{k}: unknown key (known: {', '.join(sorted(KEYS))})" for k in setting if k not in KEYS]
    for key in ("samples", "tokens"):
        v = setting.get(key, DEFAULT[key])
        if not isinstance(v, int) or isinstance(v, bool) or v < (2 if key == "samples" else 4):
            out.append(f"measure.forgetting.{key}: an integer >= {2 if key == 'samples' else 4}, got {v!r}")
    spec = setting.get("spec", "auto")
    if not isinstance(spec, str) and spec not in (None, False):
        out.append(f"measure.forgetting.spec: a dataset spec, auto or off, got {spec!r}")
    return out


@dataclass
class Probe:
    spec: str
    family: str
    tokens: int
    feats: list[dict]
    fingerprint: str
    protocol: str

    @classmethod
    def load(cls, setting: dict, *, tok, family: str, data_seed: int, max_positions: int | None = None) -> Probe:
        """N windows of ``tokens`` tokens from the corpus's held-out split (seeded; the same for every
        method and seed of a suite, so their forgetting pairs window by window)."""
        from peftbench.catalog import data as data_mod
        from peftbench.catalog.tasks import lm_blocks
        from peftbench.spec.config import DataArgs

        block = min(setting["tokens"], max_positions) if max_positions else setting["tokens"]
        args = DataArgs(
            spec=setting["spec"],
            task="language-modeling",
            max_train_samples=None,
            max_eval_samples=None,
            max_source_length=block,
            seed=data_seed,
        )
        splits = data_mod.load(args)
        rows = splits.test + splits.validation + splits.train  # the held-out part first
        blocks = lm_blocks(rows, tok=tok, block=block, limit=setting["samples"])
        if len(blocks) < 2:
            raise ValueError(f"measure.forgetting: {setting['spec']} holds fewer than two {block}-token windows")
        if family == "seq2seq":
            half = block // 2
            from peftbench.catalog.scoring import SCORERS  # torch: the plan reads this module without it

            feats = [SCORERS[family].pair(b[:half], b[half:]) for b in blocks]
            protocol = f"seq2seq: the second {block - half} tokens of each {block}-token window given the first"
        else:
            feats = [{"input_ids": b, "labels": list(b)} for b in blocks]
            protocol = f"causal: every token of each {block}-token window after the first"
        print_ = stats.fingerprint([setting["spec"], protocol, *(",".join(map(str, b)) for b in blocks)])
        return cls(setting["spec"], family, block, feats, print_, protocol)

    @classmethod
    def for_model(cls, setting: dict, loaded, *, data_seed: int) -> Probe:
        """The probe for a loaded model (``catalog.models.LoadedModel``): windows within its positions."""
        config = getattr(loaded.model, "config", None)
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        causal = loaded.family == "causal"
        return cls.load(
            setting,
            tok=loaded.tokenizer,
            family=loaded.family,
            data_seed=data_seed,
            max_positions=positions if causal else None,
        )

    def nll(self, model, *, tok, device, batch_size: int) -> list[float]:
        """Mean negative log-likelihood per scored token of each window (nats)."""
        was_training = model.training
        model.eval()
        try:
            from peftbench.catalog.scoring import scorer

            sums, counts = scorer(model, tok, family=self.family, device=device, batch_size=batch_size).nll(self.feats)
        finally:
            model.train(was_training)
        return [s / c for s, c in zip(sums, counts)]

    def record(self, before: list[float], after: list[float]) -> dict:
        """The result's ``forgetting`` section: the mean increase with its paired bootstrap interval."""
        samples = {
            "n": len(before),
            "fingerprint": self.fingerprint,
            "params": {},
            "columns": {"before": [round(x, 6) for x in before], "after": [round(x, 6) for x in after]},
        }
        est, lo, hi = stats.bootstrap_interval(samples, "forgetting")
        n = len(before)
        return {
            "spec": self.spec,
            "windows": n,
            "tokens_per_window": self.tokens,
            "protocol": self.protocol,
            "nll_before": round(sum(samples["columns"]["before"]) / n, 6),
            "nll_after": round(sum(samples["columns"]["after"]) / n, 6),
            "increase": round(est, 6),
            "low": round(lo, 6),
            "high": round(hi, 6),
            "level": stats.LEVEL,
            "unit": "nats/token",
            "method": f"paired bootstrap over {n} windows, {stats.RESAMPLES} resamples",
            "samples": samples,
        }
