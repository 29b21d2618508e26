"""End to end on tiny models: result contract, adapters on disk, reruns, failures, CLI exit codes."""

import json

import pytest
import torch
import yaml
from conftest import FAST_MEASURE, save_tiny, single

from peftbench import cli, results
from peftbench.catalog import models
from peftbench.report import stages
from peftbench.run import plan, runner
from peftbench.spec import config

FAST = {
    "train": {"max_steps": 2, "batch_size": 4, "eval_steps": 1},
    "data": {"max_train_samples": 16, "max_eval_samples": 4, "max_source_length": 48, "max_target_length": 4},
    "measure": {**FAST_MEASURE, "large_batch_size": 2},
}


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    return save_tiny(tmp_path_factory, "tiny-llama")


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory, data_dir, tiny_pretrained):
    out = tmp_path_factory.mktemp("run")
    raw = {
        "name": "tiny",
        "defaults": FAST,
        "matrix": {
            "model_task": [
                {
                    "model": {"spec": str(tiny_pretrained)},
                    "data": {"spec": f"file:{data_dir}/cls.jsonl", "task": "classification"},
                },
                {
                    "model": {"spec": "random:tiny-t5"},
                    "data": {
                        "spec": f"file:{data_dir}/summ.jsonl",
                        "task": "summarization",
                        "fields": {"source": "article", "target": "highlights"},
                    },
                },
            ],
            "method.name": ["none", "full", "lora", "ia3"],
        },
    }
    path = out / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = cli.main(["run", str(path), "--out", str(out / "res"), "--device", "cpu", "--in-process"])
    return code, out / "res", plan.load_suite(str(path))


def test_suite_succeeds_and_writes_one_result_per_experiment(suite_run):
    code, out, suite = suite_run
    assert code == 0
    files = sorted(p.stem for p in (out / "results").glob("*.json"))
    assert files == sorted(e.id for e in suite.experiments) and len(files) == 8
    assert not list((out / "results").glob(".*"))  # no temp files left


def test_result_contract(suite_run):
    _, out, suite = suite_run
    r = json.loads(next((out / "results").glob("*--classification--lora.json")).read_text())
    assert r["schema"] == "peftbench.result/2" and r["status"] == "success" and r["error"] is None
    assert r["config"]["model"]["family"] == "causal" and r["config"]["train"]["learning_rate"] == 2e-4
    assert r["resolved"]["learning_rate"] == 2e-4 and r["resolved"]["family"] == "causal"
    exp = next(e for e in suite.experiments if e.id == r["id"])
    # the planned run: the method's rate, the model's family and the stage (auto: on in a group) filled in
    (run,) = [p for p in plan.plan_runs(suite) if p.experiment_id == exp.id]
    assert r["run_id"] == r["id"] and r["config_hash"] == run.config_hash == config.hash_of(r["config"])
    for key in ("python", "torch", "transformers", "peft", "device"):
        assert r["env"][key]
    # LoRA r=8 on q_proj (64->64) and v_proj (64->32: 2 kv heads of 16) in 2 layers
    assert r["params"]["trainable"] == 2 * ((8 * 64 + 64 * 8) + (8 * 64 + 32 * 8))
    assert set(r["quality"]) == {"accuracy", "macro_f1"} and r["quality_note"] is None
    assert 0 <= r["quality"]["accuracy"] <= 100
    # the interval brackets the estimate; the per-example predictions reproduce it exactly
    iv, smp = r["quality_interval"]["accuracy"], r["quality_samples"]
    assert iv["low"] <= r["quality"]["accuracy"] <= iv["high"] and smp["n"] == r["data"]["test_examples"]
    right = sum(p == g for p, g in zip(smp["columns"]["pred"], smp["columns"]["gold"]))
    assert r["quality"]["accuracy"] == pytest.approx(100 * right / smp["n"])
    base = r["quality_baselines"]
    assert base["chance_accuracy"] == 50.0 and base["majority_class"] in ("bad", "good")
    assert [p["step"] for p in r["train"]["eval_curve"]] == [1, 2]
    assert len(r["train"]["loss_curve"]) == 2 and r["train"]["tokens_per_second"] > 0
    # the run points to its group's stage (measure.stage: auto), whose record the report reads
    assert set(r["inference"]) == {"stage"}
    (r,) = stages.attach([r], out)
    lat, m = r["inference"]["latency_ms"], r["config"]["measure"]
    assert (
        lat["n"] == m["rounds"] * m["block_iterations"]
        and lat["p50_ms"] > 0
        and set(lat) >= {"mean_ms", "p90_ms", "p95_ms", "p99_ms", "stdev_ms"}
    )
    assert set(r["inference"]["scenarios"]) == {"forward_b1", "generate_b1", "forward_b2", "generate_b2"}
    merged = r["inference"]["merged"]
    assert merged["max_abs_logit_diff"] < 1e-4 and "unmerged_overhead_percent" in merged
    assert r["storage"]["full_model_bytes"] > r["storage"]["adapter_bytes"] > 0


def test_adapter_bytes_are_the_files_written_and_reload(suite_run, tiny_pretrained):
    from peft import PeftModel

    _, out, _ = suite_run
    for path in (out / "results").glob("*.json"):
        r = json.loads(path.read_text())
        adir = out / "adapters" / r["id"]
        if r["config"]["method"]["name"] == "none":
            assert r["storage"]["adapter_bytes"] == 0 and not adir.exists()
            continue
        on_disk = sum(f.stat().st_size for f in adir.rglob("*") if f.is_file() and f.name != "README.md")
        assert r["storage"]["adapter_bytes"] == on_disk == sum(r["storage"]["adapter_files"].values())
        weights = sum(f.stat().st_size for f in adir.glob("*.safetensors"))  # what peft counts
        assert r["storage"]["adapter_weights_bytes"] == weights < r["storage"]["adapter_bytes"]
    r = json.loads(next((out / "results").glob("*--classification--ia3.json")).read_text())
    base = models.load(config.ModelArgs(spec=str(tiny_pretrained))).model
    peft_model = PeftModel.from_pretrained(base, out / "adapters" / r["id"])
    assert sorted(r["storage"]["adapter_files"]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "ia3_" in n) == r["params"]["trainable"]


def test_every_saved_adapter_gets_a_model_card_with_its_numbers_and_still_loads(suite_run, tiny_pretrained):
    from peft import PeftModel

    _, out, _ = suite_run
    r = json.loads(next((out / "results").glob("*--classification--lora.json")).read_text())
    text = (out / "adapters" / r["id"] / "README.md").read_text()
    assert text.startswith('---\nlibrary_name: "peft"\ntags: ["peftbench", "lora", "classification"]')
    iv = r["quality_interval"]["accuracy"]
    assert f"| accuracy (test) | {r['quality']['accuracy']:g} (95 % interval {iv['low']:g} to {iv['high']:g}) |" in text
    assert f"| trainable parameters | {r['params']['trainable']:,} of" in text and "## Verdict" in text
    assert '"r": 8' in text and "PeftModel.from_pretrained" in text
    base = models.load(config.ModelArgs(spec=str(tiny_pretrained))).model
    PeftModel.from_pretrained(base, out / "adapters" / r["id"])  # the card does not disturb peft's loading
    assert not (
        out / "adapters" / next(iter(json.loads(p.read_text())["id"] for p in (out / "results").glob("*--none.json")))
    ).exists()


def test_random_models_report_null_quality(suite_run):
    _, out, _ = suite_run
    r = json.loads(next((out / "results").glob("random-tiny-t5--summarization--lora.json")).read_text())
    assert r["quality"] == {"rouge1": None, "rouge2": None, "rougeL": None, "bleu": None}
    assert r["quality_note"] == "random weights" and r["generation"]["do_sample"] is False


def test_rerun_skips_completed(suite_run, capsys):
    code, out, suite = suite_run
    before = {p.name: p.read_text() for p in (out / "results").glob("*.json")}
    assert runner.run_suite(suite, out_dir=out, device="cpu", report=False, in_process=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("[") and "done, skipped" in line for line in lines) == len(before)
    assert sum(line.startswith("measure ") and "done, skipped" in line for line in lines) == 2  # both groups
    assert {p.name: p.read_text() for p in (out / "results").glob("*.json")} == before


def test_failed_experiment_is_recorded_and_suite_goes_on(tmp_path, data_dir):
    empty = tmp_path / "not-a-model"  # a model folder that passes validation but fails to load
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    (empty / "model.safetensors").write_bytes(b"broken")
    raw = {
        "defaults": FAST,
        "experiments": [
            {
                "id": "broken",
                "model": {"spec": str(empty)},
                "method": {"name": "lora"},
                "data": {"spec": f"file:{data_dir}/lm.jsonl", "task": "language-modeling"},
            },
            {
                "id": "works",
                "model": {"spec": "random:tiny-gpt2"},
                "method": {"name": "ia3"},
                "data": {"spec": f"file:{data_dir}/lm.jsonl", "task": "language-modeling"},
            },
        ],
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    code = cli.main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--device", "cpu", "--in-process"])
    assert code == 1
    broken = results.read_result(tmp_path / "o" / "results" / "broken.json")
    assert broken.status == "failed" and broken.error and broken.config["id"] == "broken"
    assert results.read_result(tmp_path / "o" / "results" / "works.json").status == "success"
    assert not (tmp_path / "o" / "adapters" / "broken").exists()
    assert [p.name for p in (tmp_path / "o" / "adapters").iterdir() if p.name.startswith(".")] == []
    md = (tmp_path / "o" / "report.md").read_text()
    assert "Failed, cancelled, skipped or pruned" in md and "broken" in md


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "nosuchsuite"], "unknown suite 'nosuchsuite'"),
        (["run", "--model", "random:tiny-gpt2", "--method", "lora", "--task", "classification"], "needs --dataset"),
        (
            [*single("run", "random:gpt9", "lora", "classification", "hf:imdb")],
            "unknown random model 'gpt9'",
        ),
        (
            [
                *single("run", "random:tiny-gpt2", "lora", "classification", "hf:imdb"),
                "--set",
                "train.max_steps=-5",
            ],
            "train.max_steps: must be > 0 or -1",
        ),
        (
            [
                *single("run", "random:tiny-gpt2", "lora", "classification", "hf:imdb"),
                "--set",
                "method.alpha=3",
            ],
            "method.alpha: not an option of LoraConfig",
        ),
        (["fetch", "imagenet"], "unknown source imagenet"),
        (["report", "/nonexistent/dir"], "is not a directory"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv + (["--out", str(tmp_path / "out")] if argv[0] == "run" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and err.startswith("peftbench: error:")
    assert list(tmp_path.iterdir()) == []


def test_single_experiment_mode_and_list(tmp_path, data_dir, capsys):
    out = tmp_path / "single"
    argv = [
        "--model",
        "random:tiny-gpt2",
        "--method",
        "full",
        "--task",
        "language-modeling",
        "--dataset",
        f"file:{data_dir}/lm.jsonl",
        "--set",
        "train.max_steps=1",
        "--set",
        "measure.enabled=false",
        "--set",
        "data.max_source_length=32",
        "--out",
        str(out),
    ]
    assert cli.main(["run", *argv, "--device", "cpu"]) == 0
    r = json.loads((out / "results" / "random-tiny-gpt2--language-modeling--full.json").read_text())
    assert r["inference"] is None and r["params"]["trainable"] == r["params"]["total"]
    assert r["storage"]["adapter_bytes"] == r["storage"]["full_model_bytes"] > 0
    # where its time went: the child's phases, and the process's wall time around them
    ph = r["phases"]
    assert {"plan", "startup", "device", "load", "encode", "train", "evaluate", "save", "measure"} <= set(ph["seconds"])
    assert ph["total_seconds"] == pytest.approx(sum(ph["seconds"].values()), abs=1e-3)
    assert ph["joules"] is None and ph["energy_source"] == "no GPU"
    assert ph["process_wall_seconds"] >= ph["total_seconds"] - ph["seconds"]["plan"] > 0
    inside = ph["total_seconds"] - ph["seconds"]["plan"]  # the suite planned before the process started
    assert ph["outside_phases_seconds"] == pytest.approx(ph["process_wall_seconds"] - inside, abs=1e-2)
    assert ph["outside_phases_seconds"] >= 0
    capsys.readouterr()


def test_seeded_runs_are_reproducible(tmp_path, data_dir):
    from peftbench.run.recipe import Recipe

    suite = plan.single_experiment(
        model="random:tiny-gpt2",
        method="lora",
        task="language-modeling",
        dataset=f"file:{data_dir}/lm.jsonl",
        overrides=["train.max_steps=3", "measure.enabled=false", "data.max_source_length=32"],
    )
    run = plan.plan_runs(suite)[0]
    a = Recipe(run, out_dir=tmp_path / "a", device="cpu").run()
    b = Recipe(run, out_dir=tmp_path / "b", device="cpu").run()
    assert a.train["loss_curve"] == b.train["loss_curve"]
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a" / "adapters" / run.run_id / "adapter_model.safetensors")
    wb = load_file(tmp_path / "b" / "adapters" / run.run_id / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupt_records_cancelled_and_exits_130(tmp_path, data_dir, monkeypatch, capsys):
    from peftbench.run import recipe

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe.Recipe, "run", interrupted)
    argv = [
        *single("run", "random:tiny-gpt2", "lora", "language-modeling", f"file:{data_dir}/lm.jsonl"),
        "--id",
        "stopped",
        "--out",
        str(tmp_path / "o"),
        "--in-process",
    ]
    assert cli.main(argv) == 130
    r = results.read_result(tmp_path / "o" / "results" / "stopped.json")
    assert r.status == "cancelled" and r.config["method"]["name"] == "lora"
    assert results.state(tmp_path / "o" / "results" / "stopped.json", r.config_hash) == "cancelled"  # reruns


def test_identical_configurations_tie_on_every_measure_end_to_end(tmp_path, data_dir, tiny_pretrained, monkeypatch):
    """A/A: the same configuration under two ids, each trained in its own process, ties on every measure.
    Timed in the measurement stage (measure.stage: on): timed each in its own process at its own moment, a
    load change between the runs once made one of them a +187 % "winner" (tests never need a quiet machine)."""
    # one intra-op thread per child: with two threads on a 2-core box, contention with the test process
    # made one child's generation 28 % faster than the other's in about one run of four
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    raw = {
        "name": "aa",
        "defaults": {
            **FAST,
            "model": {"spec": str(tiny_pretrained)},
            "data": {
                **FAST["data"],
                "spec": f"file:{data_dir}/cls.jsonl",
                "task": "classification",
                "max_eval_samples": 12,
            },
            "measure": {**FAST["measure"], "stage": "on", "rounds": 4, "block_iterations": 2},
        },
        "experiments": [{"id": "a", "method": {"name": "lora"}}, {"id": "b", "method": {"name": "lora"}}],
    }
    (tmp_path / "aa.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "aa.yaml"), "--out", str(out), "--device", "cpu"]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    measures = verdict["groups"][0]["measures"]
    assert {"accuracy", "trainable", "train_tokens_per_second", "deploy_p50_ms"} <= {m["measure"] for m in measures}
    for m in measures:
        assert sorted(m["winners"]) == ["a", "b"], (m["measure"], m["effect"])
    ra, rb = (results.read_result(out / "results" / f"{i}.json") for i in "ab")
    assert ra.quality_samples["columns"] == rb.quality_samples["columns"]


def test_seeds_and_a_rate_sweep_run_aggregate_and_select_on_validation(tmp_path, data_dir, tiny_pretrained):
    raw = {
        "name": "sweep",
        "seeds": [1, 2],
        "defaults": {
            **FAST,
            "model": {"spec": str(tiny_pretrained)},
            "measure": {"enabled": False, "forgetting": None},
            "data": {**FAST["data"], "spec": f"file:{data_dir}/cls.jsonl", "task": "classification"},
            "train": {**FAST["train"], "eval_steps": 0, "learning_rate": [1e-3, 3e-2]},
        },
        "experiments": [{"id": "lora", "method": {"name": "lora"}}, {"id": "zero", "method": {"name": "none"}}],
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "s.yaml"), "--out", str(out), "--device", "cpu", "--in-process"]) == 0
    names = sorted(p.stem for p in (out / "results").glob("*.json"))
    assert names == [
        "lora--lr0.001--seed1",
        "lora--lr0.001--seed2",
        "lora--lr0.03--seed1",
        "lora--lr0.03--seed2",
        "zero--seed1",
        "zero--seed2",
    ]
    runs = {n: results.read_result(out / "results" / f"{n}.json") for n in names}
    # the split stays fixed across seeds and rates: every run is scored on the same test examples
    assert len({r.quality_samples["fingerprint"] for r in runs.values()}) == 1
    assert runs["lora--lr0.001--seed1"].train["loss_curve"] != runs["lora--lr0.001--seed2"].train["loss_curve"]
    val = {lr: sum(runs[f"lora--lr{lr}--seed{s}"].validation["accuracy"] for s in (1, 2)) for lr in ("0.001", "0.03")}
    chosen = max(val, key=lambda lr: (val[lr], lr == "0.001"))  # the first rate wins a tie
    import csv

    rows = {r["id"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["lora"]["n_seeds"] == "2" and float(rows["lora"]["learning_rate"]) == float(chosen)
    assert rows["lora"]["selected_by"] == "validation accuracy" and rows["zero"]["n_seeds"] == "2"
    picked = [runs[f"lora--lr{chosen}--seed{s}"].quality["accuracy"] for s in (1, 2)]
    assert float(rows["lora"]["accuracy_mean"]) == pytest.approx(sum(picked) / 2)


def test_gpus_start_each_experiment_through_accelerates_launcher(tmp_path, capsys):
    cmd = runner.child_command(tmp_path / "p.json", 4)
    assert cmd[1:8] == [
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "4",
        "-m",
        "peftbench.run.child",
    ]
    assert runner.child_command(tmp_path / "p.json", 1)[1:3] == ["-m", "peftbench.run.child"]
    argv = [
        *single("run", "random:tiny-gpt2", "lora", "language-modeling", "hf:x"),
        "--gpus",
        "2",
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.main(argv + ["--device", "cpu"]) == 2
    assert "--gpus 2: 0 CUDA devices visible (--device cpu)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_progress_lines_appear_in_a_captured_log(tmp_path, data_dir, capsys):
    """Not a terminal: plain lines with step n/N, loss, tokens/s and an ETA, at least every 10 %."""
    argv = [
        *single("run", "random:tiny-gpt2", "lora", "language-modeling", f"file:{data_dir}/lm.jsonl"),
        "--set",
        "train.max_steps=20",
        "--set",
        "measure.enabled=false",
        "--set",
        "data.max_source_length=32",
        "--id",
        "p",
        "--out",
        str(tmp_path / "o"),
        "--in-process",
    ]
    assert cli.main(argv) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train p: ")]
    assert [ln.split(",")[0] for ln in lines] == [f"train p: {2 * k}/20 ({10 * k} %)" for k in range(1, 11)]
    assert "loss=" in lines[0] and "tokens_per_s=" in lines[0] and "ETA" in lines[0] and "ETA" not in lines[-1]


def test_line_progress_writes_every_30_seconds_between_tenths():
    import io

    from peftbench.run.progress import LineProgress

    now = [0.0]
    out = io.StringIO()
    with LineProgress(total=1000, desc="x", file=out, clock=lambda: now[0]) as bar:
        for _ in range(3):
            now[0] += 31
            bar.update(1)
    assert [ln.split(",")[0] for ln in out.getvalue().splitlines()] == [
        "x: 1/1000 (0 %)",
        "x: 2/1000 (0 %)",
        "x: 3/1000 (0 %)",
    ]


def test_a_forked_run_has_a_fresh_interpreters_start_method_and_workers(tmp_path, data_dir):
    """Runs are forked from a warm server (run.forked); inside one, multiprocessing's default must be the
    platform's, not the server's forkserver: data loader workers fork the run's dataset and local collate."""
    from peftbench.run import forked

    assert forked.available()
    out = tmp_path / "o"
    argv = single("run", "random:tiny-gpt2", "lora", "language-modeling", f"file:{data_dir}/lm.jsonl")
    argv += ["--set", "train.max_steps=2", "--set", "train.dataloader_workers=2", "--set", "measure.enabled=false"]
    assert cli.main([*argv, "--set", "data.max_source_length=32", "--out", str(out), "--device", "cpu"]) == 0
    r = json.loads(next((out / "results").glob("*.json")).read_text())
    assert r["status"] == "success" and r["resolved"]["speed"]["dataloader_workers"] == 2
