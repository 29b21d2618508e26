"""The curated methods: defaults, sourced learning rates, the options some methods cannot do without.
Torch- and peft-free, so plans and the report read them; ``methods.lookup`` answers every other peft
type by name.

Usage:
    CURATED["lora"].learning_rate, CURATED["qlora"].quantization, REQUIRED["trainable_tokens"]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftbench.spec.config import method_name


@dataclass(frozen=True)
class Method:
    name: str
    peft_type: str | None  # peft's PeftType value; None for none/full
    defaults: dict  # options we set unless the user does (documented in the README)
    learning_rate: float  # default peak learning rate
    trains: bool = True
    description: str = ""
    rate_source: str = "untuned: LoRA's rate"
    quantization: str | None = None  # a base quantisation the method implies (qlora: nf4)
    extra_options: dict = field(default_factory=dict)  # our options that are not config fields: name -> type
    trains_base: bool = False  # every weight of the base trains: ships a full checkpoint, no quantised base
    init_before_quantization: bool = False  # initialised on the full-precision base, which is then quantised


def traits(name: str) -> Method:
    """A method's traits by name, torch- and peft-free (what the report reads): the curated record, else
    an adapter method's traits (``methods.lookup`` gives peft's other types their defaults and rates)."""
    key = method_name(name)
    return CURATED.get(key) or Method(key, key.upper(), {}, 2e-4)


def is_zero_shot(name: str) -> bool:
    """The baseline that trains nothing (``none``): what the other methods are measured against."""
    return not traits(name).trains


PROMPT_DEFAULTS = {"num_virtual_tokens": 20}
# Options without which a method trains nothing useful (peft's defaults are placeholders there).
REQUIRED = {
    "trainable_tokens": ("token_indices", "the token ids whose embeddings train (peft's default trains none)"),
    "cpt": (
        "cpt_token_ids",
        "the in-context examples' token ids, with cpt_mask and cpt_tokens_type_mask (with "
        "peft's defaults the loss is not a number)",
    ),
}
LOFTQ_OPTIONS = {"bits": int, "iterations": int}
LOFTQ_BITS = {"nf4": 4, "int8": 8}  # the quantisation LoftQ initialises for -> its option ``bits``
LOFTQ_DEFAULT_BITS = 4  # LoftQ's ``bits`` when not given (nf4, its documented use)

# Default peak learning rates, from published practice (a suite should still sweep them, e.g.
# `train.learning_rate: [1e-4, 3e-4, 1e-3]`: an untuned rate per method compares rates, not methods).
CURATED: dict[str, Method] = {
    m.name: m
    for m in [
        Method("none", None, {}, 0.0, trains=False, description="zero-shot baseline: no training", rate_source=""),
        Method(
            "full",
            None,
            {},
            5e-5,
            trains_base=True,
            description="full fine-tuning: every weight trains",
            rate_source="transformers' TrainingArguments default, the usual full fine-tuning rate for GPT-2/T5",
        ),
        Method(
            "lora",
            "LORA",
            {},
            2e-4,
            description="LoRA (peft defaults: r=8, alpha=8)",
            rate_source="LoRA paper (Hu et al. 2021), GPT-2 medium/large on E2E NLG, Table 11",
        ),
        Method(
            "ia3",
            "IA3",
            {},
            3e-3,
            description="IA3 (peft defaults)",
            rate_source="T-Few (Liu et al. 2022), the (IA)3 recipe's rate (Adafactor there, AdamW here)",
        ),
        Method(
            "dora",
            "LORA",
            {"use_dora": True},
            2e-4,
            description="DoRA: weight-decomposed LoRA",
            rate_source="as LoRA (the same low-rank update, reparametrised; untuned)",
        ),
        Method(
            "rslora",
            "LORA",
            {"use_rslora": True},
            2e-4,
            description="rsLoRA: LoRA scaled by alpha/sqrt(r)",
            rate_source="as LoRA (untuned)",
        ),
        Method(
            "pissa",
            "LORA",
            {"init_lora_weights": "pissa"},
            2e-4,
            description="PiSSA: LoRA initialised from the principal singular vectors",
            rate_source="as LoRA (untuned)",
        ),
        Method(
            "olora",
            "LORA",
            {"init_lora_weights": "olora"},
            2e-4,
            description="OLoRA: LoRA initialised by QR decomposition",
            rate_source="as LoRA (untuned)",
        ),
        Method(
            "loftq",
            "LORA",
            {},
            2e-4,
            description="LoftQ: LoRA initialised against the quantisation error (options bits: 4 or 8, iterations: 1)",
            rate_source="as LoRA (untuned)",
            extra_options=LOFTQ_OPTIONS,
            init_before_quantization=True,
        ),
        Method(
            "qlora",
            "LORA",
            {},
            2e-4,
            description="QLoRA: LoRA on an NF4-quantised base (needs CUDA, bitsandbytes)",
            rate_source="as LoRA (untuned)",
            quantization="nf4",
        ),
        Method(
            "loha", "LOHA", {}, 2e-4, description="LoHa: low-rank Hadamard product", rate_source="as LoRA (untuned)"
        ),
        Method(
            "lokr", "LOKR", {}, 2e-4, description="LoKr: low-rank Kronecker product", rate_source="as LoRA (untuned)"
        ),
        Method(
            "vera",
            "VERA",
            {},
            1e-3,
            description="VeRA: shared random projections",
            rate_source="trains only scaling vectors, like IA3: between LoRA's and IA3's (untuned)",
        ),
        Method(
            "adalora",
            "ADALORA",
            {},
            2e-4,
            description="AdaLoRA: LoRA whose ranks are reallocated during training",
            rate_source="as LoRA (untuned)",
        ),
        Method(
            "prompt_tuning",
            "PROMPT_TUNING",
            PROMPT_DEFAULTS,
            3e-2,
            description="prompt tuning: 20 virtual tokens",
            rate_source="peft's prompt-tuning guide",
        ),
        Method(
            "prefix_tuning",
            "PREFIX_TUNING",
            PROMPT_DEFAULTS,
            1e-2,
            description="prefix tuning: 20 virtual tokens' keys and values in every layer",
            rate_source="peft's prefix-tuning guide",
        ),
        Method(
            "p_tuning",
            "P_TUNING",
            PROMPT_DEFAULTS,
            1e-3,
            description="P-tuning: 20 virtual tokens from a prompt encoder",
            rate_source="peft's P-tuning guide",
        ),
    ]
}


# ---------------------------------------------------------------- tuning spaces (train.search: space: auto)
# A method compared at one untuned rate loses by default (peft's own comparison: IA3 31.1 % at 1e-4,
# 39.8 % at 1e-3), so a search gives every method its own space over what it is sensitive to: the
# learning rate log-uniform over a decade each side of the curated default for every method; rank and
# alpha for LoRA and the variants that keep its parametrisation; the initialisation where peft offers
# one that is not the variant's defining choice (PiSSA, OLoRA and LoftQ are their inits); the number of
# virtual tokens and their initialisation for the prompt methods.
LORA_FAMILY = ("lora", "dora", "rslora", "pissa", "olora", "loftq", "qlora")
LORA_INITS = ("lora", "dora", "rslora", "qlora")
PROMPT_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")


def default_space(name: str) -> dict:
    """The search space of a method, keyed ``section.field`` (a list: one of these values; a mapping
    ``{low, high, log}``: a range)."""
    m = traits(name)
    if not m.trains:
        return {}
    lr = m.learning_rate
    space: dict = {
        "train.learning_rate": {"low": float(f"{lr / 10:.3g}"), "high": float(f"{lr * 10:.3g}"), "log": True}
    }
    if m.name in LORA_FAMILY:
        space["method.r"] = [4, 8, 16, 32]
        space["method.lora_alpha"] = [8, 16, 32, 64]
    if m.name in LORA_INITS:
        space["method.init_lora_weights"] = [True, "gaussian"]
    if m.name in PROMPT_METHODS:
        space["method.num_virtual_tokens"] = [10, 20, 50]
    if m.name == "prompt_tuning":
        space["method.prompt_tuning_init"] = ["RANDOM", "SAMPLE_VOCAB"]
    return space
