"""Suite files -> experiments: defaults, explicit experiments, a matrix of axes, a seed axis.

Usage:
    name, description, experiments = experiments_from_raw(strictyaml.load(text), name="demo",
                                                          overrides=["train.max_steps=50"], seeds=None,
                                                          errors=errors)

A matrix is the cartesian product of its axes (``"model.spec": [...]`` or a named axis of partial
experiments); ``seeds`` on a suite or experiment, or a ``train.seed`` axis, fold into one experiment
run once per seed. Problems are appended to ``errors``, all of them, before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

import yaml

from peftbench.errors import ConfigError
from peftbench.spec import strictyaml
from peftbench.spec.config import ID_RE, SECTIONS, SUITE_KEYS, Experiment, build_experiment


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
            value = strictyaml.load(raw) if raw.strip() else None
        except strictyaml.Refused as e:
            raise ConfigError(f"--set {key.strip()}: {strictyaml.describe(e)}") from None
        except yaml.YAMLError:
            value = raw
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


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


def _fold_seed_axis(experiments: list[Experiment]) -> list[Experiment]:
    """Experiments that share an id and differ only in ``train.seed`` (a ``train.seed: [1, 2, 3]``
    matrix axis) become one experiment with ``seeds``."""
    out: list[Experiment] = []
    by_id: dict[str, Experiment] = {}
    for exp in experiments:
        first = by_id.get(exp.id)
        if first is not None and exp.seeds is None:
            a, b = copy.deepcopy(first), copy.deepcopy(exp)
            a.train.seed = b.train.seed = 0
            a.seeds = None
            if a == b:
                first.seeds = (first.seeds or [first.train.seed]) + [exp.train.seed]
                continue
        by_id.setdefault(exp.id, exp)
        out.append(exp)
    return out


def experiments_from_raw(
    raw: Any, *, name: str, overrides: list[str] | None, seeds: list[int] | None, errors: list[str]
) -> tuple[str, str, list[Experiment]]:
    """A suite mapping -> (name, description, experiments); problems appended to ``errors``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: a suite must be a mapping with defaults and experiments/matrix")
    for key in raw:
        if key not in SUITE_KEYS:
            errors.append(f"{key}: unknown suite key (known: {', '.join(SUITE_KEYS)})")
    suite_name = raw.get("name", re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "suite")
    if not isinstance(suite_name, str) or not ID_RE.fullmatch(suite_name) or ".." in suite_name:
        errors.append(f"name: {suite_name!r} must be one folder name (letters, digits, '.', '_', '-'; no '/' or '..')")
        suite_name = name
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        errors.append("defaults: expected a mapping of sections")
        defaults = {}
    if "seeds" in raw:
        defaults = {**defaults, "seeds": raw["seeds"]}
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
        if seeds is not None:
            merged["seeds"] = seeds
        experiments.append(build_experiment(merged, errors=errors))
    return str(suite_name), str(raw.get("description", "")), _fold_seed_axis(experiments)
