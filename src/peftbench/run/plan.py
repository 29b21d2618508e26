"""The plan: suite YAML -> validated experiments -> runs (one per seed and learning rate).

Usage:
    suite = load_suite("demo", overrides=["train.max_steps=5"], seeds=[1, 2])
    for run in plan_runs(suite): run.run_id, run.config_hash, run.exp

Every check happens here, before anything loads or trains, and every problem is collected into
one ``ConfigError`` line: specs, method options (types and ranges, by the peft config), finite
numbers, lengths within the model's positions, the data file (readable, UTF-8, rows, fields,
labels), the model folder (safetensors, no custom code unless allowed), ids and suite names.
This module sits above ``config`` (the schema) and ``models``/``data``/``methods`` (the specs),
so imports point one way.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import importlib.util
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from peftbench import fs, results
from peftbench.catalog import data, forgetting, methods, models, peftfiles
from peftbench.catalog.methodspecs import LOFTQ_BITS, LOFTQ_DEFAULT_BITS
from peftbench.catalog.taskspecs import SPECS
from peftbench.errors import ConfigError
from peftbench.run import search, tracking
from peftbench.spec import strictyaml
from peftbench.spec.config import (
    COMPILE_CHOICES,
    DISTRIBUTED_CHOICES,
    DTYPE_CHOICES,
    EVAL_GENERATION_CHOICES,
    FUSED_LOSS_CHOICES,
    OPTIMIZED_CHOICES,
    QUANTIZATION_CHOICES,
    SWITCH_CHOICES,
    Experiment,
    Suite,
    check_numbers,
    config_hash,
)
from peftbench.spec.suites import experiments_from_raw

SHOWN_ERRORS = 8  # problems listed in the one-line message; the rest are counted
MIN_FREE_BYTES = 16 * 2**20  # free space --out needs before anything runs (a full disk fails later, mid-run)


@dataclass
class Run:
    """One training run: an experiment with one seed and one learning rate."""

    exp: Experiment  # concrete: train.seed and train.learning_rate are single values
    experiment_id: str
    run_id: str  # the result file's name: <id>[--lr<rate>][--seed<n>]
    seed: int
    sweep: bool  # one of several learning rates of a sweep, or a trial of a search (validation quality is scored)
    config_hash: str  # a search's slot: "" until its trial is asked (run.search.Study.concrete)
    trial: int | None = None  # the trial of a search (train.search) this run belongs to
    trial_params: dict | None = None  # the trial's values of the searched keys, once asked
    trial_default: bool = False  # trial 0: the experiment as configured, the default the tuned result faces
    prune: dict | None = None  # {key, better, thresholds: {step: median of earlier trials}} (train.search.prune)


def _rate(lr: float) -> str:
    return f"{lr:g}".replace("+", "")


def runs_of(exp: Experiment) -> list[Run]:
    """The runs an experiment expands to: its seeds x its learning rates (methods that do not
    train take neither). A rate left unset is the method's default, and the model's family is the
    spec's where it is known without loading: both are written into the run's config here, so the
    hash, the stored config and the training all read the one value."""
    method = methods.lookup(exp.method.name)
    trains = method.trains if method else True
    lrs = exp.train.learning_rate if isinstance(exp.train.learning_rate, list) else [exp.train.learning_rate]
    if not trains:
        lrs = [None]
    elif lrs == [None] and method is not None:
        lrs = [method.learning_rate]
    seeds = exp.seeds or [exp.train.seed]
    filled = _filled(exp)
    if filled.train.search is not None:
        return _slots(filled, seeds)
    out = []
    for lr in lrs:
        for seed in seeds:
            e = copy.deepcopy(filled)  # what _filled writes does not depend on the rate or the seed
            e.train.learning_rate, e.train.seed, e.seeds = lr, seed, None
            run_id = exp.id + (f"--lr{_rate(lr)}" if len(lrs) > 1 else "") + (f"--seed{seed}" if exp.seeds else "")
            out.append(Run(e, exp.id, run_id, seed, len(lrs) > 1, config_hash(e)))
    return out


def _filled(exp: Experiment) -> Experiment:
    """What the plan writes into a run's config before hashing: the model's family where the spec says it,
    the method's implied quantisation, the forgetting probe resolved, a search's defaults."""
    method = methods.lookup(exp.method.name)
    e = copy.deepcopy(exp)
    e.model.family = e.model.family or models.family_of_spec(e.model.spec)
    e.model.quantization = e.model.quantization or (method.quantization if method else None)
    e.measure.forgetting = forgetting.resolve(e.measure.forgetting, model_spec=e.model.spec, task_data=e.data.spec)
    trains = method.trains if method else True
    e.train.search = search.resolve(e.train.search, method=e.method.name) if trains else None
    return e


def _slots(exp: Experiment, seeds: list[int]) -> list[Run]:
    """A search's runs (``exp`` as ``_filled`` leaves it), trial by seed: each slot's configuration is asked when
    its turn comes."""
    method = methods.lookup(exp.method.name)
    out = []
    for k in range(exp.train.search["trials"]):
        for seed in seeds:
            e = copy.deepcopy(exp)
            e.train.seed, e.seeds = seed, None
            if e.train.learning_rate is None and method is not None:  # the rate trial 0 starts from
                e.train.learning_rate = method.learning_rate
            run_id = f"{exp.id}--trial{k}" + (f"--seed{seed}" if exp.seeds else "")
            out.append(Run(e, exp.id, run_id, seed, True, "", trial=k))
    return out


def plan_runs(suite: Suite) -> list[Run]:
    return _staged([run for exp in suite.experiments for run in runs_of(exp)])


def _staged(runs: list[Run]) -> list[Run]:
    """``measure.stage: auto`` resolved: on where the run's group (``results.measurement_group``) holds
    two runs or more, so the suite's comparisons are timed together, or where it names a deployment target
    (the stage builds them); off for a run alone, which times itself. Written into the config before
    hashing, as the other defaults are."""

    def group(run: Run) -> str | None:
        d = run.exp.to_dict()
        d["measure"]["stage"] = "on"
        return results.measurement_group(d)

    auto = [r for r in runs if r.exp.measure.stage == "auto"]
    # a search's trials are one candidate per seed in the stage (only its selected trial is timed there)
    sizes = collections.Counter(
        group(r) for r in {(r.experiment_id, r.seed) if r.trial is not None else id(r): r for r in auto}.values()
    )
    out = []
    for r in runs:
        if r.exp.measure.stage == "auto":
            g = group(r)
            deploys = any(t != "torch" for t in r.exp.measure.targets)
            r.exp.measure.stage = "on" if g is not None and (sizes[g] >= 2 or deploys) else "off"
            r = dataclasses.replace(r, config_hash=config_hash(r.exp) if r.trial is None else "")
        out.append(r)
    return out


# ---------------------------------------------------------------- validation


def _targets(exp: Experiment) -> list[str]:
    """``measure.targets``: known names, their extras installed (a source-built one is skipped instead), and
    a stage to build them in."""
    from peftbench.deploy.targets import TARGETS, missing_extra

    m = exp.measure
    if not isinstance(m.targets, list) or not all(isinstance(t, str) for t in m.targets):
        return [f"measure.targets: a list of target names, got {m.targets!r}"]
    unknown = [t for t in m.targets if t not in TARGETS]
    if unknown:
        return [f"measure.targets: unknown {', '.join(map(repr, unknown))} (known: {', '.join(TARGETS)})"]
    problems = [f"measure.targets: {t!r} named twice" for t in dict.fromkeys(m.targets) if m.targets.count(t) > 1]
    problems += [p for t in dict.fromkeys(m.targets) if not TARGETS[t].skip_when_missing and (p := missing_extra(t))]
    if any(t != "torch" for t in m.targets):
        if not m.enabled:
            problems.append("measure.targets: deployment targets are measured; measure.enabled is false")
        elif m.stage == "off":
            problems.append("measure.targets: deployment targets are built in the stage; measure.stage is off")
        elif exp.model.quantization:
            problems.append("measure.targets: a quantised base (model.quantization) has no deployment targets yet")
        elif not m.merged:
            problems.append("measure.targets: deployment targets ship the merged model; measure.merged is false")
    if m.cpu_threads < 1:
        problems.append(f"measure.cpu_threads: must be >= 1, got {m.cpu_threads}")
    return problems


def _forgetting(exp: Experiment) -> list[str]:
    """``measure.forgetting``: its keys and numbers, and a corpus spec the data layer knows."""
    setting = exp.measure.forgetting
    found = forgetting.problems(setting)
    spec = setting.get("spec", "auto") if isinstance(setting, dict) else None
    if not found and isinstance(spec, str) and spec not in ("auto", "off"):
        found += [f"measure.forgetting.spec: {p.removeprefix('data.spec: ')}" for p in data.check_spec(spec)]
    return found


def validate(exp: Experiment) -> list[str]:
    """Every problem of one experiment, each as ``"<id>: problem"``."""
    problems = check_numbers(exp)
    problems += models.check_spec(exp.model.spec, trust_remote_code=exp.model.trust_remote_code)
    if exp.model.tokenizer:
        problems += models.check_tokenizer_spec(exp.model.tokenizer)
    problems += _choices(exp)
    problems += _targets(exp)
    problems += _forgetting(exp)
    problems += search.problems(exp.train.search, exp)
    problems += data.check_spec(exp.data.spec)
    if exp.data.task not in SPECS:
        problems.append(f"data.task: unknown task {exp.data.task!r} (known: {', '.join(SPECS)})")
    problems += methods.check(exp.method.name, exp.method.options)
    problems += _ranges(exp)
    if not problems:  # lengths, data and the method's fit need a valid spec, task and method
        problems += _lengths(exp)
        problems += _applies(exp)
        known = models.family_of_spec(exp.model.spec)
        if exp.model.family and known and exp.model.family != known:
            problems.append(f"model.family: {exp.model.family}, but {exp.model.spec} is a {known} model")
        if exp.model.chat_template == "on" and models.has_chat_template(exp.model) is False:
            problems.append(f"model.chat_template: on, but the tokenizer of {exp.model.spec} has no chat template")
        if exp.data.spec.startswith("file:"):
            problems += data.check_file(exp.data)
    return [f"{exp.id}: {p}" for p in problems]


_APPLIES: dict[tuple, str | None] = {}


def _applies(exp: Experiment) -> list[str]:
    """The method tried on the model's architecture on the meta device (no weights): a method that
    cannot wrap its layers (LoHa on GPT-2's Conv1D) is an error now, not after loading."""
    method = methods.lookup(exp.method.name)
    if method is None or method.peft_type is None:
        return []
    key = (exp.model.spec, method.name, repr(sorted(exp.method.options.items())))
    if key not in _APPLIES:
        _APPLIES[key] = _probe(exp, method)
    why = _APPLIES[key]
    if why is None:
        return []
    return [
        f"method.name: {method.name} cannot apply to {exp.model.spec} ({why}); other target_modules or "
        f"another method may (peftbench list --methods shows what applies to which architecture)"
    ]


def _probe(exp: Experiment, method) -> str | None:
    """Why the method cannot wrap the model's architecture, or None; a probe that passed is kept across suites
    (``methods.passed``), keyed by the architecture when it is known without loading, and not built again."""
    config = models.known_config(exp.model.spec)
    good = methods.passed_key("probe", config, method.name, exp.method.options) if config else None
    if good and methods.passed(good):
        return None
    built = models.meta_model(exp.model.spec)
    why = methods.probe(method.name, exp.method.options, model=built[0], family=built[1]) if built else None
    if built and why is None and good:
        methods.remember_passed(good)
    return why


def _choices(exp: Experiment) -> list[str]:
    checks = [
        ("model.family", exp.model.family, (None, "causal", "seq2seq")),
        ("model.dtype", exp.model.dtype, DTYPE_CHOICES),
        ("measure.dtype", exp.measure.dtype, DTYPE_CHOICES),
        ("model.chat_template", exp.model.chat_template, ("auto", "on", "off")),
        ("train.mixed_precision", exp.train.mixed_precision, ("auto", "no", "bf16", "fp16")),
        ("train.compile", exp.train.compile, COMPILE_CHOICES),
        ("train.fused_optimizer", exp.train.fused_optimizer, SWITCH_CHOICES),
        ("train.fused_loss", exp.train.fused_loss, FUSED_LOSS_CHOICES),
        ("train.packing", exp.train.packing, SWITCH_CHOICES),
        ("train.cuda_graphs", exp.train.cuda_graphs, SWITCH_CHOICES),
        ("train.cudnn_attention", exp.train.cudnn_attention, SWITCH_CHOICES),
        ("train.eval_generation", exp.train.eval_generation, EVAL_GENERATION_CHOICES),
        ("train.group_by_length", exp.train.group_by_length, SWITCH_CHOICES),
        ("model.quantization", exp.model.quantization, QUANTIZATION_CHOICES),
        ("train.distributed", exp.train.distributed, DISTRIBUTED_CHOICES),
        ("measure.optimized", exp.measure.optimized, OPTIMIZED_CHOICES),
        ("measure.stage", exp.measure.stage, SWITCH_CHOICES),
    ]
    problems = [
        f"{key}: {value!r} is not one of {', '.join(str(c) for c in choices)}"
        for key, value, choices in checks
        if value not in choices
    ]
    method = methods.lookup(exp.method.name)
    if exp.model.quantization and method is not None and method.trains_base:
        problems.append(
            "model.quantization: full fine-tuning cannot train a quantised base; use an adapter method "
            "(lora, qlora, ...) or model.quantization: null"
        )
    bits = LOFTQ_BITS.get(exp.model.quantization)
    if (
        method is not None
        and method.init_before_quantization
        and bits
        and exp.method.options.get("bits", LOFTQ_DEFAULT_BITS) != bits
    ):
        problems.append(
            f"method.bits: LoftQ must be initialised for the base's quantisation ({exp.model.quantization}: "
            f"bits {bits}), got {exp.method.options.get('bits', 4)}"
        )
    if exp.train.distributed == "fsdp" and (exp.model.quantization or (method and method.quantization)):
        problems.append(
            "train.distributed: fsdp does not shard a quantised base here; use ddp (the base is "
            "small already) or an unquantised base"
        )
    if exp.train.lr_scheduler not in STEPPABLE and exp.train.lr_scheduler not in schedulers():
        problems.append(
            f"train.lr_scheduler: {str(exp.train.lr_scheduler)[:40]!r} is not a schedule these runs can step "
            f"(transformers' names that need no extra arguments: {', '.join(schedulers())})"
        )
    if exp.train.fused_loss == "liger" and importlib.util.find_spec("liger_kernel") is None:
        problems.append("train.fused_loss: liger needs liger-kernel (pip install 'peftbench[speed]'), or use chunked")
    return problems


# transformers' schedules that step with a step count alone, in every release peftbench supports: a suite naming
# one is checked without importing transformers' trainer utilities (which import torch, peft and torchao: 6.4 s of
# a one-run suite's 6.8 s of planning on the 2-core box); any other name is tried against transformers itself
STEPPABLE = frozenset(
    {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"}
)


@functools.cache
def schedulers() -> tuple[str, ...]:
    """transformers' scheduler names that the loop can build and step with a step count alone (others
    want a metric per step, as reduce_lr_on_plateau does, or arguments of their own): each one tried."""
    import torch
    from transformers import SchedulerType, get_scheduler

    ok = []
    for name in SchedulerType:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        try:
            scheduler = get_scheduler(name.value, optimizer=optimizer, num_warmup_steps=1, num_training_steps=4)
            optimizer.step()
            scheduler.step()
            ok.append(name.value)
        except (TypeError, ValueError):
            pass
    return tuple(ok)


def _ranges(exp: Experiment) -> list[str]:
    d, t, m = exp.data, exp.train, exp.measure
    problems = []
    positive = {
        "data.max_source_length": d.max_source_length,
        "data.max_target_length": d.max_target_length,
        "train.batch_size": t.batch_size,
        "train.gradient_accumulation_steps": t.gradient_accumulation_steps,
        "measure.iterations": m.iterations,
        "measure.batch_size": m.batch_size,
        "measure.seq_len": m.seq_len,
        "measure.new_tokens": m.new_tokens,
        "measure.rounds": m.rounds,
        "measure.block_iterations": m.block_iterations,
    }
    problems += [f"{k}: must be > 0, got {v}" for k, v in positive.items() if v <= 0]
    optional = {
        "data.max_train_samples": d.max_train_samples,
        "data.max_eval_samples": d.max_eval_samples,
        "train.eval_samples": t.eval_samples,
        "train.log_steps": t.log_steps,
    }
    problems += [f"{k}: must be > 0 or null, got {v}" for k, v in optional.items() if v is not None and v <= 0]
    non_negative = {
        "measure.warmup": m.warmup,
        "train.eval_steps": t.eval_steps,
        "measure.min_seconds": m.min_seconds,
        "measure.large_batch_size": m.large_batch_size,
        "train.weight_decay": t.weight_decay,
        "train.max_grad_norm": t.max_grad_norm,
    }
    if t.dataloader_workers is not None and t.dataloader_workers < 0:
        problems.append(f"train.dataloader_workers: must be >= 0 or null, got {t.dataloader_workers}")
    problems += [f"{k}: must be >= 0, got {v}" for k, v in non_negative.items() if v < 0]
    if t.max_steps == 0 or t.max_steps < -1:
        problems.append(f"train.max_steps: must be > 0 or -1 (epochs), got {t.max_steps}")
    if t.max_steps == -1 and t.epochs <= 0:
        problems.append(f"train.epochs: must be > 0, got {t.epochs}")
    lrs = t.learning_rate if isinstance(t.learning_rate, list) else [t.learning_rate]
    if any(lr is not None and lr <= 0 for lr in lrs):
        problems.append(f"train.learning_rate: must be > 0, got {t.learning_rate}")
    if len(set(lrs)) != len(lrs):
        problems.append(f"train.learning_rate: the sweep repeats a rate ({t.learning_rate})")
    if not 0 <= t.warmup_ratio < 1:
        problems.append(f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    for key in ("validation_fraction", "test_fraction"):
        if not 0 < getattr(d, key) < 0.5:
            problems.append(f"data.{key}: must be in (0, 0.5), got {getattr(d, key)}")
    if d.task in SPECS and SPECS[d.task].blocks and d.max_source_length < 2:
        problems.append(
            f"data.max_source_length: language modelling needs blocks of >= 2 tokens, got {d.max_source_length}"
        )
    return problems


def _lengths(exp: Experiment) -> list[str]:
    """Token counts against the model's position embeddings (when known without loading)."""
    limit = models.max_positions(exp.model.spec)
    if limit is None or models.is_seq2seq_spec(exp.model.spec):
        return []
    d, m = exp.data, exp.measure
    problems = []
    joined = SPECS[d.task].target_in_input
    train_len = d.max_source_length + (d.max_target_length + 1 if joined else 0)
    if train_len > limit:
        what = "max_source_length + max_target_length + 1" if joined else "max_source_length"
        problems.append(f"data.{what} = {train_len} exceeds the model's {limit} positions")
    gen = m.new_tokens if m.generate else 0
    if m.seq_len + gen > limit:
        problems.append(
            f"measure.seq_len + measure.new_tokens = {m.seq_len + gen} exceeds the model's {limit} positions"
        )
    return problems


def check_out_dir(out: Path) -> None:
    """The output folder must be (or become) a writable directory; checked without leaving a file."""
    out = Path(out)
    if len(str(out).encode()) > 4000 or any(len(part.encode()) > 255 for part in out.parts) or "\0" in str(out):
        raise ConfigError(f"--out {str(out)[:60]!r}...: not a usable folder name")
    if fs.exists(out) and not fs.is_dir(out):
        raise ConfigError(f"--out {out}: exists and is not a directory")
    probe = out.absolute()
    while not fs.exists(probe):
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {out}: {probe} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ConfigError(f"--out {out}: {probe} is not writable ({e.strerror})") from None
    free = fs.free_bytes(probe)
    if free is not None and free < MIN_FREE_BYTES:  # an empty probe file still fits on a full disk
        raise ConfigError(
            f"--out {out}: {fs.human_bytes(free)} free on its file system, a run needs at least "
            f"{fs.human_bytes(MIN_FREE_BYTES)} (results, the adapter, a scratch copy of the model); "
            f"free space or use another --out"
        )


def _raise(errors: list[str]) -> None:
    errors = list(dict.fromkeys(errors))  # a suite's defaults fail once, not once per experiment
    if errors:
        more = f" (+{len(errors) - SHOWN_ERRORS} more)" if len(errors) > SHOWN_ERRORS else ""
        raise ConfigError("; ".join(errors[:SHOWN_ERRORS]) + more)


# ---------------------------------------------------------------- suites


def suite_from_dict(
    raw, *, name: str, overrides: list[str] | None = None, seeds: list[int] | None = None, path: str | None = None
) -> Suite:
    errors: list[str] = []
    t0 = time.perf_counter()
    suite_name, description, experiments = experiments_from_raw(
        raw, name=name, overrides=overrides, seeds=seeds, errors=errors
    )
    _raise(errors)
    seen: set[str] = set()
    for exp in experiments:
        if exp.method.peft_config:  # peft's own adapter_config.json: the method and options it names
            found = peftfiles.expand(exp.method)[0]
            errors += found
            if found:
                continue
        if exp.id in seen:
            errors.append(f"{exp.id}: duplicate experiment id (give one an explicit id)")
        seen.add(exp.id)
        errors += validate(exp)
        errors += [
            f"{run.run_id[:40]}...: file names of {results.longest_name(run.run_id)} bytes, past the file system's "
            f"{results.NAME_MAX} (a shorter id or seed)"
            for run in (runs_of(exp) if not errors else [])
            if results.longest_name(run.run_id) > results.NAME_MAX
        ]
    log_with = tracking.parse(raw.get("log_with")) if isinstance(raw, dict) else []
    errors += tracking.check(log_with)
    _raise(errors)
    suite = Suite(name=suite_name, experiments=experiments, description=description, path=path, log_with=log_with)
    suite.plan_seconds = time.perf_counter() - t0
    return suite


def builtin_suites() -> Path:
    """The shipped suites: package data in an installed wheel, ``experiments/`` in a source checkout."""
    package = Path(__file__).resolve().parents[1]  # peftbench/ (this module is peftbench/run/plan.py)
    installed = package / "experiments"
    return installed if installed.is_dir() else package.parents[1] / "experiments"


def find_suite(name_or_path: str) -> Path:
    """A YAML path, or a built-in suite name (``demo``, ``seed``) looked up in ``experiments/``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not fs.is_file(p):
            raise ConfigError(f"suite file {name_or_path!r} not found")
        return p
    candidates = [Path.cwd() / "experiments" / f"{name_or_path}.yaml", builtin_suites() / f"{name_or_path}.yaml"]
    for c in candidates:
        if "/" not in name_or_path and fs.is_file(c):
            return c
    raise ConfigError(f"unknown suite {name_or_path!r}: not a .yaml file and not a built-in suite (demo, seed)")


def load_suite(name_or_path: str, *, overrides: list[str] | None = None, seeds: list[int] | None = None) -> Suite:
    path = find_suite(name_or_path)
    try:
        raw = strictyaml.load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({strictyaml.describe(e)})") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    return suite_from_dict(raw, name=path.stem, overrides=overrides, seeds=seeds, path=str(path))


def single_experiment(
    *,
    model: str,
    method: str,
    task: str,
    dataset: str,
    overrides: list[str] | None = None,
    exp_id: str | None = None,
    seeds: list[int] | None = None,
) -> Suite:
    raw = {"model": {"spec": model}, "method": {"name": method}, "data": {"spec": dataset, "task": task}}
    if exp_id is not None:
        raw["id"] = exp_id
    return suite_from_dict({"name": "single", "experiments": [raw]}, name="single", overrides=overrides, seeds=seeds)
