"""Method registry: name -> how to make a model trainable.

Usage:
    applied = apply(name="lora", options={"r": 16}, model=base, family="causal", total_steps=100)
    applied.model, applied.trains, applied.can_merge, applied.learning_rate, applied.step_hook
    check("lora", {"r": "eight"})   # -> ["method.r: 'eight' is not a valid int for LoraConfig"]
    lookup("prefix-tuning")          # -> Method(name="prefix_tuning", peft_type="PREFIX_TUNING", ...)

``none`` trains nothing (zero-shot baseline), ``full`` trains every weight; every other name is a
peft method: any type of the installed peft (``PEFT_TYPE_TO_CONFIG_MAPPING``), lower-case, with
``_`` or ``-``, resolved through peft's own mapping, so a new peft method needs no code here. The
curated entries below add defaults and sourced learning rates, and aliases for LoRA variants
(``dora``, ``rslora``, ``pissa``, ``olora``, ``loftq``, ``qlora``). Options are the fields of the
method's peft config, checked against their types; target modules default to peft's own
per-architecture mapping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only where a model is touched: the report reads this registry without it
    import torch

from peftbench.catalog.methodspecs import CURATED, LOFTQ_BITS, LOFTQ_DEFAULT_BITS, PROMPT_DEFAULTS, REQUIRED, Method
from peftbench.spec.config import fits, method_name, type_name


@functools.cache
def peft_types() -> dict[str, Any]:
    """Every method type of the installed peft: lower-case name -> config class."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {method_name(getattr(k, "value", k)): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def names() -> list[str]:
    """Every name ``method.name`` accepts: the curated ones first, then the rest of peft's types."""
    return [*CURATED, *sorted(set(peft_types()) - set(CURATED))]


def lookup(name: str) -> Method | None:
    key = method_name(name)
    if key in CURATED:
        return CURATED[key]
    if key in peft_types():
        prompt = _is_prompt_learning(peft_types()[key])
        return Method(
            key,
            key.upper(),
            dict(PROMPT_DEFAULTS) if prompt else {},
            3e-2 if prompt else 2e-4,
            description=f"peft {key}",
            rate_source="untuned: prompt tuning's rate" if prompt else "untuned: LoRA's rate",
        )
    return None


def config_class(method: Method):
    return peft_types()[method_name(method.peft_type)]


def _is_prompt_learning(cls) -> bool:
    from peft import PromptLearningConfig

    return issubclass(cls, PromptLearningConfig)


def _missing(method: Method, options: dict) -> tuple[str, str] | None:
    """(option, why) when the method cannot do without an option the user did not give."""
    need = REQUIRED.get(method.name)
    return need if need and need[0] not in options else None


def check(name: str, options: dict) -> list[str]:
    """Config problems: unknown method, unknown option, wrong type or range, rejected by peft.

    A method and options that passed once with the installed peft and transformers (and this module's checks) are
    remembered (``passed``): a later suite plans them without importing peft. A problem is always checked again,
    so its message is today's."""
    key = passed_key("check", method_name(name), options)
    if key and passed(key):
        return []
    problems = _check(name, options)
    if key and not problems:
        remember_passed(key)
    return problems


# Checks that passed, kept across suites in $PEFTBENCH_CACHE/passed-checks.json: planning a one-run LoRA suite
# on 2 cores spent 4.4 s building the model on the meta device for the method's probe and importing peft for the
# options' check, of a 10 s process (its process and the runs' warm server importing side by side).


def passed_key(kind: str, *parts) -> str | None:
    """The key of a check's inputs: ``parts`` (JSON), the installed peft, transformers and torch, and the code of the
    checks (this module and its specs), so a changed check or another version checks again; None where the parts
    have no one JSON form (a hand-written mapping with keys of mixed types): such a check is not kept."""
    import hashlib
    import json

    code, versions = _checks_context()
    try:
        text = json.dumps([kind, parts, versions], sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(code + text.encode()).hexdigest()[:24]


@functools.cache
def _checks_context() -> tuple[bytes, list[str]]:
    """The checks' code and the versions they ran against, read once per process (every experiment asks twice)."""
    from importlib import metadata
    from pathlib import Path

    here = Path(__file__)
    code = b"".join((here.parent / f).read_bytes() for f in (here.name, "methodspecs.py"))
    return code, [metadata.version(d) for d in ("peft", "transformers", "torch")]


PASSED_FILE = "passed-checks.json"


def passed(key: str) -> bool:
    from peftbench.catalog.sources import cached_keys

    return key in cached_keys(PASSED_FILE)


def remember_passed(key: str) -> None:
    """Not remembered where the cache cannot be written: the next suite checks again."""
    from peftbench.catalog.sources import add_cached_key

    add_cached_key(PASSED_FILE, key)


def _check(name: str, options: dict) -> list[str]:
    method = lookup(name)
    if method is None:
        return [
            f"method.name: unknown method {name!r} (e.g. {', '.join(list(CURATED)[:8])}, ...; every peft "
            f"method type is accepted: peftbench list --methods)"
        ]
    if method.peft_type is None:
        return [f"method.{k}: {name!r} takes no options" for k in options]
    missing = _missing(method, options)
    if missing:
        key, why = missing
        return [f"method.{key}: {method.name} needs it: {why}"]
    cls = config_class(method)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)} - INTERNAL_FIELDS
    problems = []
    for key, value in options.items():
        if key in method.extra_options:
            if not fits(value, method.extra_options[key]) or value < 1:
                problems.append(f"method.{key}: must be a positive int, got {value!r}")
        elif key not in fields:
            problems.append(
                f"method.{key}: not an option of {cls.__name__} (e.g. {', '.join(sorted(fields)[:6])}, ...)"
            )
        elif not fits(value, hints.get(key, typing.Any)):
            problems.append(f"method.{key}: {value!r} is not a valid {type_name(hints[key])} for {cls.__name__}")
        elif key == "r" and value < 1:
            problems.append(f"method.r: must be >= 1, got {value}")
        elif "dropout" in key and isinstance(value, (int, float)) and not 0 <= value < 1:
            problems.append(f"method.{key}: must be in [0, 1), got {value}")
    if method.name == "loftq" and options.get("bits", LOFTQ_DEFAULT_BITS) not in LOFTQ_BITS.values():
        problems.append(f"method.bits: LoftQ quantises to 4 (nf4) or 8 (int8) bits, got {options['bits']}")
    if not problems:  # peft's own checks (__post_init__), for either family (the probe knows which)
        from peft import TaskType

        errors = []
        for task_type in (TaskType.CAUSAL_LM, TaskType.SEQ_2_SEQ_LM):
            try:
                _config_kwargs(method, options, total_steps=1000, task_type=task_type)
                break
            except (ValueError, TypeError) as e:
                errors.append(str(e).splitlines()[0])
        else:
            problems.append(f"method: {cls.__name__} rejects the options: {errors[0]}")
    return problems


@contextlib.contextmanager
def _compilers_kept():
    """Undo peft BOFT's CC=CXX=gcc, left set when its CUDA build fails: inductor then linked C++ sans libstdc++."""
    saved = {k: os.environ.get(k) for k in ("CC", "CXX")}
    try:
        yield
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        for k in (k for k, v in saved.items() if v is None):
            os.environ.pop(k, None)


def probe(name: str, options: dict, *, model: torch.nn.Module, family: str) -> str | None:
    """Why the method cannot train ``model`` (typically on the meta device: shapes, no weights), or None.

    The method is applied and one forward pass run; None too when only real weights could tell
    (an operation the meta device does not implement)."""
    import warnings

    import torch

    method = lookup(name)
    if method is None or method.peft_type is None:
        return None
    missing = _missing(method, options)
    if missing:
        return f"needs method.{missing[0]}"
    device = next(model.parameters()).device
    init = {**method.defaults, **options}.get("init_lora_weights")
    valued_init = device.type == "meta" and isinstance(init, str) and init != "gaussian"
    if valued_init:  # PiSSA's SVD, OLoRA's QR: the layers are the default's; the values are tried below
        options = {**options, "init_lora_weights": True}
    ids = torch.zeros(1, 4, dtype=torch.long, device=device)
    batch = {"input_ids": ids, **({"decoder_input_ids": ids} if family == "seq2seq" else {})}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            applied = apply(name=method.name, options=options, model=model, family=family, total_steps=1000)
            if not sum(p.numel() for p in applied.model.parameters() if p.requires_grad):
                return "trains no parameters with these options"
            with torch.no_grad():
                applied.model(**batch)
    except Exception as e:  # noqa: BLE001 - peft raises many types for "cannot apply"
        msg = (str(e).splitlines() or [""])[0]
        if "meta" in msg.lower() or "aten::" in msg:
            return None
        return f"{type(e).__name__}: {msg[:240]}"
    return _probe_init(applied.model, init, options) if valued_init else None


def _probe_init(wrapped: torch.nn.Module, init: str, options: dict) -> str | None:
    """An initialisation that needs the weights' values, tried on one small real layer of each type
    the method wrapped (OLoRA's QR ignores GPT-2's transposed Conv1D: the layer's shapes break)."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers.pytorch_utils import Conv1D

    small = {torch.nn.Linear: lambda: torch.nn.Linear(16, 24), Conv1D: lambda: Conv1D(24, 16)}
    kinds = {
        type(m.base_layer) for m in wrapped.modules() if isinstance(m, BaseTunerLayer) and hasattr(m, "base_layer")
    }
    for kind in sorted(kinds & small.keys(), key=lambda k: k.__name__):
        holder = torch.nn.Module()
        holder.layer = small[kind]()
        holder.forward = lambda x, holder=holder: holder.layer(x)
        cfg = LoraConfig(
            target_modules=["layer"],
            r=4,
            init_lora_weights=init,
            fan_in_fan_out=kind is Conv1D,
            use_dora=bool(options.get("use_dora", False)),
        )
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                get_peft_model(holder, cfg)(torch.randn(2, 16))
        except Exception as e:  # noqa: BLE001 - the initialisation's own errors, whatever their type
            return f"init_lora_weights={init} on {kind.__name__} layers: {type(e).__name__}: {str(e)[:200]}"
    return None


def support_table(archs: dict[str, str]) -> list[dict]:
    """Every method name x architecture (name -> model spec): "works" or why not, probed on the
    meta device (``peftbench list --methods``)."""
    from peftbench.catalog import models

    rows = []
    for name in names():
        row = {"method": name, "description": lookup(name).description}
        for arch, spec in archs.items():
            built = models.meta_model(spec)
            if built is None:
                row[arch] = "unknown"
                continue
            why = probe(name, {}, model=built[0], family=built[1])
            row[arch] = "works" if why is None else why
        rows.append(row)
    return rows


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


def _config_kwargs(method: Method, options: dict, *, total_steps: int | None, task_type=None):
    """The peft config object for a method and the user's options (our own options translated)."""
    cls = config_class(method)
    opts = {**method.defaults, **{k: v for k, v in options.items() if k not in method.extra_options}}
    fields = {f.name for f in dataclasses.fields(cls)}
    if "total_step" in fields and opts.get("total_step") is None:  # AdaLoRA's schedule needs the run's length
        opts["total_step"] = total_steps
    kw = {"task_type": task_type} if task_type is not None else {}
    return cls(**kw, **opts)


def peft_config(name: str, options: dict, *, family: str, model: torch.nn.Module, total_steps: int | None = None):
    from peft import TaskType

    method = lookup(name)
    cls = config_class(method)
    opts = dict(options)
    field_names = {f.name for f in dataclasses.fields(cls)}
    if (
        "fan_in_fan_out" in field_names
        and "fan_in_fan_out" not in opts
        and _conv1d_targets(model, opts.get("target_modules"))
    ):
        opts["fan_in_fan_out"] = True
    if method.peft_type == "IA3" and "feedforward_modules" not in opts and "target_modules" in opts:
        opts["feedforward_modules"] = []  # user-chosen targets: treat none as feed-forward unless told
    task_type = TaskType.SEQ_2_SEQ_LM if family == "seq2seq" else TaskType.CAUSAL_LM
    return _config_kwargs(method, opts, total_steps=total_steps, task_type=task_type)


@dataclass
class Applied:
    model: torch.nn.Module
    trains: bool
    can_merge: bool
    resolved: dict  # the method's effective options (peft config as a dict, every default filled in)
    learning_rate: float
    step_hook: Callable[[int], None] | None = None  # called after every optimizer step (AdaLoRA's rank budget)
    merge_note: str | None = None  # why the method does not merge


def apply(
    *,
    name: str,
    options: dict,
    model: torch.nn.Module,
    family: str,
    total_steps: int | None = None,
    loftq_factors: dict | None = None,
) -> Applied:
    """The method on ``model``; ``loftq_factors`` (``loftq_base``): LoftQ's adapter for a base that
    was quantised after the initialisation, copied in instead of initialising again."""
    method = lookup(name)
    if method.peft_type is None:
        for p in model.parameters():
            p.requires_grad_(method.trains)
        return Applied(model, method.trains, False, {"name": method.name}, method.learning_rate)
    from peft import get_peft_model

    cfg = peft_config(method.name, options, family=family, model=model, total_steps=total_steps)
    with _compilers_kept():
        peft_model = get_peft_model(model, cfg)
    resolved = {"name": method.name, **_jsonable(cfg.to_dict())}
    if method.name == "loftq":  # peft's LoftQ needs CUDA and bitsandbytes: ours runs anywhere (peftbench.catalog.loftq)
        from peftbench.catalog.loftq import init_loftq, load_factors

        bits, iters = options.get("bits", LOFTQ_DEFAULT_BITS), options.get("iterations", 1)
        if loftq_factors is not None:
            load_factors(peft_model, loftq_factors)
        else:
            init_loftq(peft_model, bits=bits, iterations=iters)
        resolved.update(
            init_lora_weights="loftq",
            loftq_config={
                "loftq_bits": bits,
                "loftq_iter": iters,
                "quantization": next(q for q, b in LOFTQ_BITS.items() if b == bits),
                "note": "the adapter pairs with the quantised base: base + B A approximates the original weights",
            },
        )
    frozen = _freeze_ranknum(peft_model) if method.name == "adalora" else 0
    if frozen:
        resolved["workarounds"] = [
            f"AdaLoRA's {frozen} ranknum scalars frozen: peft's adapter-dtype cast re-wraps them as trainable "
            "Parameters under a bf16/fp16 base (peft 0.21), so the optimizer moved them"
        ]
    prompt = cfg.is_prompt_learning
    can_merge = hasattr(peft_model, "merge_and_unload") and not prompt
    hook = getattr(peft_model.base_model, "update_and_allocate", None)  # AdaLoRA: every step

    note = "prompt methods do not merge: their virtual tokens stay in every forward" if prompt else None
    return Applied(peft_model, True, can_merge, resolved, method.learning_rate, hook, note)


def _freeze_ranknum(model: torch.nn.Module) -> int:
    """AdaLoRA's per-layer ``ranknum`` (the rank it scales by) is a constant, not a weight: keep it out of training."""
    n = 0
    for name, p in model.named_parameters():
        if ".ranknum." in name and p.requires_grad:
            p.requires_grad_(False)
            n += 1
    return n


def loftq_base(*, options: dict, model: torch.nn.Module, family: str) -> tuple[torch.nn.Module, dict]:
    """LoftQ for a base about to be quantised (``model.quantization``): LoRA initialised by LoftQ on the
    full-precision weights, its factors kept by layer name, and the base returned holding Q, the
    dequantised weights LoftQ converged to, which the quantiser then stores (up to its rounding of the
    block scales). ``apply(..., loftq_factors=...)`` puts the adapter on the quantised base."""
    from peftbench.catalog.loftq import adapter_factors

    peft_model = apply(name="loftq", options=options, model=model, family=family).model
    factors = adapter_factors(peft_model)
    return peft_model.unload(), factors


def cast(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)``, with the adapter layers that record their base's dtype when created
    (peft 0.21's AdaMSS keeps ``self.dtype`` and casts its factors to it) following the cast: else
    their input, cast to the old dtype, meets the new weights (``float != BFloat16``)."""
    import torch

    model.to(dtype)
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(module.__dict__.get("dtype"), torch.dtype) and hasattr(base, "weight"):
            module.dtype = base.weight.dtype


def base_state_dict(model: torch.nn.Module) -> dict:
    """The base model's weights under their own names, without an unmerged adapter's tensors: what
    the base ships as. Saving the wrapped model itself would count the adapter, and fails where a
    method shares one tensor between layers (peft's Lily: "shared tensors")."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [name + "." for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    out = {}
    for key, value in model.state_dict().items():
        owner = next((w for w in wrapped if key.startswith(w)), None)
        if owner is None:
            out[key] = value
        elif key.startswith(owner + "base_layer."):
            out[owner + key[len(owner + "base_layer.") :]] = value
    return out


def merge(model) -> tuple[torch.nn.Module, str | None]:
    """The merged model, or the model itself and why it could not merge (peft offers merging for
    methods that then refuse, e.g. a bias adapter on a layer without bias). Prompt methods have nothing to
    merge: their virtual tokens are inputs (peft's merge_and_unload would hand back the bare base)."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
    if getattr(config, "is_prompt_learning", False):
        return model, "prompt methods do not merge: their virtual tokens stay in every forward"
    try:
        return model.merge_and_unload(), None
    except (NotImplementedError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        return model, f"does not merge: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set) else items
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return getattr(value, "value", str(value))
