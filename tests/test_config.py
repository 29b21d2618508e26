"""Config: typed sections, --set overrides, matrix expansion, validation with one-line errors."""

from pathlib import Path

import pytest

from peftbench.errors import ConfigError
from peftbench.run import plan
from peftbench.spec import config

ROOT = Path(__file__).resolve().parents[1]


def suite(d, overrides=None):
    return plan.suite_from_dict(d, name="t", overrides=overrides)


BASE = {
    "defaults": {"model": {"spec": "random:tiny-gpt2"}, "data": {"spec": "hf:imdb", "task": "classification"}},
    "experiments": [{"method": {"name": "lora"}}],
}


def test_defaults_overrides_and_set_merge_in_order():
    d = {
        **BASE,
        "defaults": {**BASE["defaults"], "train": {"max_steps": 7, "batch_size": 2}},
        "experiments": [{"method": {"name": "lora", "r": 4}, "train": {"max_steps": 9}}],
    }
    s = suite(d, overrides=["train.batch_size=3", "method.target_modules=[c_attn]", "train.learning_rate=1e-3"])
    e = s.experiments[0]
    assert (e.train.max_steps, e.train.batch_size, e.train.learning_rate) == (9, 3, 1e-3)
    assert e.method.options == {"r": 4, "target_modules": ["c_attn"]}
    assert e.to_dict()["method"] == {"name": "lora", "r": 4, "target_modules": ["c_attn"]}
    assert e.id == "random-tiny-gpt2--classification--lora"


def test_on_and_off_mean_the_words_not_yaml_booleans():
    keys = [
        "train.compile",
        "train.fused_optimizer",
        "train.fused_loss",
        "train.packing",
        "measure.optimized",
        "model.chat_template",
    ]
    for word in ("off", "on"):
        if word == "on":  # optimized has no "on"; chat_template: on needs a tokenizer with one (test_faults)
            keys = keys[:4]
        e = suite(BASE, overrides=[f"{k}={word}" for k in keys]).experiments[0]
        assert all(getattr(getattr(e, k.split(".")[0]), k.split(".")[1]) == word for k in keys)
    assert suite(BASE, overrides=["train.mixed_precision=no"]).experiments[0].train.mixed_precision == "no"


def test_matrix_expands_cartesian_product_with_named_axes():
    d = {
        "defaults": BASE["defaults"],
        "matrix": {
            "model.spec": ["random:tiny-gpt2", "random:tiny-t5"],
            "methods": [{"method": {"name": "none"}}, {"method": {"name": "ia3"}, "train": {"learning_rate": 0.01}}],
        },
    }
    s = suite(d)
    assert [e.id for e in s.experiments] == [
        "random-tiny-gpt2--classification--none",
        "random-tiny-gpt2--classification--ia3",
        "random-tiny-t5--classification--none",
        "random-tiny-t5--classification--ia3",
    ]
    assert s.experiments[1].train.learning_rate == 0.01 and s.experiments[0].train.learning_rate is None


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.max_stepz=3"], "train.max_stepz: unknown key"),
        (["train.max_steps=abc"], "train.max_steps: expected int"),
        (["train.batch_size=0"], "train.batch_size: must be > 0"),
        (["model.spec=random:gpt3"], "unknown random model 'gpt3'"),
        (["data.spec=s3://bucket/x"], "data.spec: 's3://bucket/x' must start with one of"),
        (["data.spec=file:/nonexistent/x.jsonl"], "file '/nonexistent/x.jsonl' not found"),
        (["data.task=translation"], "unknown task 'translation'"),
        (["method.name=lorax"], "unknown method 'lorax'"),
        (["method.rank=8"], "method.rank: not an option of LoraConfig"),
        (["train.warmup_ratio=1.5"], "train.warmup_ratio: must be in [0, 1)"),
        (["foo.bar=1"], "key must be section.field"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        suite(BASE, overrides=override)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        suite(BASE, overrides=["train.batch_size=0", "measure.iterations=-1", "method.name=nope"])
    msg = str(e.value)
    assert "train.batch_size" in msg and "measure.iterations" in msg and "unknown method 'nope'" in msg


def test_a_problem_of_the_defaults_is_reported_once_not_per_experiment():
    d = {**BASE, "defaults": {**BASE.get("defaults", {}), "train": {"dropout": 0.1}}}
    d["experiments"] = [{"id": "a", "method": {"name": "lora"}}, {"id": "b", "method": {"name": "ia3"}}]
    with pytest.raises(ConfigError) as e:
        suite(d)
    assert str(e.value).count("train.dropout: unknown key") == 1


def test_full_and_none_take_no_options():
    with pytest.raises(ConfigError, match="'full' takes no options"):
        suite(BASE, overrides=["method.name=full", "method.r=8"])


def test_duplicate_ids_rejected():
    d = {**BASE, "experiments": [{"method": {"name": "lora"}}, {"method": {"name": "lora", "r": 4}}]}
    with pytest.raises(ConfigError, match="duplicate experiment id"):
        suite(d)


@pytest.mark.parametrize("name", ["demo", "seed"])
def test_shipped_suites_load_and_validate(name):
    s = plan.load_suite(str(ROOT / "experiments" / f"{name}.yaml"))
    assert s.experiments and len({e.id for e in s.experiments}) == len(s.experiments)
    methods = {e.method.name for e in s.experiments}
    assert {"none", "full", "lora", "ia3"} <= methods
    assert {e.data.task for e in s.experiments} == {"summarization", "classification", "language-modeling"}


SHIPPED = sorted(p.relative_to(ROOT) for d in ("experiments", "benchmarks") for p in (ROOT / d).glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=str)
def test_every_shipped_yaml_loads_and_plans(path, tmp_path, monkeypatch):
    """Each suite file, and the scaling study's suites as benchmarks/scaling.py builds them; the GPU smoke
    suite on the data benchmarks/make_data.py writes (its paths moved into this test's folder)."""
    import subprocess
    import sys

    import yaml

    sys.path.insert(0, str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "path", sys.path)
    text = (ROOT / path).read_text()
    if "/tmp/pbdata" in text:
        made = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_data.py"), str(tmp_path)])
        assert made.returncode == 0
        (tmp_path / "suite.yaml").write_text(text.replace("/tmp/pbdata", str(tmp_path)))
        suites = [plan.load_suite(str(tmp_path / "suite.yaml"))]
    elif path.name == "scaling.yaml":
        import scaling

        study = yaml.safe_load(text)
        suites = [
            plan.suite_from_dict(scaling.suite_for(study, m, study["methods"], g), name="s")
            for m in study["models"]
            for g in (1, 2)
        ]
    else:
        suites = [plan.load_suite(str(ROOT / path))]
    from peftbench.run import search

    for s in suites:
        runs = plan.plan_runs(s)
        assert runs and len({r.run_id for r in runs}) == len(runs)
        assert all(config.hash_of(r.exp.to_dict()) == r.config_hash for r in runs if r.trial is None)
        assert all(r.config_hash == "" for r in runs if r.trial is not None)  # a search's slot: asked in its turn
        for study in search.studies(runs).values():  # its first trial, asked now, hashes as the others do
            assert all(config.hash_of(r.exp.to_dict()) == r.config_hash for r in study.runs_of(0))


def test_seed_suite_is_the_original_study():
    s = plan.load_suite(str(ROOT / "experiments" / "seed.yaml"))
    assert len(s.experiments) == 2 * 4 * 3
    assert {e.model.spec for e in s.experiments} == {"gpt2", "t5-small"}
    assert {e.data.spec for e in s.experiments} == {
        "hf:cnn_dailymail/3.0.0",
        "hf:imdb",
        "hf:wikitext/wikitext-2-raw-v1",
    }


def test_help_text_documents_every_field():
    text = config.help_text()
    for key in ("model.spec", "data.max_train_samples", "train.learning_rate", "measure.new_tokens", "method.name"):
        assert key in text


def test_a_method_check_that_passed_is_remembered_and_a_later_plan_does_not_import_peft(monkeypatch, tmp_path):
    """A passed check is kept per (method, options, peft and transformers versions, the checks' code): the second
    plan finds it with peft unimportable; a failing check and another peft version are checked again."""
    import sys
    from importlib import metadata

    from peftbench.catalog import methods
    from peftbench.catalog.sources import cached_keys

    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))
    assert methods.check("lora", {"r": 4, "lora_alpha": 8}) == []
    assert methods.check("lora", {"r": 0}) == ["method.r: must be >= 1, got 0"]
    assert len(cached_keys(methods.PASSED_FILE)) == 1  # the failure is not kept
    assert methods.passed_key("check", "lora", {"target_modules": {1: "a", "b": "c"}}) is None  # no one JSON form
    methods.peft_types.cache_clear()
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises from here on
    monkeypatch.setitem(sys.modules, "peft.mapping", None)
    assert methods.check("lora", {"lora_alpha": 8, "r": 4}) == []  # the options' order does not matter
    with pytest.raises(ImportError):
        methods.check("lora", {"r": 0})  # a problem is checked again (which needs peft)
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda d: "99.0" if d == "peft" else real(d))
    methods._checks_context.cache_clear()  # read once per process: this one "installs" another peft
    with pytest.raises(ImportError):
        methods.check("lora", {"r": 4, "lora_alpha": 8})  # another peft: not the check that passed
    methods.peft_types.cache_clear()
    methods._checks_context.cache_clear()
