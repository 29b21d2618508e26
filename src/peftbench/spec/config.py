"""Typed experiment configuration: dataclasses that document their fields, typed construction, identity.

Usage:
    exp = build_experiment(raw_experiment_dict, errors=errors)   # suites.py merges defaults and --set first
    exp.to_dict(); config_hash(exp)       # the identity of a run's numbers

This module holds the schema only: it imports nothing of peftbench but typecheck. Checking specs,
data and value ranges against models and methods is ``plan.py``'s job (it sits above both).
A suite file has ``name``, ``defaults`` (sections shared by every experiment), ``seeds``, and
``experiments`` (a list of per-experiment overrides) and/or ``matrix`` (axes expanded as a cartesian
product: ``section.field: [values]``, ``section: [mappings]``, or ``any_name: [partial experiments]``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.spec.typecheck import as_float, fits, type_name

SECTIONS = ("model", "data", "method", "train", "measure")
SUITE_KEYS = ("name", "description", "defaults", "experiments", "matrix", "seeds", "log_with")
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: no trailing newline slips in
ON_OFF_FIELDS = {"chat_template", "compile", "fused_optimizer", "fused_loss", "packing", "group_by_length", "optimized"}
ON_OFF_FIELDS |= {"stage", "cuda_graphs", "eval_generation", "cudnn_attention"}
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # model.dtype and measure.dtype (torch.<name>)
SWITCH_CHOICES = ("auto", "on", "off")
FUSED_LOSS_CHOICES = ("auto", "on", "liger", "chunked", "off")
COMPILE_CHOICES = ("auto", "on", "off", "model", "regions")
QUANTIZATION_CHOICES = (None, "nf4", "int8")  # model.quantization (bitsandbytes)
OPTIMIZED_CHOICES = ("auto", "static", "compile", "off")  # measure.optimized
EVAL_GENERATION_CHOICES = ("auto", "on", "static", "off")  # train.eval_generation
DISTRIBUTED_CHOICES = ("auto", "ddp", "fsdp")  # train.distributed
MAX_SEED = 2**32 - 1  # numpy.random.seed takes 0..2**32-1; torch.manual_seed takes more
MAX_ID_LENGTH = 100  # result file names get run suffixes (--lr..--seed..) and must stay < 255 bytes


def method_name(name: Any) -> str:
    """The one spelling of a method name: ``Prefix-Tuning`` -> ``prefix_tuning``."""
    return str(name).strip().lower().replace("-", "_")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field whose help text documents it (and becomes ``peftbench run --help-config``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelArgs:
    spec: str = _f("", "model spec: hub id or local dir, random:NAME, builtin:NAME")
    family: str | None = _f(None, "causal | seq2seq; filled in after loading")
    tokenizer: str | None = _f(None, "tokenizer spec; default: the model's own (random: models pick one)")
    dtype: str = _f(
        "auto",
        "weights dtype: auto (fp32 weights; bf16 compute comes from train.mixed_precision) "
        "| float32 | bfloat16 | float16",
    )
    chat_template: str = _f(
        "auto",
        "wrap prompts in the tokenizer's chat template for scoring and training: "
        "auto (on when the tokenizer has one) | on | off",
    )
    trust_remote_code: bool = _f(False, "allow code from the model repository (off by default)")
    quantization: str | None = _f(
        None,
        "base weights quantised by bitsandbytes under an adapter method: nf4 | int8 "
        "(needs CUDA; elsewhere the run is recorded as skipped); qlora implies nf4",
    )
    seed: int = _f(0, "seed of random: weights; fixed across train.seed, so every seed starts from one base model")
    revision: str | None = _f(None, "hub revision (branch, tag or commit)")


@dataclass
class DataArgs:
    spec: str = _f("", "dataset spec: hf:NAME[/CONFIG], file:PATH, builtin:NAME")
    task: str = _f("", "summarization | classification | language-modeling")
    fields: dict = _f({}, "canonical field -> dataset column, e.g. {source: article, target: highlights}")
    label_names: list | None = _f(None, "classification: label words, index = label id (default: from the data)")
    max_train_samples: int | None = _f(1000, "cap on training examples (null: all)")
    max_eval_samples: int | None = _f(200, "cap on validation and test examples each (null: all)")
    max_source_length: int = _f(512, "tokens kept of the input (source, text, or LM block size)")
    max_target_length: int = _f(64, "tokens kept of the target; also max_new_tokens when generating")
    lm_stride: int | None = _f(None, "language modelling: evaluation stride in tokens (default: half the block)")
    validation_fraction: float = _f(0.1, "share of train carved out as validation when the dataset has none")
    test_fraction: float = _f(0.1, "share of train carved out as test when the dataset has none")
    seed: int = _f(
        0,
        "seed of carved splits and sample caps; fixed across train.seed, so every seed and method "
        "sees the same examples",
    )


@dataclass
class MethodArgs:
    """``name`` picks the method; every other key is passed to its peft config (``r``, ``lora_alpha``,
    ``target_modules``, ``lora_dropout``, ...) and validated against that config's fields."""

    name: str = _f(
        "",
        "none | full | lora | ia3 | dora | rslora | pissa | olora | loftq | qlora | loha | lokr | "
        "vera | adalora | prompt_tuning | prefix_tuning | p_tuning | any peft method type "
        "(peftbench list --methods); '-' or '_'",
    )
    options: dict = _f({}, "peft config options; in YAML and --set written as method.<option>")
    peft_config: str = _f(
        "",
        "a peft adapter_config.json (peft's method_comparison experiments, a saved adapter): its method and options, "
        "options given beside it winning; keys this peft lacks are dropped with a warning",
    )

    def __post_init__(self):
        if isinstance(self.name, str):  # one spelling downstream
            self.name = method_name(self.name)


@dataclass
class TrainArgs:
    max_steps: int = _f(100, "optimizer steps; -1: use epochs")
    epochs: float = _f(1.0, "passes over the training set when max_steps is -1")
    batch_size: int = _f(8, "examples per device per micro-batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    learning_rate: float | list | None = _f(
        None,
        "peak learning rate, or a list to sweep (the value with the best "
        "validation quality is selected); null: the method's default",
    )
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_ratio: float = _f(0.1, "share of the steps with linear warm-up")
    lr_scheduler: str = _f("linear", "transformers scheduler name: linear | cosine | constant_with_warmup | ...")
    max_grad_norm: float = _f(1.0, "gradient clipping; 0 disables")
    eval_steps: int = _f(0, "evaluate quality every N steps (0: only after training)")
    eval_samples: int | None = _f(
        None, "examples of the periodic evaluations, a seeded sample stratified by label (null: all validation)"
    )
    log_steps: int | None = _f(
        None,
        "record the loss every N steps (each read waits for the device); null: every step on CPU, every 10 on GPUs",
    )
    seed: int = _f(42, "seed of adapter init, data order and dropout; a suite's seeds: [1, 2, 3] runs one per seed")
    mixed_precision: str = _f("auto", "auto (bf16 on GPUs that support it) | no | bf16 | fp16")
    compile: str = _f(
        "auto",
        "torch.compile the training forward: auto (on with CUDA) | on | off | model (one "
        "graph) | regions (one graph per repeated block; on picks it when lengths vary)",
    )
    cuda_graphs: str = _f(
        "auto",
        "the compiled training graphs replayed as CUDA graphs (torch.compile's reduce-overhead: a graph's kernels "
        "in one launch): auto (with CUDA, for compiled blocks of fixed shapes on one process, without "
        "gradient accumulation; not over a whole-model graph; where a padded step is host-bound, about 10 TFLOP "
        "on an H200, the eager step recorded as one CUDA graph instead of compiling) | on (also a whole-model "
        "graph; where nothing is compiled, the eager step recorded, every batch padded to one shape) | off",
    )
    cudnn_attention: str = _f(
        "auto",
        "cuDNN's kernels for the training's attention (PyTorch's scaled_dot_product_attention picks them on recent "
        "GPUs): auto (off with CUDA where batch shapes vary: cuDNN builds a plan on the host per shape; else torch's "
        "choice) | on (torch's choice) | off (flash or memory-efficient kernels)",
    )
    eval_generation: str = _f(
        "auto",
        "evaluation's generation (summaries): auto (static KV cache and the decoding step compiled as CUDA graphs, "
        "with CUDA where the run decodes enough steps to repay compiling; else eager) | on | static (static cache, "
        "eager) | off (transformers' dynamic cache). Periodic evaluations between training steps stay eager",
    )
    fused_optimizer: str = _f("auto", "fused AdamW kernel: auto (on with CUDA) | on | off")
    fused_loss: str = _f(
        "auto",
        "causal LMs: linear + cross-entropy fused so the vocabulary-sized logits are never "
        "materialised, over the labelled positions only: auto (with CUDA: liger when "
        "installed, else chunked; on CPU: chunked) | on (liger or chunked) | liger | chunked | off",
    )
    packing: str = _f(
        "auto",
        "a batch's examples packed into rows without padding (causal LMs: one row, position ids "
        "restart per example; encoder-decoders: segment masks): auto (on with CUDA for causal "
        "LMs; off for encoder-decoders, whose longer packed rows were slower) | on | off",
    )
    group_by_length: str = _f(
        "auto",
        "padded batches of examples with close lengths (batches shuffled each epoch), for "
        "compute-bound runs: auto (off: on an H200 t5-base was host-bound and slower with a new "
        "batch shape every step) | on | off",
    )
    dataloader_workers: int | None = _f(
        None, "data loader worker processes (null: 2 with CUDA for examples of varying length, else 0)"
    )
    distributed: str = _f(
        "auto",
        "several processes (--gpus N, accelerate launch): ddp (a whole model per GPU) | "
        "fsdp (weights, gradients and optimizer states sharded; FSDP2) | auto (ddp)",
    )
    gradient_checkpointing: bool = _f(
        False, "recompute each block's activations in the backward pass: less memory, about a third more compute"
    )
    search: dict | None = _f(
        None,
        "an equal tuning budget per method (Optuna): {trials: N, sampler: tpe | random | grid, space: auto | "
        "{section.field: [values] | {low, high, log}}, seed: 0, startup: N/4, prune: false (median rule), "
        "keep: selected | all (adapters kept)}; auto: the method's own space "
        "(learning rate for all, rank/alpha/init for LoRA, tokens/init for prompt methods); trial 0 is the "
        "configured default; selected on validation; null: no search",
    )


@dataclass
class MeasureArgs:
    warmup: int = _f(3, "untimed iterations before timing")
    iterations: int = _f(20, "timed iterations at least")
    min_seconds: float = _f(1.0, "timed seconds at least (iterations continue until both are met)")
    batch_size: int = _f(1, "batch of the latency scenarios")
    large_batch_size: int = _f(8, "second batch for throughput at a larger batch (0: skip)")
    seq_len: int = _f(128, "input tokens of the latency scenarios")
    decoder_len: int | None = _f(None, "seq2seq forward: decoder tokens (default: seq_len)")
    new_tokens: int = _f(16, "generated tokens (min_new_tokens == max_new_tokens)")
    generate: bool = _f(True, "measure generation (time to first token, per-token time)")
    merged: bool = _f(True, "also measure the merged model where the method can merge")
    dtype: str = _f(
        "auto", "inference dtype: auto (bf16 on GPUs that support it, else fp32) | float32 | bfloat16 | float16"
    )
    enabled: bool = _f(True, "measure inference at all")
    optimized: str = _f(
        "auto",
        "also measure generation with a static KV cache (static) and a compiled forward "
        "(compile): auto (compile with CUDA, off on CPU) | static | compile | off",
    )
    stage: str = _f(
        "auto",
        "on: time the (model, task) group's candidates together after training, interleaved in rounds "
        "(measurements/<group>.json; comparisons paired round by round) | off: each run times itself | "
        "auto: on where a suite's group holds two runs or more",
    )
    rounds: int = _f(8, "stage: rounds; every candidate is timed once per round, in a shuffled order")
    block_iterations: int = _f(2, "stage: timed calls per candidate, scenario and round")
    targets: list[str] = _f(
        ["torch"],
        "where the models will run, each timed and re-scored in the stage: torch (the training device) | cpu | "
        "onnx | onnx-int8 | onnx-int4 | gpu-int8 | gpu-int4 | gguf-q8_0 | gguf-q4_k_m",
    )
    cpu_threads: int = _f(4, "threads of the CPU targets (at most the usable cores)")
    forgetting: dict | None = _f(
        {"spec": "auto", "samples": 32, "tokens": 128},
        "what training costs on general text: the mean NLL increase per token over `samples` windows of "
        "`tokens` tokens of `spec` (builtin:NAME | file:PATH | hf:NAME), base before against trained after; "
        "spec auto: builtin:moby-dick for pretrained models (builtin:sotu when the task's data is Moby-Dick), "
        "off for random weights; null or spec off: not measured",
    )


@dataclass
class Experiment:
    id: str
    model: ModelArgs
    data: DataArgs
    method: MethodArgs
    train: TrainArgs
    measure: MeasureArgs
    description: str = ""
    seeds: list[int] | None = None  # run once per seed (train.seed); None: once, with train.seed

    def to_dict(self) -> dict:
        """The sections as one plain dict (method options flattened next to ``name``)."""
        d = {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}
        options = d["method"].pop("options")
        if not d["method"]["peft_config"]:  # expanded by the plan (or never set): not part of the config's identity
            del d["method"]["peft_config"]
        d["method"].update(options)
        return {"id": self.id, "description": self.description, **d}


def config_hash(exp: Experiment) -> str:
    """Identity of a run's numbers: a hash of every section (not the id or description).

    A result is reused only when both its id and this hash match; anything that changes the
    numbers (a step count, a seed, a learning rate, a measure setting) changes the hash.
    """
    return hash_of(exp.to_dict())


def hash_of(config: dict) -> str:
    """``config_hash`` of a config as stored in a result (``Experiment.to_dict()``)."""
    d = {k: v for k, v in config.items() if k not in ("id", "description")}
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Suite:
    name: str
    experiments: list[Experiment]
    description: str = ""
    path: str | None = None
    log_with: list[str] = field(default_factory=list)  # experiment trackers (peftbench.run.tracking)
    plan_seconds: float = 0.0  # how long reading and checking the suite took (each run's `plan` phase: a share)


SECTION_TYPES = {"model": ModelArgs, "data": DataArgs, "method": MethodArgs, "train": TrainArgs, "measure": MeasureArgs}


def help_text() -> str:
    """Every config field with its type, default and help (``peftbench run --help-config``)."""
    lines = []
    for section, cls in SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{section}.{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- typed construction


def _build_section(section: str, raw: Any, errors: list[str]) -> Any:
    cls = SECTION_TYPES[section]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{section}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict = {}
    if section == "method":
        raw = dict(raw)
        options = raw.pop("options", None) or {}
        if not isinstance(options, dict):
            errors.append(f"method.options: expected a mapping of peft options, got {options!r}")
            options = {}
        options = dict(options)
        for k in list(raw):
            if k not in ("name", "peft_config"):
                options[k] = raw.pop(k)
        raw["options"] = {str(k): v for k, v in options.items()}
    for key, value in raw.items():
        if key not in names:
            errors.append(f"{section}.{key}: unknown key (known: {', '.join(sorted(names))})")
            continue
        numeric = fits(1.5, hints[key]) and not fits("", hints[key])
        if numeric and isinstance(value, list):
            value = [as_float(v) for v in value]
            if not value or not all(isinstance(v, float) for v in value):
                errors.append(f"{section}.{key}: expected a number or a non-empty list of numbers, got {value!r}")
                continue
        elif numeric and isinstance(value, (str, int)) and not isinstance(value, bool):
            value = as_float(value)
        elif key in ON_OFF_FIELDS and isinstance(value, bool):  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        elif key == "mixed_precision" and value is False:  # ... and no as false
            value = "no"
        if not fits(value, hints[key]):
            errors.append(f"{section}.{key}: expected {type_name(hints[key])}, got {value!r}")
            continue
        kwargs[key] = value
    return cls(**kwargs)


def experiment_id(d: dict) -> str:
    """A readable id from model, task and method: ``random-gpt2--summarization--lora``."""
    model = str(_get(d, "model", "spec") or "model").rstrip("/").split("/")[-1]
    model = model.replace(":", "-")
    task = _get(d, "data", "task") or "task"
    method = method_name(_get(d, "method", "name") or peft_file_method(_get(d, "method", "peft_config")) or "method")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}--{task}--{method}")


def read_peft_file(path: str) -> dict:
    """A peft adapter_config.json as a dict (OSError, ValueError as they come)."""
    doc = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def peft_type_method(doc: dict) -> str | None:
    """The method a peft config names: its ``peft_type``, lower-cased (``LORA`` -> lora), or None."""
    kind = doc.get("peft_type")
    return kind.lower() if isinstance(kind, str) else None


def peft_file_method(path) -> str | None:
    """The method a peft adapter_config.json names, or None (no such file, not a peft config)."""
    if not isinstance(path, str) or not path:
        return None
    try:
        return peft_type_method(read_peft_file(path))
    except (OSError, ValueError):
        return None


def _get(d: dict, section: str, key: str) -> Any:
    sec = d.get(section)
    return sec.get(key) if isinstance(sec, dict) else None


def _seeds(value: Any, where: str, errors: list[str]) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        errors.append(f"{where}: expected a non-empty list of integers, got {value!r}")
        return None
    if len(set(value)) != len(value):
        errors.append(f"{where}: seeds repeat ({value})")
        return None
    return list(value)


def build_experiment(d: dict, *, errors: list[str]) -> Experiment:
    """A raw dict (sections + optional id/description/seeds) -> Experiment; problems appended."""
    known = set(SECTIONS) | {"id", "description", "seeds"}
    for key in d:
        if key not in known:
            errors.append(f"{key}: unknown key (known: {', '.join(sorted(known))})")
    sections = {s: _build_section(s, d.get(s), errors) for s in SECTIONS}
    exp_id = d.get("id") or experiment_id(d)
    if not isinstance(exp_id, str) or not ID_RE.fullmatch(exp_id):
        errors.append(f"id: {exp_id!r} must be letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    elif len(exp_id) > MAX_ID_LENGTH:
        errors.append(f"id: {exp_id[:40]!r}... is {len(exp_id)} characters (at most {MAX_ID_LENGTH})")
    return Experiment(
        id=str(exp_id),
        description=str(d.get("description", "")),
        seeds=_seeds(d.get("seeds"), f"{exp_id}: seeds", errors),
        **sections,
    )


def check_numbers(exp: Experiment) -> list[str]:
    """Every float field finite (YAML reads .nan / .inf and --set accepts them), every integer within
    what Python's sizes hold (``sys.maxsize``), every seed within numpy's and torch's range."""
    problems = []
    sections = [(s, getattr(exp, s)) for s in SECTIONS]
    fields = [(s, f.name, getattr(obj, f.name)) for s, obj in sections for f in dataclasses.fields(obj)]
    fields = [(s, k, v) for s, k, v in fields if (s, k) != ("method", "options")] + [
        ("method", k, v)
        for k, v in exp.method.options.items()  # each option by its own name
    ]
    for section, key, v in fields:
        values = v if isinstance(v, list) else [v]
        if key == "seed" and section != "method":
            problems += seed_problems([v], f"{section}.seed")
        elif any(isinstance(x, float) and not math.isfinite(x) for x in values):
            problems.append(f"{section}.{key}: must be a finite number, got {v!r}")
        elif any(_is_int(x) and abs(x) > sys.maxsize for x in values):
            problems.append(f"{section}.{key}: {_short(v)} is past the largest size ({sys.maxsize})")
    return problems + seed_problems(exp.seeds or [], "seeds")


def seed_problems(seeds: list, where: str) -> list[str]:
    """Seeds outside ``[0, 2**32)``: numpy refuses them, and torch's generators take 64 bits at most."""
    bad = [s for s in seeds if _is_int(s) and not 0 <= s <= MAX_SEED]
    return [f"{where}: {_short(bad[0])} is outside 0..{MAX_SEED} (numpy's and torch's seed range)"] if bad else []


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
