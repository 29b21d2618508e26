"""Dataset specs -> train/validation/test lists of records in the task's canonical fields.

Usage:
    splits = load(DataArgs(spec="hf:imdb", task="classification", seed=0))
    splits.train[0] == {"text": "...", "label": 1}; splits.label_names == ["neg", "pos"]

Specs: ``hf:NAME[/CONFIG]`` (``datasets.load_dataset``), ``file:PATH`` (.jsonl/.json/.csv/.parquet,
columns mapped with ``data.fields``), ``builtin:NAME`` (offline sources, ``sources.py``). When a
dataset lacks a validation or test split, one is carved from train, deterministically from the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peftbench import fs
from peftbench.catalog.datafiles import read_rows
from peftbench.catalog.taskspecs import SPECS
from peftbench.errors import ConfigError
from peftbench.spec.config import DataArgs

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Column names of well-known hub datasets, so their specs work without a field mapping.
KNOWN_FIELDS = {
    "cnn_dailymail": {"source": "article", "target": "highlights"},
    "abisee/cnn_dailymail": {"source": "article", "target": "highlights"},
    "xsum": {"source": "document", "target": "summary"},
    "EdinburghNLP/xsum": {"source": "document", "target": "summary"},
    "samsum": {"source": "dialogue", "target": "summary"},
    "sst2": {"text": "sentence"},
    "glue": {"text": "sentence"},
}
VALIDATION_NAMES = ("validation", "valid", "dev")


@dataclass
class Splits:
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    label_names: list[str] | None = None
    info: dict = field(default_factory=dict)  # where each split came from, sizes before capping


def check_spec(spec: str) -> list[str]:
    if not spec:
        return ["data.spec: missing (e.g. hf:imdb, file:data.jsonl, builtin:spam-assassin)"]
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in LOADERS:
        return [f"data.spec: {spec!r} must start with one of {', '.join(p + ':' for p in LOADERS)}"]
    if not rest:
        return [f"data.spec: {spec!r} names no dataset"]
    if prefix == "file":
        p = Path(rest).expanduser()
        if p.suffix not in FILE_FORMATS:
            return [f"data.spec: {spec!r}: file type must be one of {', '.join(FILE_FORMATS)}"]
        if not fs.is_file(p):
            return [f"data.spec: file {rest!r} not found"]
    if prefix == "builtin":
        from peftbench.catalog.sources import SOURCES

        names = [n for n, s in SOURCES.items() if s.kind == "dataset"]
        if rest not in names:
            return [f"data.spec: unknown builtin dataset {rest!r} (known: {', '.join(names)})"]
    return []


MIN_FILE_ROWS = 3  # train, validation and test are carved from a file: one row each at least


def check_file(args: DataArgs) -> list[str]:
    """A ``file:`` dataset read once before anything trains, by the reader the run uses: readable,
    UTF-8 (text formats), valid rows, the task's fields present and non-empty, labels of one type
    with at least two classes."""
    path = Path(args.spec.partition(":")[2]).expanduser()
    rows, problem = read_rows(path)
    if problem:
        return [f"data.spec: {path.name}: {problem}"]
    return [f"data.spec: {path.name}: {p}" for p in _check_rows(rows, args)]


def _check_rows(rows: list[dict], args: DataArgs) -> list[str]:
    fields = SPECS[args.task].fields if args.task in SPECS else ()
    if len(rows) < MIN_FILE_ROWS:
        return [f"{len(rows)} rows; at least {MIN_FILE_ROWS} are needed to carve train, validation and test"]
    for f in fields:
        col = args.fields.get(f, f)
        for n, r in enumerate(rows, 1):
            if col not in r:
                return [
                    f"row {n}: no column {col!r} for field {f!r} (columns: {', '.join(map(str, r))}); "
                    f"set data.fields.{f}"
                ]
            v = r[col]
            if f != "label" and (not isinstance(v, str) or not v.strip()):
                return [f"row {n}: field {f!r} (column {col!r}) must be non-empty text, got {v!r}"]
    if "label" in fields:
        return _check_labels([r[args.fields.get("label", "label")] for r in rows], args)
    return []


def _check_labels(labels: list, args: DataArgs) -> list[str]:
    kinds = {
        "text"
        if isinstance(v, str)
        else "integer"
        if isinstance(v, int) and not isinstance(v, bool)
        else type(v).__name__
        for v in labels
    }
    if len(kinds) > 1:
        return [f"labels mix types ({', '.join(sorted(kinds))}); use one type"]
    if kinds - {"text", "integer"}:
        return [f"labels must be text or integers, got {kinds.pop()}"]
    classes = set(labels)
    if len(classes) < 2:
        return [f"every row has the label {labels[0]!r}: classification needs at least 2 classes"]
    if args.label_names is not None:
        if kinds == {"text"} and classes - set(args.label_names):
            return [f"labels {sorted(classes - set(args.label_names))[:3]} are not in data.label_names"]
        return []
    if kinds == {"integer"} and sorted(classes) != list(range(len(classes))):
        return [f"integer labels must be 0..N-1 (got {sorted(classes)[:6]}), or give data.label_names"]
    return []


# ---------------------------------------------------------------- loaders: spec -> {split: rows}


def _load_hf(rest: str, args: DataArgs) -> tuple[dict[str, list[dict]], dict]:
    import datasets

    name, _, cfg = rest.partition("/")
    if cfg and "/" in cfg:  # owner/name/config
        owner_name, _, cfg = rest.rpartition("/")
        name = owner_name
    elif cfg and not _looks_like_config(cfg):
        name, cfg = rest, ""
    dd = datasets.load_dataset(name, cfg or None)
    splits = {s: dd[s] for s in dd}
    label_names = None
    for ds in splits.values():
        feat = ds.features.get(args.fields.get("label", "label")) if hasattr(ds, "features") else None
        if feat is not None and hasattr(feat, "names"):
            label_names = list(feat.names)
        break
    mapping = {**KNOWN_FIELDS.get(name, {}), **args.fields}
    return {s: [dict(r) for r in ds] for s, ds in splits.items()}, {"label_names": label_names, "fields": mapping}


def _looks_like_config(part: str) -> bool:
    # "cnn_dailymail/3.0.0", "wikitext/wikitext-2-raw-v1": a config has digits or the dataset's name in it
    return any(ch.isdigit() for ch in part) or "-" in part


def _load_file(rest: str, args: DataArgs) -> tuple[dict[str, list[dict]], dict]:
    rows, problem = read_rows(Path(rest).expanduser())  # the reader the plan checked the file with
    if problem:
        raise ConfigError(f"data.spec: {Path(rest).name}: {problem}")
    return {"train": rows}, {"fields": dict(args.fields)}


def _load_builtin(rest: str, args: DataArgs) -> tuple[dict[str, list[dict]], dict]:
    from peftbench.catalog import sources
    from peftbench.catalog.converters import SPLITS

    meta = sources.load_meta(rest)
    return (
        {s: sources.load_split(rest, s) for s in SPLITS},
        {
            "label_names": meta.get("label_names"),
            "fields": dict(args.fields),
            "source": meta.get("description"),
            "source_task": meta.get("task"),
        },
    )


def _shuffled(rows: list[dict], seed: int) -> list[dict]:
    out = list(rows)
    random.Random(seed).shuffle(out)
    return out


LOADERS: dict[str, Callable[[str, DataArgs], tuple[dict[str, list[dict]], dict]]] = {
    "hf": _load_hf,
    "file": _load_file,
    "builtin": _load_builtin,
}


# ---------------------------------------------------------------- canonicalisation


def to_canonical(
    rows: list[dict], *, task: str, mapping: dict, label_names: list[str] | None
) -> tuple[list[dict], list[str] | None]:
    fields = SPECS[task].fields
    out = []
    for r in rows:
        rec = {}
        for f in fields:
            col = mapping.get(f, f)
            if col not in r:
                raise ConfigError(
                    f"data: field {f!r} expects column {col!r}, which the dataset lacks "
                    f"(columns: {', '.join(map(str, r))}); set data.fields.{f}"
                )
            rec[f] = r[col]
        out.append(rec)
    if SPECS[task].label_field:
        values = [r["label"] for r in out]
        if label_names is None:
            if all(isinstance(v, str) for v in values):
                label_names = sorted(set(values))
            else:
                label_names = [str(v) for v in sorted(set(values))]
                if label_names != [str(i) for i in range(len(label_names))]:
                    raise ConfigError("data.label_names: integer labels must be 0..N-1, or give label_names")
        for r in out:
            if isinstance(r["label"], str):
                if r["label"] not in label_names:
                    raise ConfigError(f"data: label {r['label']!r} is not in data.label_names {label_names}")
                r["label"] = label_names.index(r["label"])
            elif not 0 <= int(r["label"]) < len(label_names):
                r["label"] = -1  # e.g. IMDb's unlabelled rows (-1): dropped below
        out = [r for r in out if r["label"] != -1]
    out = [r for r in out if all(r[f] is not None and (not isinstance(r[f], str) or r[f].strip()) for f in fields)]
    return out, label_names


def sample(rows: list[dict], n: int | None, *, seed: int, stratify: str | None = None) -> list[dict]:
    """A seeded random sample of ``n`` rows in their original order, never a prefix of the file.

    With ``stratify`` (a field such as ``label``) every class keeps its share (largest remainder),
    so a file sorted by label still gives a sample that holds every class in proportion.
    """
    if n is None or len(rows) <= n:
        return rows
    rng = random.Random(seed)
    if not stratify:
        return [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]
    by_class: dict = {}
    for i, r in enumerate(rows):
        by_class.setdefault(r[stratify], []).append(i)
    quota = {c: n * len(ix) / len(rows) for c, ix in by_class.items()}
    take = {c: int(q) for c, q in quota.items()}
    for c in sorted(quota, key=lambda c: (take[c] - quota[c], str(c)))[: n - sum(take.values())]:
        take[c] += 1
    chosen = [i for c, ix in sorted(by_class.items(), key=lambda kv: str(kv[0])) for i in rng.sample(ix, take[c])]
    return [rows[i] for i in sorted(chosen)]


def load(args: DataArgs) -> Splits:
    """The three splits, carved and capped with ``args.seed`` (the same for every training seed)."""
    seed = args.seed
    prefix, _, rest = args.spec.partition(":")
    raw, meta = LOADERS[prefix](rest, args)
    mapping = meta.get("fields") or {}
    label_names = args.label_names or meta.get("label_names")
    train_name = "train" if "train" in raw else next(iter(raw))
    val_name = next((s for s in VALIDATION_NAMES if s in raw), None)
    test_name = "test" if "test" in raw else None
    canon = {}
    for name in {train_name, val_name, test_name} - {None}:
        canon[name], label_names = to_canonical(raw[name], task=args.task, mapping=mapping, label_names=label_names)
    train = canon[train_name]
    info = {"spec": args.spec, "sizes_before_cap": {}, "carved": []}
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_val = 0 if val_name else max(1, round(len(train) * args.validation_fraction))
    n_test = 0 if test_name else max(1, round(len(train) * args.test_fraction))
    validation = canon[val_name] if val_name else [train[i] for i in sorted(order[:n_val])]
    test = canon[test_name] if test_name else [train[i] for i in sorted(order[n_val : n_val + n_test])]
    if not val_name:
        info["carved"].append("validation")
    if not test_name:
        info["carved"].append("test")
    if not val_name or not test_name:
        train = [train[i] for i in sorted(order[n_val + n_test :])]
    info["sizes_before_cap"] = {"train": len(train), "validation": len(validation), "test": len(test)}
    if meta.get("source"):
        info["source"] = meta["source"]
    lm = SPECS[args.task].blocks  # LM caps count blocks, applied after tokenisation
    strat = SPECS[args.task].label_field
    if lm:  # blocks are cut from the texts in this order: shuffle so a cap is a sample, not a prefix
        train, validation, test = (_shuffled(rows, seed) for rows in (train, validation, test))
    splits = Splits(
        train=train if lm else sample(train, args.max_train_samples, seed=seed, stratify=strat),
        validation=validation if lm else sample(validation, args.max_eval_samples, seed=seed, stratify=strat),
        test=test if lm else sample(test, args.max_eval_samples, seed=seed, stratify=strat),
        label_names=label_names if strat else None,
        info=info,
    )
    if not splits.train or not splits.test:
        raise ConfigError(f"data.spec: {args.spec} has no usable {args.task} rows in train or test")
    return splits


def baselines(splits) -> dict:
    """What classification accuracy needs to beat: always answering the training majority, and chance."""
    names = splits.label_names
    train_labels = [r["label"] for r in splits.train]
    majority = max(range(len(names)), key=lambda c: (train_labels.count(c), -c))
    test = [r["label"] for r in splits.test]
    return {
        "majority_class": names[majority],
        "majority_accuracy": round(100 * test.count(majority) / len(test), 4),
        "chance_accuracy": round(100 / len(names), 4),
        "note": "majority: always answer the most frequent training label",
    }
