"""Equal tuning budgets (train.search): trials as runs, selected on validation, replayed on a rerun."""

import csv
import json
import statistics

import pytest
import yaml
from conftest import FAST_MEASURE

from peftbench import cli
from peftbench.errors import ConfigError
from peftbench.report import aggregate
from peftbench.results import load_results
from peftbench.run.plan import load_suite, plan_runs
from peftbench.spec.config import hash_of

SEARCH = {"trials": 4, "sampler": "tpe", "seed": 3, "startup": 2}


def _suite(tmp_path, data_dir, experiments, search=SEARCH, name="tuned"):
    raw = {
        "name": name,
        "defaults": {
            "model": {"spec": "random:tiny-gpt2"},
            "data": {
                "spec": f"file:{data_dir}/cls.jsonl",
                "task": "classification",
                "max_train_samples": 24,
                "max_eval_samples": 8,
                "max_source_length": 32,
            },
            "train": {"max_steps": 3, "batch_size": 8, "log_steps": 1, "search": search},
            "measure": {**FAST_MEASURE, "rounds": 2, "block_iterations": 1},
        },
        "experiments": experiments,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


METHODS = [{"id": "lora", "method": {"name": "lora"}}, {"id": "ia3", "method": {"name": "ia3"}}]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("search")
    suite = _suite(tmp, data_dir, [*METHODS, {"id": "none", "method": {"name": "none"}}])
    out = tmp / "out"
    code = cli.main(["run", suite, "--out", str(out), "--device", "cpu", "--in-process"])
    return code, suite, out


def test_a_search_of_four_trials_on_two_methods_gives_four_results_each_selected_on_validation(searched):
    code, _, out = searched
    assert code == 0
    res = {r["run_id"]: r for r in load_results(out)}
    for m in ("lora", "ia3"):
        trials = [res[f"{m}--trial{k}"] for k in range(4)]
        assert [t["trial"]["number"] for t in trials] == [0, 1, 2, 3]
        assert all(hash_of(t["config"]) == t["config_hash"] for t in trials)  # the config stored is the one hashed
        assert len({json.dumps(t["trial"]["params"], sort_keys=True) for t in trials}) == 4  # four points
        assert trials[0]["trial"]["default"] and not any(t["trial"]["default"] for t in trials[1:])
    lora0 = res["lora--trial0"]["trial"]["params"]  # trial 0 is the method as configured: curated rate, peft's
    assert lora0 == {
        "train.learning_rate": 2e-4,
        "method.r": 8,
        "method.lora_alpha": 8,
        "method.init_lora_weights": True,
    }
    assert res["ia3--trial0"]["trial"]["params"] == {"train.learning_rate": 3e-3}
    aggs = {a.id: a for a in aggregate.aggregate(load_results(out))}
    for m in ("lora", "ia3"):
        a = aggs[m]
        losses = {row["trial"]: row["validation"] for row in a.sweep}
        best = min(losses, key=lambda k: (losses[k], k))  # random weights: the validation loss selects, not test
        assert a.search["selected"]["trial"] == best and a.runs[0]["trial"]["number"] == best
        assert a.selection == "validation loss" and a.search["done"] == 4 and a.search["trials"] == 4
        spent = sum(res[f"{m}--trial{k}"]["train"]["seconds"] for k in range(4))
        assert a.search["train_seconds"] == pytest.approx(spent, abs=0.01)
    rows = {r["id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["lora"]["tuning_trials"] == "4" and json.loads(rows["lora"]["selected_params"])
    verdict = json.loads((out / "verdict.json").read_text())["groups"][0]
    assert set(verdict["tuning"]) == {"lora", "ia3"} and verdict["tuning_budget"]["equal"] is True
    report = (out / "report.md").read_text()
    assert "Tuning at an equal budget" in report and "Every trial" in report
    # the complete search keeps its selected trial's adapter; the others' go, and their results say so
    for m in ("lora", "ia3"):
        chosen = aggs[m].runs[0]["run_id"]
        for k in range(4):
            r = json.loads((out / "results" / f"{m}--trial{k}.json").read_text())
            kept = r["run_id"] == chosen
            assert (out / "adapters" / r["run_id"]).is_dir() == kept
            assert (r["storage"]["adapter_dir"] is not None) == kept
            assert kept or r["storage"]["adapter_removed"] == "not the selected trial of its search"
    # the stage times the selected trial of each search, not every trial
    stage = json.loads(next((out / "measurements").glob("*.json")).read_text())
    timed = {c["run_id"] for c in stage["candidates"] if c.get("run_id")}
    assert timed == {aggs["lora"].runs[0]["run_id"], aggs["ia3"].runs[0]["run_id"], "none"}


def test_a_rerun_continues_the_study_from_the_results_written(searched, capsys):
    _, suite, out = searched
    gone = out / "results" / "lora--trial2.json"
    before = json.loads(gone.read_text())
    gone.unlink()
    capsys.readouterr()
    assert cli.main(["run", suite, "--out", str(out), "--device", "cpu", "--in-process"]) == 0
    said = capsys.readouterr().out
    assert "lora--trial2: running" in said and said.count(": running") == 1  # only the missing trial ran
    again = json.loads(gone.read_text())
    assert again["trial"]["params"] == before["trial"]["params"] and again["config_hash"] == before["config_hash"]


@pytest.mark.parametrize(
    "search, words",
    [
        ({"trials": 0}, "train.search.trials: an integer >= 1"),
        ({"trials": 2, "sampler": "cmaes"}, "train.search.sampler: 'cmaes' is not one of tpe, random, grid"),
        ({"trials": 2, "budget": 3}, "train.search.budget: unknown key"),
        ({"trials": 2, "sampler": "grid"}, "sampler grid needs a list of values for train.learning_rate"),
        ({"trials": 2, "space": {"method.r": [0, 4]}}, r"train.search.space.method.r: .*r"),
        ({"trials": 2, "space": {"train.epochs": [1, 2]}}, "searchable keys are method.<peft option>"),
        ({"trials": 2, "space": {"train.learning_rate": {"low": 0, "high": 1, "log": True}}}, "needs low > 0"),
    ],
)
def test_bad_searches_are_refused_before_anything_runs(tmp_path, data_dir, search, words):
    with pytest.raises(ConfigError, match=words):
        load_suite(_suite(tmp_path, data_dir, METHODS[:1], search=search))


def test_a_search_is_taken_whole_and_replaces_a_rate_sweep(tmp_path, data_dir, capsys):
    suite = _suite(tmp_path, data_dir, METHODS)
    assert cli.main(["run", suite, "--only", "lora--trial1", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "--only selects part of the search of lora" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    runs = plan_runs(load_suite(suite))
    assert [r.run_id for r in runs if r.experiment_id == "lora"] == [f"lora--trial{k}" for k in range(4)]
    sweep = [{"id": "lora", "method": {"name": "lora"}, "train": {"learning_rate": [1e-4, 1e-3]}}]
    with pytest.raises(ConfigError, match="not with a train.learning_rate sweep"):
        load_suite(_suite(tmp_path, data_dir, sweep))


def test_pruning_stops_the_trials_below_the_earlier_median_and_records_them(
    tmp_path, tmp_path_factory, data_dir, monkeypatch
):
    """A pretrained model's validation accuracy made a known function of the rate (the scoring is patched, the
    pruning is not): from trial `startup` on, a trial whose periodic score is below the median of the complete
    trials at that step is stopped, recorded `pruned`, told to Optuna as pruned and never selected."""
    from conftest import save_tiny

    from peftbench.run.recipe import Recipe

    def score(lr):
        return 50 + 1e4 * lr

    original = Recipe._quality

    def scored(self, records, **kw):
        q = original(self, records, **kw)
        q["accuracy"] = score(self.exp.train.learning_rate)
        return q

    monkeypatch.setattr(Recipe, "_quality", scored)
    rates = [1e-3, 2e-3, 1e-5, 5e-3, 3e-4, 4e-3]
    search = {
        "trials": 6,
        "sampler": "grid",
        "seed": 1,
        "startup": 2,
        "prune": True,
        "space": {"train.learning_rate": rates},
    }
    exps = [
        {
            "id": "lora",
            "method": {"name": "lora"},
            "model": {"spec": str(save_tiny(tmp_path_factory, "tiny-gpt2"))},
            "train": {"eval_steps": 1, "eval_samples": 4},
        }
    ]
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "run",
                _suite(tmp_path, data_dir, exps, search=search),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--in-process",
            ]
        )
        == 0
    )
    res = {r["run_id"]: r for r in load_results(out)}
    trials = [res[f"lora--trial{k}"] for k in range(6)]
    lrs = [t["config"]["train"]["learning_rate"] for t in trials]
    assert sorted(lrs) == sorted(rates)  # the grid, in its seeded order
    assert not any(t["trial"]["default"] for t in trials)  # a grid has no configured default among its points
    complete = []
    for k, t in enumerate(trials):
        if k < 2:
            assert t["status"] == "success"
        else:
            pruned = score(lrs[k]) < statistics.median(complete)
            assert t["status"] == ("pruned" if pruned else "success"), (k, lrs[k], complete)
            if pruned:
                assert t["error"].startswith("pruned at step 1: validation accuracy") and t["train"]["seconds"] >= 0
        if t["status"] == "success":
            complete.append(score(lrs[k]))
    assert any(t["status"] == "pruned" for t in trials)
    agg = next(a for a in aggregate.aggregate(load_results(out)) if a.id == "lora")
    assert agg.search["pruned"] == sum(t["status"] == "pruned" for t in trials)
    assert agg.runs[0]["config"]["train"]["learning_rate"] == max(
        lr for lr, t in zip(lrs, trials) if t["status"] == "success"
    )
