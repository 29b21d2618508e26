"""Datasets: file: specs with field mappings, label handling, deterministic carving, caps."""

import csv
import dataclasses
import json

import pytest

from peftbench.catalog import data
from peftbench.errors import ConfigError
from peftbench.spec.config import DataArgs


def args(path, task, **kw):
    return DataArgs(spec=f"file:{path}", task=task, **kw)


def test_jsonl_with_field_mapping_and_carved_splits(data_dir):
    a = args(
        data_dir / "summ.jsonl",
        "summarization",
        fields={"source": "article", "target": "highlights"},
        max_train_samples=None,
        max_eval_samples=None,
    )
    a.seed = 1
    s = data.load(a)
    assert set(s.train[0]) == {"source", "target"}
    assert (len(s.train), len(s.validation), len(s.test)) == (32, 4, 4)
    assert s.info["carved"] == ["validation", "test"]
    ids = lambda rows: [r["source"] for r in rows]  # noqa: E731
    assert not set(ids(s.train)) & set(ids(s.test)) and not set(ids(s.validation)) & set(ids(s.test))
    again = data.load(a)
    other = data.load(dataclasses.replace(a, seed=2))
    assert ids(again.test) == ids(s.test) and ids(other.test) != ids(s.test)


def test_string_labels_become_ids_with_names(data_dir):
    s = data.load(args(data_dir / "cls.jsonl", "classification", max_train_samples=10, max_eval_samples=3))
    assert s.label_names == ["bad", "good"]
    assert len(s.train) == 10 and len(s.test) == 3
    assert all(r["label"] in (0, 1) for r in s.train)
    assert all(("good" in r["text"]) == (r["label"] == 1) for r in s.train)


def test_csv_and_parquet(tmp_path):
    rows = [{"body": f"text {i}", "y": i % 3} for i in range(30)]
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["body", "y"])
        w.writeheader()
        w.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        s = data.load(args(tmp_path / name, "classification", fields={"text": "body", "label": "y"}))
        assert s.label_names == ["0", "1", "2"] and len(s.train) + len(s.validation) + len(s.test) == 30


def test_missing_column_names_the_field(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"body": "a", "y": 1}) + "\n")
    with pytest.raises(ConfigError, match="field 'text' expects column 'text'.*set data.fields.text"):
        data.load(args(tmp_path / "x.jsonl", "classification"))


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "missing"),
        ("imdb", "must start with one of"),
        ("hf:", "names no dataset"),
        ("file:/tmp/x.txt", "file type must be one of"),
        ("builtin:nope", "unknown builtin dataset"),
    ],
)
def test_bad_dataset_specs(spec, fragment):
    problems = data.check_spec(spec)
    assert len(problems) == 1 and fragment in problems[0]


def test_hf_spec_uses_load_dataset_with_config_label_names_and_carving(monkeypatch):
    import datasets

    calls = []
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    rows = lambda n, lab: {"text": [f"review {lab} {i}" for i in range(n)], "label": [lab] * n}  # noqa: E731
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": rows(20, 0)["text"] + rows(20, 1)["text"], "label": [0] * 20 + [1] * 20}, features=feats
            ),
            "test": datasets.Dataset.from_dict(rows(6, 1), features=feats),
            "unsupervised": datasets.Dataset.from_dict(rows(5, 0), features=feats),
        }
    )

    def load_dataset(name, config=None):
        calls.append((name, config))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    s = data.load(DataArgs(spec="hf:imdb", task="classification", max_train_samples=None))
    assert calls == [("imdb", None)] and s.label_names == ["neg", "pos"]
    assert (len(s.train), len(s.validation), len(s.test)) == (36, 4, 6) and s.info["carved"] == ["validation"]
    data.load(DataArgs(spec="hf:cnn_dailymail/3.0.0", task="classification"))
    data.load(DataArgs(spec="hf:stanfordnlp/imdb", task="classification"))
    data.load(DataArgs(spec="hf:wikitext/wikitext-2-raw-v1", task="classification"))
    assert calls[1:] == [("cnn_dailymail", "3.0.0"), ("stanfordnlp/imdb", None), ("wikitext", "wikitext-2-raw-v1")]
