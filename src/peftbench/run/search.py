"""Equal tuning budgets: each experiment's hyperparameters searched with Optuna, one trial at a time.

Usage:
    setting = resolve(exp)                   # train.search with its defaults and the method's own space
    study = Study(slot_runs)                 # the plan's slots of one experiment (trials x seeds)
    runs = study.runs_of(k)                  # trial k asked now: its runs (one per seed), configs set
    study.record(run, result)                # each run's result; the trial is told when its seeds are in
    study.selected()                         # the best trial's runs (validation only, never test)

``train.search: {trials: N, sampler: tpe | random | grid, space: auto | {...}, seed: S, startup: K}`` gives an
experiment N trials over its space (``auto``: ``methodspecs.default_space``, the method's own), so every
method of a suite gets the same budget. Trial 0 is the experiment's own configuration (the curated rate, peft's
defaults), so the report can put the tuned result beside the default one; TPE starts after ``startup`` trials.
Each trial is a run with its own result (``<id>--trial<k>[--seed<n>]``), selected by the mean validation score
of its seeds: the task's primary metric on validation for pretrained models, else the validation loss (the
rule that selects a learning-rate sweep, ``report.aggregate.selection``). The study lives in the suite's process
and is replayed from the results already written: the seeded sampler asked again with the same scores told
proposes the same trials, so a rerun continues where the last one stopped and a changed space starts again.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from peftbench import results
from peftbench.catalog import methods
from peftbench.catalog.methodspecs import default_space
from peftbench.errors import ConfigError
from peftbench.spec.config import Experiment, config_hash

log = logging.getLogger("peftbench")

SAMPLERS = ("tpe", "random", "grid")
KEYS = frozenset({"trials", "sampler", "space", "seed", "startup", "prune", "keep"})
KEEP = ("selected", "all")  # which trials' adapters stay once a search is complete
TRAIN_KEYS = ("learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm", "batch_size", "lr_scheduler")


def resolve(setting, *, method: str) -> dict | None:
    """``train.search`` with every default written in (the plan hashes it): the space ``auto`` becomes the
    method's own; a method that trains nothing has nothing to tune (None)."""
    if setting is None:
        return None
    m = methods.lookup(method)
    if m is not None and not m.trains:
        return None
    d = {"sampler": "tpe", "space": "auto", "seed": 0, "prune": False, "keep": "selected", **setting}
    if d["space"] == "auto":
        d["space"] = default_space(method)
    trials = d.get("trials")
    if "startup" not in d and isinstance(trials, int):
        d["startup"] = max(2, trials // 4)
    return d


def problems(setting, exp: Experiment) -> list[str]:
    """What is wrong with an experiment's ``train.search`` (before defaults are written in)."""
    if setting is None:
        return []
    if not isinstance(setting, dict):
        return [f"train.search: a mapping {{trials, sampler, space, seed}} or null, got {setting!r}"]
    out = [f"train.search.{k}: unknown key (known: {', '.join(sorted(KEYS))})" for k in setting if k not in KEYS]
    if importlib.util.find_spec("optuna") is None:
        out.append("train.search: needs Optuna (pip install 'peftbench[search]')")
    trials = setting.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        out.append(f"train.search.trials: an integer >= 1, got {trials!r}")
    if setting.get("sampler", "tpe") not in SAMPLERS:
        out.append(f"train.search.sampler: {setting.get('sampler')!r} is not one of {', '.join(SAMPLERS)}")
    for key in ("seed", "startup"):
        v = setting.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            out.append(f"train.search.{key}: an integer >= 0, got {v!r}")
    if setting.get("keep", "selected") not in KEEP:
        out.append(f"train.search.keep: {setting.get('keep')!r} is not one of {', '.join(KEEP)}")
    if setting.get("prune", False) not in (True, False):
        out.append(f"train.search.prune: true or false, got {setting.get('prune')!r}")
    elif setting.get("prune") and (not exp.train.eval_steps or exp.model.spec.startswith("random:")):
        out.append(
            "train.search.prune: needs periodic validation quality to compare trials step by step: "
            "train.eval_steps > 0 and a pretrained model"
        )
    if isinstance(exp.train.learning_rate, list):
        out.append("train.search: not with a train.learning_rate sweep (put the rates in train.search.space)")
    space = setting.get("space", "auto")
    if space != "auto" and not isinstance(space, dict):
        out.append(f"train.search.space: auto or a mapping of section.field to values or ranges, got {space!r}")
        return out
    resolved = resolve(setting, method=exp.method.name) if not out else None
    if resolved is None:
        return out
    space = resolved["space"]
    if not space:
        return out + [f"train.search.space: {exp.method.name} has nothing to tune here; give a space"]
    for key, dist in space.items():
        out += _dimension_problems(key, dist, exp)
    if resolved["sampler"] == "grid" and not out:
        ranges = [k for k, v in space.items() if not isinstance(v, list)]
        if ranges:
            out.append(f"train.search.space: sampler grid needs a list of values for {', '.join(ranges)}")
    return out


def _dimension_problems(key: str, dist, exp: Experiment) -> list[str]:
    where = f"train.search.space.{key}"
    section, _, name = str(key).partition(".")
    if section not in ("train", "method") or not name or (section == "train" and name not in TRAIN_KEYS):
        return [f"{where}: searchable keys are method.<peft option> and train.{{{', '.join(TRAIN_KEYS)}}}"]
    if isinstance(dist, list):
        if not dist or not all(isinstance(v, (str, int, float, bool)) for v in dist):
            return [f"{where}: a non-empty list of numbers, strings or booleans, got {dist!r}"]
        values = dist
    elif isinstance(dist, dict):
        if set(dist) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(dist):
            return [f"{where}: a range is {{low, high}} with optional log and step, got {dist!r}"]
        low, high = dist["low"], dist["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
            return [f"{where}: low < high, both numbers, got {low!r} and {high!r}"]
        if dist.get("log") and low <= 0:
            return [f"{where}: a log range needs low > 0, got {low!r}"]
        values = [low, high]
    else:
        return [f"{where}: a list of values or a range {{low, high, log}}, got {dist!r}"]
    if section == "method":  # each value as the method's peft config would take it
        found = []
        for v in values:
            found += methods.check(exp.method.name, {**exp.method.options, name: v})
        return [f"{where}: {p}" for p in dict.fromkeys(found)]
    return []


# ---------------------------------------------------------------- the study of one experiment


def _distributions(space: dict) -> dict:
    import optuna.distributions as od

    out = {}
    for key, dist in space.items():
        if isinstance(dist, list):
            out[key] = od.CategoricalDistribution(dist)
        elif all(isinstance(dist[k], int) for k in ("low", "high")) and not dist.get("log"):
            out[key] = od.IntDistribution(dist["low"], dist["high"], step=int(dist.get("step") or 1))
        else:
            out[key] = od.FloatDistribution(float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))
    return out


def _fits(dist, v) -> bool:
    """Whether a value lies in an Optuna distribution (an enqueued default outside it is sampled instead)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(v)))
    except (ValueError, TypeError):
        return False


def default_point(exp: Experiment, space: dict) -> dict:
    """The experiment's own value of each searched key: its config, else peft's default."""
    point = {}
    peft_defaults = {}
    m = methods.lookup(exp.method.name)
    if m is not None and m.peft_type is not None:
        cls = methods.config_class(m)
        peft_defaults = {
            f.name: f.default for f in cls.__dataclass_fields__.values() if not callable(getattr(f, "default", None))
        }
        peft_defaults.update(m.defaults)
    for key in space:
        section, _, name = key.partition(".")
        if section == "train":
            v = getattr(exp.train, name)
            point[key] = m.learning_rate if name == "learning_rate" and v is None and m else v
        else:
            v = exp.method.options.get(name, peft_defaults.get(name))
            point[key] = getattr(v, "value", v)  # peft's enums by value (PromptTuningInit.RANDOM -> "RANDOM")
    return point


def apply_point(exp: Experiment, point: dict) -> Experiment:
    e = copy.deepcopy(exp)
    for key, v in point.items():
        section, _, name = key.partition(".")
        if section == "train":
            setattr(e.train, name, float(v) if name == "learning_rate" else v)
        else:
            e.method.options[name] = v
    return e


@dataclass
class Trial:
    number: int
    params: dict
    runs: list  # plan.Run, one per seed
    results: dict = field(default_factory=dict)  # run id -> result dict
    told: bool = False


class Study:
    """One experiment's search over its slots (the plan's ``Run``s with ``trial`` set), in trial order."""

    def __init__(self, slots: list, *, objective):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.slots = slots
        self.exp = slots[0].exp
        self.setting = self.exp.train.search
        self.space = self.setting["space"]
        self.objective = objective  # (key, direction, label) of report.aggregate.selection
        self.dists = _distributions(self.space)
        seed = self.setting["seed"]
        sampler = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.setting["startup"]),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "grid": lambda: optuna.samplers.GridSampler(self.space, seed=seed),
        }[self.setting["sampler"]]()
        self.study = optuna.create_study(direction=objective[1], sampler=sampler)
        if self.setting["sampler"] != "grid":  # trial 0: the experiment as configured (its defaults)
            point = default_point(self.exp, self.space)
            fits = {k: v for k, v in point.items() if _fits(self.dists[k], v)}
            self.study.enqueue_trial(fits)
        self.trials: dict[int, Trial] = {}
        self._optuna_trials: dict[int, object] = {}

    def runs_of(self, k: int) -> list:
        """Trial k's runs (asked now: every earlier trial must have been told)."""
        if k not in self.trials:
            missing = [j for j in range(k) if j not in self.trials or not self.trials[j].told]
            if missing:
                raise RuntimeError(f"trial {k} of {self.exp.id} asked before trial {missing[0]} was told")
            trial = self.study.ask(self.dists)
            self._optuna_trials[k] = trial
            params = {key: trial.params[key] for key in self.space}
            runs = [self._run(slot, params) for slot in self.slots if slot.trial == k]
            self.trials[k] = Trial(k, params, runs)
        return self.trials[k].runs

    def concrete(self, slot):
        """The slot's run with its trial's configuration."""
        return next(r for r in self.runs_of(slot.trial) if r.seed == slot.seed)

    def _run(self, slot, params: dict):
        import dataclasses

        e = apply_point(slot.exp, params)
        return dataclasses.replace(
            slot,
            exp=e,
            config_hash=config_hash(e),
            trial_params=params,
            trial_default=slot.trial == 0 and self.setting["sampler"] != "grid",  # a grid enqueues no default
            prune=self._thresholds(slot.trial),
        )

    def _thresholds(self, k: int) -> dict | None:
        """The median rule (Optuna's MedianPruner): trial k stops at a periodic evaluation whose validation
        score is worse than the median of the earlier completed trials' scores at that step; from trial
        ``startup`` on, once two trials are complete."""
        if not self.setting.get("prune") or k < self.setting["startup"]:
            return None
        key, direction = self.objective[0], self.objective[1]
        at: dict[int, list[float]] = {}
        for t in self.trials.values():
            if t.number >= k or not all(r and r.get("status") == "success" for r in t.results.values()):
                continue
            for r in t.results.values():
                for point in (r.get("train") or {}).get("eval_curve") or []:
                    if isinstance(point.get(key), (int, float)) and point.get("step"):
                        at.setdefault(int(point["step"]), []).append(float(point[key]))
        thresholds = {str(s): statistics.median(v) for s, v in sorted(at.items()) if len(v) >= 2}
        if not thresholds:
            return None
        return {"key": key, "better": "max" if direction == "maximize" else "min", "thresholds": thresholds}

    def record(self, run, result: dict | None) -> None:
        """One run's result (None: it did not run, e.g. cancelled); the trial is told once all its seeds are in."""
        trial = self.trials[run.trial]
        trial.results[run.run_id] = result
        if len(trial.results) < len(trial.runs) or trial.told:
            return
        from optuna.trial import TrialState

        scores = [score_of(r, self.objective[0]) for r in trial.results.values()]
        ot = self._optuna_trials[run.trial]
        try:
            if any(r and r.get("status") == "pruned" for r in trial.results.values()):
                self.study.tell(ot, state=TrialState.PRUNED)
            elif scores and all(s is not None for s in scores):
                self.study.tell(ot, sum(scores) / len(scores))
            else:
                self.study.tell(ot, state=TrialState.FAIL)
        except RuntimeError as e:  # the grid sampler stops the study once its grid is done: stored by then
            if "Study.stop" not in str(e):
                raise
        trial.told = True

    def selected(self) -> list:
        """The runs of the trial with the best mean validation score (ties: the earlier trial)."""
        scored = [
            (t, sum(s) / len(s))
            for t in self.trials.values()
            if (s := [score_of(r, self.objective[0]) for r in t.results.values()]) and None not in s
        ]
        if not scored:
            return []
        sign = 1 if self.objective[1] == "maximize" else -1
        best = max(scored, key=lambda ts: (sign * ts[1], -ts[0].number))[0]
        return best.runs


def score_of(result: dict | None, key: str) -> float | None:
    if not result or result.get("status") != "success":
        return None
    v = (result.get("validation") or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def check_selection(runs: list, only_ids: set[str]) -> None:
    """``--only`` takes a search whole: its trials depend on each other."""
    partial = {r.experiment_id for r in runs if r.trial is not None and r.run_id not in only_ids}
    chosen = {r.experiment_id for r in runs if r.trial is not None and r.run_id in only_ids}
    both = sorted(partial & chosen)
    if both:
        raise ConfigError(
            f"--only selects part of the search of {both[0]} (each trial depends on the earlier ones); "
            f"select the whole experiment ({both[0]})"
        )


# ---------------------------------------------------------------- a suite's searches


def describe_params(run) -> str:
    from peftbench.report.tuning import shown

    return shown(run.trial_params) + (" (the configured default)" if run.trial_default else "")


def _objective(exp) -> tuple[str, str, str]:
    """What a search maximises or minimises: the rule that selects a sweep (``report.aggregate.selection``)."""
    from peftbench.report.aggregate import selection

    return selection(exp.data.task, pretrained=not exp.model.spec.startswith("random:"))


def studies(runs: list, *, task_of=None) -> dict:
    """One ``search.Study`` per searched experiment among the runs."""
    slots: dict = {}
    for r in runs:
        if r.trial is not None:
            slots.setdefault(r.experiment_id, []).append(r)
    return {k: Study(v, objective=(task_of or _objective)(v[0].exp)) for k, v in slots.items()}


def replay(runs: list, out_dir: Path) -> dict:
    """The studies replayed from the results on disk, trial by trial while each trial's results are there
    (for the stage, ``peftbench list`` and a resumed suite): {experiment id: (study, trials replayed)}."""
    out = {}
    for exp_id, study in studies(runs).items():
        k = 0
        while k < study.setting["trials"]:
            trial_runs = study.runs_of(k)
            found = [
                read(out_dir, r.run_id)
                if results.state(results.result_path(out_dir, r.run_id), r.config_hash) in ("done", "pruned")
                else None
                for r in trial_runs
            ]
            if any(f is None for f in found):
                break
            for r, f in zip(trial_runs, found):
                study.record(r, f)
            k += 1
        out[exp_id] = (study, k)
    return out


def for_stage(runs: list, out_dir: Path) -> list:
    """The runs the stage times: a search's selected trial in place of its slots."""
    studies = replay(runs, out_dir)
    out, placed = [], set()
    for r in runs:
        if r.trial is None:
            out.append(r)
        elif r.experiment_id not in placed:
            placed.add(r.experiment_id)
            out += studies[r.experiment_id][0].selected()
    return out


def drop_unselected_adapters(study: Study, out_dir: Path) -> list[str]:
    """Once every trial is told, the adapters (or full checkpoints: 538 MB each for SmolLM2-135M) of the trials
    not selected are removed unless ``keep: all``; their results stay, saying so (``storage.adapter_removed``).
    Returns the run ids whose adapters went."""
    if study.setting.get("keep") == "all" or len(study.trials) < study.setting["trials"]:
        return []
    if not all(t.told for t in study.trials.values()):
        return []
    chosen = {r.run_id for r in study.selected()}
    gone = []
    for trial in study.trials.values():
        for run in trial.runs:
            path = results.result_path(out_dir, run.run_id)
            r = results.read_result(path)
            if run.run_id in chosen or r is None or r.status != "success" or not (r.storage or {}).get("adapter_dir"):
                continue
            shutil.rmtree(Path(out_dir) / r.storage["adapter_dir"], ignore_errors=True)
            r.storage = {**r.storage, "adapter_dir": None, "adapter_removed": "not the selected trial of its search"}
            results.write_json_atomic(path, r.to_dict())
            gone.append(run.run_id)
    return gone


def read(out_dir: Path, run_id: str) -> dict | None:
    """A run's result as a dict, or None."""
    r = results.read_result(results.result_path(out_dir, run_id))
    return None if r is None else r.to_dict()
