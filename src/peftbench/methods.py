"""Method registry: name -> how to make a model trainable.

Usage:
    applied = apply(name="lora", options={"r": 16}, model=base, family="causal")
    applied.model, applied.trains, applied.can_merge, applied.learning_rate
    check("lora", {"r": "eight"})   # -> ["method.r: 'eight' is not a valid int for LoraConfig"]

``none`` trains nothing (zero-shot baseline), ``full`` trains every weight, the others wrap the
model with ``peft.get_peft_model``. Options are the fields of the method's peft config; target
modules default to peft's own per-architecture mapping. Adding a method is one ``Method`` line.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import torch

from peftbench.config import fits, type_name


@dataclass(frozen=True)
class Method:
    name: str
    config_class: str | None  # peft config class name; None for none/full
    defaults: dict  # options we set unless the user does (documented in the README)
    learning_rate: float  # default peak learning rate
    trains: bool = True
    description: str = ""


# Default peak learning rates, from published practice (a suite should still sweep them, e.g.
# `train.learning_rate: [1e-4, 3e-4, 1e-3]`: an untuned rate per method compares rates, not methods):
#   full   5e-5  transformers' TrainingArguments default, the usual full fine-tuning rate for GPT-2/T5
#   lora   2e-4  LoRA paper (Hu et al. 2021), GPT-2 medium/large on E2E NLG, Table 11
#   ia3    3e-3  T-Few (Liu et al. 2022), the (IA)3 recipe's rate (Adafactor there, AdamW here)
#   dora, loha, lokr  2e-4: as LoRA (reparametrisations of the same low-rank update; untuned)
#   vera   1e-3  trains only scaling vectors, like IA3: a rate between LoRA's and IA3's (untuned)
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("none", None, {}, 0.0, trains=False, description="zero-shot baseline: no training"),
    Method("full", None, {}, 5e-5, description="full fine-tuning: every weight trains"),
    Method("lora", "LoraConfig", {}, 2e-4, description="LoRA (peft defaults: r=8, alpha=8)"),
    Method("ia3", "IA3Config", {}, 3e-3, description="IA3 (peft defaults)"),
    Method("dora", "LoraConfig", {"use_dora": True}, 2e-4, description="DoRA: weight-decomposed LoRA"),
    Method("loha", "LoHaConfig", {}, 2e-4, description="LoHa: low-rank Hadamard product"),
    Method("lokr", "LoKrConfig", {}, 2e-4, description="LoKr: low-rank Kronecker product"),
    Method("vera", "VeraConfig", {}, 1e-3, description="VeRA: shared random projections"),
]}


def _peft_config_class(name: str):
    import peft

    return getattr(peft, name)


def check(name: str, options: dict) -> list[str]:
    """Config problems: unknown method, unknown option, wrong type or range, rejected by peft."""
    if name not in METHODS:
        return [f"method.name: unknown method {name!r} (known: {', '.join(METHODS)})"]
    method = METHODS[name]
    if method.config_class is None:
        return [f"method.{k}: {name!r} takes no options" for k in options]
    cls = _peft_config_class(method.config_class)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)} - INTERNAL_FIELDS
    problems = []
    for key, value in options.items():
        if key not in fields:
            problems.append(f"method.{key}: not an option of {method.config_class} "
                            f"(e.g. {', '.join(sorted(fields)[:6])}, ...)")
        elif not fits(value, hints.get(key, typing.Any)):
            problems.append(f"method.{key}: {value!r} is not a valid {type_name(hints[key])} "
                            f"for {method.config_class}")
        elif key == "r" and value < 1:
            problems.append(f"method.r: must be >= 1, got {value}")
        elif "dropout" in key and isinstance(value, (int, float)) and not 0 <= value < 1:
            problems.append(f"method.{key}: must be in [0, 1), got {value}")
    if not problems:  # peft's own checks (__post_init__), still before anything loads
        try:
            cls(**{**method.defaults, **options})
        except (ValueError, TypeError) as e:
            problems.append(f"method: {method.config_class} rejects the options: {str(e).splitlines()[0]}")
    return problems


INTERNAL_FIELDS = {"peft_type", "task_type", "base_model_name_or_path", "revision", "auto_mapping"}


def _conv1d_targets(model: torch.nn.Module, targets: Any) -> bool:
    """GPT-2 stores its projections as transformers' Conv1D (weights transposed): peft needs fan_in_fan_out."""
    from transformers.pytorch_utils import Conv1D

    names = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    if not names:
        return False
    if isinstance(targets, str):
        import re

        return any(re.fullmatch(targets, n) for n in names)
    if targets is None:
        return True  # peft's default mapping for gpt2 targets c_attn (Conv1D)
    return any(n.split(".")[-1] in set(targets) for n in names)


def peft_config(name: str, options: dict, *, family: str, model: torch.nn.Module):
    from peft import TaskType

    method = METHODS[name]
    cls = _peft_config_class(method.config_class)
    opts = {**method.defaults, **options}
    task_type = TaskType.SEQ_2_SEQ_LM if family == "seq2seq" else TaskType.CAUSAL_LM
    field_names = {f.name for f in dataclasses.fields(cls)}
    if "fan_in_fan_out" in field_names and "fan_in_fan_out" not in opts and _conv1d_targets(model, opts.get("target_modules")):
        opts["fan_in_fan_out"] = True
    if name == "ia3" and "feedforward_modules" not in opts and "target_modules" in opts:
        opts["feedforward_modules"] = []  # user-chosen targets: treat none as feed-forward unless told
    return cls(task_type=task_type, **opts)


@dataclass
class Applied:
    model: torch.nn.Module
    trains: bool
    can_merge: bool
    resolved: dict  # the method's effective options (peft config as a dict, every default filled in)
    learning_rate: float


def apply(*, name: str, options: dict, model: torch.nn.Module, family: str) -> Applied:
    method = METHODS[name]
    if method.config_class is None:
        for p in model.parameters():
            p.requires_grad_(method.trains)
        return Applied(model, method.trains, False, {"name": name}, method.learning_rate)
    from peft import get_peft_model

    cfg = peft_config(name, options, family=family, model=model)
    peft_model = get_peft_model(model, cfg)
    resolved = {"name": name, **_jsonable(cfg.to_dict())}
    can_merge = hasattr(peft_model, "merge_and_unload") and cfg.peft_type.value not in (
        "PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING")
    return Applied(peft_model, True, can_merge, resolved, method.learning_rate)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set) else items
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return getattr(value, "value", str(value))
