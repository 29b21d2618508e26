"""Typed experiment configuration: dataclasses, YAML suites, ``--set`` overrides, validation.

Usage:
    suite = load_suite("experiments/demo.yaml", overrides=["train.max_steps=5"])
    exp = single_experiment(model="random:gpt2", method="lora", task="summarization",
                            dataset="builtin:spam-subjects", overrides=["method.r=16"])

A suite file has ``name``, ``defaults`` (sections shared by every experiment), and either
``experiments`` (a list of per-experiment overrides) or ``matrix`` (axes expanded as a cartesian
product: ``section.field: [values]``, ``section: [mappings]``, or ``any_name: [partial experiments]``),
or both. Every problem found is reported at
once, in one line, as a ``ConfigError``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftbench.errors import ConfigError

SECTIONS = ("model", "data", "method", "train", "measure")
SUITE_KEYS = ("name", "description", "defaults", "experiments", "matrix")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field whose help text documents it (and becomes ``peftbench list --fields``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelArgs:
    spec: str = _f("", "model spec: hub id or local dir, random:NAME, builtin:NAME")
    family: str | None = _f(None, "causal | seq2seq; filled in after loading")
    tokenizer: str | None = _f(None, "tokenizer spec; default: the model's own (random: models pick one)")
    dtype: str = _f("auto", "weights dtype: auto (fp32 on CPU, bf16 on GPUs that support it) | float32 | bfloat16 | float16")
    trust_remote_code: bool = _f(False, "allow code from the model repository (off by default)")
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


@dataclass
class MethodArgs:
    """``name`` picks the method; every other key is passed to its peft config (``r``, ``lora_alpha``,
    ``target_modules``, ``lora_dropout``, ...) and validated against that config's fields."""

    name: str = _f("", "none | full | lora | ia3 | dora | loha | lokr | vera | adalora")
    options: dict = _f({}, "peft config options; in YAML and --set written as method.<option>")


@dataclass
class TrainArgs:
    max_steps: int = _f(100, "optimizer steps; -1: use epochs")
    epochs: float = _f(1.0, "passes over the training set when max_steps is -1")
    batch_size: int = _f(8, "examples per device per micro-batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    learning_rate: float | None = _f(None, "peak learning rate; null: the method's default (full 5e-5, lora 2e-4, ia3 1e-3)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_ratio: float = _f(0.1, "share of the steps with linear warm-up")
    lr_scheduler: str = _f("linear", "transformers scheduler name: linear | cosine | constant_with_warmup | ...")
    max_grad_norm: float = _f(1.0, "gradient clipping; 0 disables")
    eval_steps: int = _f(0, "evaluate quality every N steps (0: only after training)")
    eval_samples: int | None = _f(None, "examples used by the periodic evaluations (null: all validation)")
    log_steps: int = _f(1, "record the loss every N steps")
    seed: int = _f(42, "seed for weights of random: models, data order, adapters")
    mixed_precision: str = _f("auto", "auto (bf16 on GPUs that support it) | no | bf16 | fp16")


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
    dtype: str = _f("auto", "inference dtype: auto (bf16 on GPUs that support it, else fp32) | float32 | bfloat16 | float16")
    enabled: bool = _f(True, "measure inference at all")


@dataclass
class Experiment:
    id: str
    model: ModelArgs
    data: DataArgs
    method: MethodArgs
    train: TrainArgs
    measure: MeasureArgs
    description: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        options = d["method"].pop("options")
        d["method"].update(options)
        return d


@dataclass
class Suite:
    name: str
    experiments: list[Experiment]
    description: str = ""
    path: str | None = None


SECTION_TYPES = {"model": ModelArgs, "data": DataArgs, "method": MethodArgs,
                 "train": TrainArgs, "measure": MeasureArgs}


def help_text() -> str:
    """Every config field with its type, default and help (``peftbench run --help-config``)."""
    lines = []
    for section, cls in SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{section}.{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- merging and overrides

def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "fields":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(items: list[str] | None) -> dict:
    """``["train.max_steps=5", "method.target_modules=[q,v]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        parts = key.strip().split(".")
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise ConfigError(f"--set {item!r}: key must be section.field with section one of {', '.join(SECTIONS)}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


# ---------------------------------------------------------------- typed construction

def _type_ok(value: Any, annotation: Any) -> bool:
    if value is None:
        return _allows_none(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args if a is not type(None))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool, dict, list):
        return isinstance(value, annotation)
    return True


def _allows_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


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
        options = dict(raw.pop("options", {}) or {})
        for k in list(raw):
            if k != "name":
                options[k] = raw.pop(k)
        raw["options"] = options
    for key, value in raw.items():
        if key not in names:
            errors.append(f"{section}.{key}: unknown key (known: {', '.join(sorted(names))})")
            continue
        if isinstance(value, str) and _type_ok(1.0, hints[key]) and not _type_ok("", hints[key]):
            try:  # YAML 1.1 reads "1e-3" as a string
                value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, hints[key]):
            errors.append(f"{section}.{key}: expected {_type_name(hints[key])}, got {value!r}")
            continue
        if _type_ok(1.5, hints[key]) and not _type_ok("", hints[key]) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def experiment_id(d: dict) -> str:
    """A readable id from model, task and method: ``random-gpt2--summarization--lora``."""
    model = str(d.get("model", {}).get("spec", "model")).rstrip("/").split("/")[-1]
    model = model.replace(":", "-")
    task = d.get("data", {}).get("task", "task")
    method = d.get("method", {}).get("name", "method")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}--{task}--{method}")


def build_experiment(d: dict, *, errors: list[str]) -> Experiment:
    """A raw dict (sections + optional id/description) -> Experiment; problems appended to errors."""
    known = set(SECTIONS) | {"id", "description"}
    for key in d:
        if key not in known:
            errors.append(f"{key}: unknown key (known: {', '.join(sorted(known))})")
    sections = {s: _build_section(s, d.get(s), errors) for s in SECTIONS}
    exp_id = d.get("id") or experiment_id(d)
    if not isinstance(exp_id, str) or not ID_RE.match(exp_id):
        errors.append(f"id: {exp_id!r} must be letters, digits, '.', '_' or '-'")
    return Experiment(id=str(exp_id), description=str(d.get("description", "")), **sections)


# ---------------------------------------------------------------- validation

def validate(exp: Experiment, errors: list[str]) -> None:
    """Impossible values and unknown specs; appends ``"<id>: problem"`` lines to errors."""
    from peftbench import data, methods, models, tasks  # registries; imported late (torch)

    p = f"{exp.id}: " if exp.id else ""
    problems: list[str] = []
    problems += models.check_spec(exp.model.spec)
    if exp.model.tokenizer:
        problems += models.check_tokenizer_spec(exp.model.tokenizer)
    if exp.model.family not in (None, "causal", "seq2seq"):
        problems.append(f"model.family: {exp.model.family!r} is not causal or seq2seq")
    if exp.model.dtype not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"model.dtype: {exp.model.dtype!r} is not auto, float32, bfloat16 or float16")
    problems += data.check_spec(exp.data.spec)
    if exp.data.task not in tasks.TASKS:
        problems.append(f"data.task: unknown task {exp.data.task!r} (known: {', '.join(tasks.TASKS)})")
    problems += methods.check(exp.method.name, exp.method.options)
    positive = {
        "data.max_source_length": exp.data.max_source_length, "data.max_target_length": exp.data.max_target_length,
        "train.batch_size": exp.train.batch_size, "train.gradient_accumulation_steps": exp.train.gradient_accumulation_steps,
        "train.log_steps": exp.train.log_steps, "measure.iterations": exp.measure.iterations,
        "measure.batch_size": exp.measure.batch_size, "measure.seq_len": exp.measure.seq_len,
        "measure.new_tokens": exp.measure.new_tokens,
    }
    for key, value in positive.items():
        if value <= 0:
            problems.append(f"{key}: must be > 0, got {value}")
    for key, value in {"data.max_train_samples": exp.data.max_train_samples,
                       "data.max_eval_samples": exp.data.max_eval_samples,
                       "train.eval_samples": exp.train.eval_samples}.items():
        if value is not None and value <= 0:
            problems.append(f"{key}: must be > 0 or null, got {value}")
    if exp.train.max_steps == 0 or exp.train.max_steps < -1:
        problems.append(f"train.max_steps: must be > 0 or -1 (epochs), got {exp.train.max_steps}")
    if exp.train.max_steps == -1 and exp.train.epochs <= 0:
        problems.append(f"train.epochs: must be > 0, got {exp.train.epochs}")
    if exp.train.learning_rate is not None and exp.train.learning_rate <= 0:
        problems.append(f"train.learning_rate: must be > 0, got {exp.train.learning_rate}")
    if not 0 <= exp.train.warmup_ratio < 1:
        problems.append(f"train.warmup_ratio: must be in [0, 1), got {exp.train.warmup_ratio}")
    for key in ("validation_fraction", "test_fraction"):
        v = getattr(exp.data, key)
        if not 0 < v < 0.5:
            problems.append(f"data.{key}: must be in (0, 0.5), got {v}")
    if exp.train.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        problems.append(f"train.mixed_precision: {exp.train.mixed_precision!r} is not auto, no, bf16 or fp16")
    for key in ("warmup", "eval_steps"):
        obj = exp.measure if key == "warmup" else exp.train
        if getattr(obj, key) < 0:
            problems.append(f"{'measure' if key == 'warmup' else 'train'}.{key}: must be >= 0")
    if exp.measure.dtype not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"measure.dtype: {exp.measure.dtype!r} is not auto, float32, bfloat16 or float16")
    if exp.measure.min_seconds < 0 or exp.measure.large_batch_size < 0:
        problems.append("measure.min_seconds and measure.large_batch_size must be >= 0")
    errors.extend(p + m for m in problems)


def _raise(errors: list[str]) -> None:
    if errors:
        shown = errors[:8]
        more = f" (+{len(errors) - 8} more)" if len(errors) > 8 else ""
        raise ConfigError("; ".join(shown) + more)


# ---------------------------------------------------------------- suites

def expand_matrix(matrix: dict, errors: list[str]) -> list[dict]:
    """``{"model.spec": [a, b], "data": [{...}, {...}]}`` -> one override dict per combination."""
    if not isinstance(matrix, dict) or not matrix:
        errors.append("matrix: expected a non-empty mapping of key -> list of values")
        return []
    axes = []
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            errors.append(f"matrix.{key}: expected a non-empty list")
            return []
        axes.append([(key, v) for v in values])
    combos = []
    for combo in itertools.product(*axes):
        d: dict = {}
        for key, value in combo:
            section, _, name = str(key).partition(".")
            if section not in SECTIONS:  # a named axis whose values are partial experiments
                if not isinstance(value, dict):
                    errors.append(f"matrix.{key}: an axis that is not section[.field] takes mappings of sections")
                    return []
                d = deep_merge(d, value)
            elif name:
                d = deep_merge(d, {section: {name: value}})
            elif isinstance(value, dict):
                d = deep_merge(d, {section: value})
            else:
                errors.append(f"matrix.{key}: values of a whole section must be mappings")
                return []
        combos.append(d)
    return combos


def suite_from_dict(raw: Any, *, name: str, overrides: list[str] | None = None, path: str | None = None) -> Suite:
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or name}: a suite must be a mapping with defaults and experiments/matrix")
    for key in raw:
        if key not in SUITE_KEYS:
            errors.append(f"{key}: unknown suite key (known: {', '.join(SUITE_KEYS)})")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        errors.append("defaults: expected a mapping of sections")
        defaults = {}
    entries: list[dict] = []
    if "matrix" in raw:
        entries += expand_matrix(raw["matrix"], errors)
    exps = raw.get("experiments") or []
    if not isinstance(exps, list):
        errors.append("experiments: expected a list")
        exps = []
    for i, e in enumerate(exps):
        if not isinstance(e, dict):
            errors.append(f"experiments[{i}]: expected a mapping")
        else:
            entries.append(e)
    if not entries and not errors:
        errors.append("the suite has no experiments (add 'experiments' or 'matrix')")
    set_over = parse_set(overrides)
    experiments = []
    for e in entries:
        merged = deep_merge(deep_merge(defaults, e), set_over)
        experiments.append(build_experiment(merged, errors=errors))
    _raise(errors)
    seen: set[str] = set()
    for exp in experiments:
        if exp.id in seen:
            errors.append(f"{exp.id}: duplicate experiment id (give one an explicit id)")
        seen.add(exp.id)
        validate(exp, errors)
    _raise(errors)
    return Suite(name=str(raw.get("name") or name), experiments=experiments,
                 description=str(raw.get("description", "")), path=path)


def find_suite(name_or_path: str) -> Path:
    """A YAML path, or a built-in suite name (``demo``, ``seed``) looked up in ``experiments/``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"suite file {name_or_path!r} not found")
        return p
    candidates = [Path.cwd() / "experiments" / f"{name_or_path}.yaml",
                  Path(__file__).resolve().parents[2] / "experiments" / f"{name_or_path}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"unknown suite {name_or_path!r}: not a .yaml file and not a built-in suite (demo, seed)")


def load_suite(name_or_path: str, *, overrides: list[str] | None = None) -> Suite:
    path = find_suite(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    return suite_from_dict(raw, name=path.stem, overrides=overrides, path=str(path))


def single_experiment(*, model: str, method: str, task: str, dataset: str,
                      overrides: list[str] | None = None, exp_id: str | None = None) -> Suite:
    raw = {"model": {"spec": model}, "method": {"name": method}, "data": {"spec": dataset, "task": task}}
    if exp_id:
        raw["id"] = exp_id
    return suite_from_dict({"experiments": [raw]}, name="single", overrides=overrides)


def experiment_from_dict(d: dict) -> Experiment:
    """Rebuild an Experiment from a result's ``config`` (e.g. to rerun it)."""
    errors: list[str] = []
    exp = build_experiment(d, errors=errors)
    _raise(errors)
    return exp
