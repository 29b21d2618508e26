"""The fault table: killed processes, signals, kills at each write point, stale configs, locks,
divergence, and every bad input caught before anything is written (exit 2, one line)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import single

from peftbench import cli, results
from peftbench.catalog import data
from peftbench.run import plan
from peftbench.spec.config import DataArgs

LM = [
    "--method",
    "lora",
    "--task",
    "language-modeling",
    "--set",
    "data.max_source_length=32",
    "--set",
    "train.max_steps=2",
    "--set",
    "measure.enabled=false",
    "--device",
    "cpu",
]


def lm_suite(tmp_path, data_dir, ids=("first", "second"), **train):
    raw = {
        "name": "faults",
        "defaults": {
            "model": {"spec": "random:tiny-gpt2"},
            "data": {"spec": f"file:{data_dir}/lm.jsonl", "task": "language-modeling", "max_source_length": 32},
            "train": {"max_steps": 2, **train},
            "measure": {"enabled": False, "forgetting": None},
        },
        "experiments": [{"id": i, "method": {"name": "lora"}} for i in ids],
    }
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def peftbench(*args, env=None, **kw):
    """The real command line in a new process (so signals and process deaths are real)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "peftbench", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        **kw,
    )


def temp_leftovers(out: Path) -> list[str]:
    return sorted(p.name for d in ("adapters", "results") if (out / d).is_dir() for p in (out / d).glob(".*"))


def test_killed_child_is_recorded_failed_and_the_suite_goes_on(tmp_path, data_dir):
    out = tmp_path / "o"
    proc = peftbench(
        "run", lm_suite(tmp_path, data_dir), "--out", out, "--device", "cpu", env={"PEFTBENCH_FAULT": "prepared@first"}
    )
    assert proc.returncode == 1, proc.stderr
    first = results.read_result(out / "results" / "first.json")
    assert first.status == "failed" and "killed by signal 9 (SIGKILL)" in first.error
    assert results.read_result(out / "results" / "second.json").status == "success"
    assert temp_leftovers(out) == []


def test_sigterm_cancels_the_running_experiment_and_exits_143(tmp_path, data_dir):
    out = tmp_path / "o"
    suite = lm_suite(tmp_path, data_dir, ids=("long",))
    cmd = [
        sys.executable,
        "-m",
        "peftbench",
        "run",
        str(suite),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--set",
        "train.max_steps=100000",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert "long: running" in proc.stdout.readline()
    time.sleep(6)  # the child imports torch and starts its 100,000 steps
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    r = results.read_result(out / "results" / "long.json")
    assert r.status == "cancelled" and "SIGTERM" in r.error
    assert temp_leftovers(out) == []


@pytest.mark.parametrize("point", ["adapter-written", "adapter-swapped", "result-written"])
def test_a_kill_at_each_write_point_never_leaves_success_without_adapter(tmp_path, data_dir, point):
    out = tmp_path / "o"
    suite = lm_suite(tmp_path, data_dir, ids=("x",))
    assert peftbench("run", suite, "--out", out, "--device", "cpu", "--in-process").returncode == 0
    killed = peftbench("run", suite, "--out", out, "--device", "cpu", "--force", env={"PEFTBENCH_FAULT": point})
    r = results.read_result(out / "results" / "x.json")
    if point == "result-written":  # the child recorded success before it died: the record stands
        assert killed.returncode == 0 and r.status == "success"
    elif point == "adapter-written":  # before the commit: the last success stays, the attempt beside it
        assert killed.returncode == 1 and r.status == "success"
        assert "signal 9" in results.read_result(out / "attempts" / "x.json").error
    else:  # the commit had begun (old result removed, new adapter in place): no success to keep
        assert killed.returncode == 1 and r.status == "failed" and "signal 9" in r.error
    if r.status == "success":
        assert (out / "adapters" / "x" / "adapter_model.safetensors").is_file()
    rerun = peftbench("run", suite, "--out", out, "--device", "cpu", "--in-process")
    assert rerun.returncode == 0 and temp_leftovers(out) == []
    assert results.read_result(out / "results" / "x.json").status == "success"
    assert (out / "adapters" / "x" / "adapter_model.safetensors").is_file()


def test_changed_config_reruns_same_config_skips_and_list_says_stale(tmp_path, data_dir, capsys):
    out = tmp_path / "o"
    suite = lm_suite(tmp_path, data_dir, ids=("x",))
    assert cli.main(["run", str(suite), "--out", str(out), "--in-process", "--device", "cpu"]) == 0
    first = results.read_result(out / "results" / "x.json")
    assert cli.main(["run", str(suite), "--out", str(out), "--in-process", "--device", "cpu"]) == 0
    assert "x: done, skipped" in capsys.readouterr().out
    assert cli.main(["list", str(suite), "--out", str(out), "--set", "train.max_steps=3"]) == 0
    assert capsys.readouterr().out.split()[0] == "stale"
    assert (
        cli.main(
            ["run", str(suite), "--out", str(out), "--in-process", "--device", "cpu", "--set", "train.max_steps=3"]
        )
        == 0
    )
    assert "x: running (config changed)" in capsys.readouterr().out
    second = results.read_result(out / "results" / "x.json")
    assert second.config_hash != first.config_hash and second.train["steps"] == 3
    assert cli.main(["list", str(suite), "--out", str(out), "--set", "train.max_steps=3"]) == 0
    assert capsys.readouterr().out.split()[0] == "done"


def test_a_second_run_into_a_locked_folder_exits_2_naming_the_holder(tmp_path, data_dir, capsys):
    out = tmp_path / "o"
    suite = lm_suite(tmp_path, data_dir, ids=("x",))
    with results.FolderLock(out):
        assert cli.main(["run", str(suite), "--out", str(out), "--in-process"]) == 2
    err = capsys.readouterr().err
    assert "in use by another peftbench run (pid" in err and len(err.strip().splitlines()) == 1
    assert not (out / "results").exists()


def test_divergence_is_a_failure_and_result_files_are_strict_json(tmp_path, data_dir):
    out = tmp_path / "o"
    argv = [
        "run",
        "--model",
        "random:tiny-gpt2",
        "--dataset",
        f"file:{data_dir}/lm.jsonl",
        *LM,
        "--method",
        "full",
        "--set",
        "train.learning_rate=1e6",
        "--set",
        "train.max_steps=20",
        "--id",
        "hot",
        "--out",
        str(out),
        "--in-process",
    ]
    assert cli.main(argv) == 1
    text = (out / "results" / "hot.json").read_text()
    r = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert r["status"] == "failed" and r["error"].startswith("diverged by step ")
    assert "lower train.learning_rate" in r["error"] and not (out / "adapters" / "hot").exists()
    # what the run had established stays: its size and how it trained (an out-of-memory row needs both)
    assert r["params"]["total"] == r["params"]["trainable"] > 0 and r["resolved"]["distributed"]["strategy"] == "single"


def test_strict_json_replaces_non_finite_numbers():
    assert json.loads(results.to_json({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}


def test_validation_subset_of_a_label_sorted_file_holds_every_class_in_proportion():
    rows = [{"text": f"t{i}", "label": c} for c, n in ((0, 60), (1, 30), (2, 10)) for i in range(n)]  # sorted
    picked = data.sample(rows, 20, seed=3, stratify="label")
    counts = [sum(r["label"] == c for r in picked) for c in (0, 1, 2)]
    assert counts == [12, 6, 2]
    assert data.sample(rows, 20, seed=3, stratify="label") == picked  # seeded
    assert [r["label"] for r in data.sample(rows, 20, seed=3)] != [0] * 20  # plain caps sample too


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written


def _bad_files(d: Path) -> dict[str, Path]:
    files = {
        "empty.jsonl": "",
        "badjson.jsonl": '{"text": "a", "label": 0}\n{"text": "b", "label": \n',
        "onelabel.jsonl": "".join(json.dumps({"text": f"t{i}", "label": "x"}) + "\n" for i in range(6)),
        "mixed.jsonl": "".join(json.dumps({"text": f"t{i}", "label": [0, "one"][i % 2]}) + "\n" for i in range(6)),
        "nofield.jsonl": "".join(json.dumps({"body": f"t{i}", "label": i % 2}) + "\n" for i in range(6)),
        "emptytext.jsonl": "".join(
            json.dumps({"text": "" if i == 4 else f"t{i}", "label": i % 2}) + "\n" for i in range(6)
        ),
    }
    out = {}
    for name, text in files.items():
        (d / name).write_text(text)
        out[name] = d / name
    (d / "latin1.jsonl").write_bytes('{"text": "caf\u00e9", "label": 0}\n'.encode("latin-1"))
    out["latin1.jsonl"] = d / "latin1.jsonl"
    return out


CLS = ["--model", "random:tiny-gpt2", "--method", "lora", "--task", "classification"]


@pytest.mark.parametrize(
    "case, extra, fragment",
    [
        ("empty file", ["--dataset", "file:{d}/empty.jsonl"], "the file is empty"),
        ("bad JSON line", ["--dataset", "file:{d}/badjson.jsonl"], "line 2: invalid JSON"),
        ("one label", ["--dataset", "file:{d}/onelabel.jsonl"], "needs at least 2 classes"),
        ("mixed label types", ["--dataset", "file:{d}/mixed.jsonl"], "labels mix types"),
        ("wrong field", ["--dataset", "file:{d}/nofield.jsonl"], "no column 'text' for field 'text'"),
        ("empty text", ["--dataset", "file:{d}/emptytext.jsonl"], "row 5: field 'text'"),
        ("non-UTF-8", ["--dataset", "file:{d}/latin1.jsonl"], "line 1: not UTF-8"),
        ("r not an int", ["--dataset", "file:{ok}", "--set", "method.r=eight"], "method.r: 'eight' is not a valid int"),
        (
            "options not a mapping",
            ["--dataset", "file:{ok}", "--set", "method.options=3"],
            "method.options: expected a mapping",
        ),
        (
            "seq_len past positions",
            ["--dataset", "file:{ok}", "--set", "measure.seq_len=600"],
            "exceeds the model's 512",
        ),
        ("lr inf", ["--dataset", "file:{ok}", "--set", "train.learning_rate=inf"], "must be a finite number"),
        ("lr nan", ["--dataset", "file:{ok}", "--set", "train.learning_rate=.nan"], "must be a finite number"),
        ("id with newline", ["--dataset", "file:{ok}", "--id", "abc\n"], "must be letters, digits"),
        ("300-character id", ["--dataset", "file:{ok}", "--id", "a" * 300], "is 300 characters (at most 100)"),
        ("out is a file", ["--dataset", "file:{ok}", "--out", "{d}/empty.jsonl"], "exists and is not a directory"),
        ("batch 0", ["--dataset", "file:{ok}", "--set", "train.batch_size=0"], "train.batch_size: must be > 0"),
    ],
)
def test_bad_input_is_caught_before_anything_is_written(tmp_path, data_dir, monkeypatch, capsys, case, extra, fragment):
    d = tmp_path / "in"
    d.mkdir()
    _bad_files(d)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = ["run", *CLS] + [a.format(d=d, ok=data_dir / "cls.jsonl") for a in extra]
    if "--out" not in argv:
        argv += ["--out", str(work / "out")]
    before = sorted(p.name for p in d.iterdir())
    assert cli.main(argv) == 2, case
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and err.startswith("peftbench: error:"), err
    assert list(work.iterdir()) == [] and sorted(p.name for p in d.iterdir()) == before


def test_lm_blocks_of_one_token_are_rejected(data_dir, capsys):
    argv = [
        *single("list", "random:tiny-gpt2", "lora", "language-modeling", f"file:{data_dir}/lm.jsonl"),
        "--set",
        "data.max_source_length=1",
    ]
    assert cli.main(argv) == 2
    assert "language modelling needs blocks of >= 2 tokens" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", ".."])
def test_suite_names_cannot_leave_runs(tmp_path, data_dir, name, capsys):
    raw = yaml.safe_load(lm_suite(tmp_path, data_dir).read_text())
    raw["name"] = name
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main(["list", str(tmp_path / "s.yaml")]) == 2
    assert "must be one folder name" in capsys.readouterr().err


def _model_dir(tmp_path, name, files, config=None):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config or {"model_type": "gpt2"}))
    for f in files:
        (d / f).write_bytes(b"\0" * 8)
    return d


@pytest.mark.parametrize(
    "name, files, config, fragment",
    [
        ("pickle", ["pytorch_model.bin"], None, "holds only pickle weights (pytorch_model.bin)"),
        (
            "custom",
            ["model.safetensors"],
            {"model_type": "x", "auto_map": {"AutoModel": "m.M"}},
            "asks for custom code",
        ),
        ("noweights", [], None, "has no *.safetensors weights"),
    ],
)
def test_model_folders_are_refused_before_running(tmp_path, data_dir, capsys, name, files, config, fragment):
    d = _model_dir(tmp_path, name, files, config)
    argv = [
        *single("run", str(d), "lora", "language-modeling", f"file:{data_dir}/lm.jsonl"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_data_validation_reads_files_not_the_hub():
    # hf: specs cannot be checked offline: they pass validation and fail (recorded) at load time
    assert data.check_spec("hf:imdb") == []
    assert (
        plan.validate(
            plan.suite_from_dict(
                {
                    "experiments": [
                        {
                            "model": {"spec": "random:tiny-gpt2"},
                            "method": {"name": "none"},
                            "data": {"spec": "hf:imdb", "task": "classification"},
                        }
                    ]
                },
                name="t",
            ).experiments[0]
        )
        == []
    )
    assert data.check_file(DataArgs(spec="file:/nonexistent.jsonl", task="classification"))[0].startswith(
        "data.spec: nonexistent.jsonl: cannot be read"
    )


# ---------------------------------------------------------------- fuzzing --set (hypothesis)


def _documented_keys() -> list[str]:
    import dataclasses

    from peftbench.spec import config

    keys = [f"{s}.{f.name}" for s, cls in config.SECTION_TYPES.items() for f in dataclasses.fields(cls)]
    return keys + ["method.r", "method.lora_alpha", "method.lora_dropout", "method.target_modules", "method.bias"]


ODD_VALUES = [
    "",
    "[",
    "{a: ",
    "1e-3",
    "-1",
    "0",
    ".nan",
    ".inf",
    "-.inf",
    "~",
    "null",
    "abc\n",
    "a" * 300,
    "[]",
    "{}",
    "[1, 2]",
    "[1e-4, 1e-4]",
    "{x: 1}",
    "true",
    "1e400",
    "2147483648",
    "file:\0x",
    "file:",
    "hf:",
    "random:",
    "builtin:",
    "../../etc",
    "/dev/null",
    "file:/dev/null.jsonl",
    "0x10",
    "1_000",
    "3.5",
]


@pytest.fixture(scope="module")
def lm_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "lm.jsonl").write_text("".join(json.dumps({"text": f"word {i} " * 20}) + "\n" for i in range(12)))
    return d / "lm.jsonl"


def test_fuzzing_set_gives_exit_0_or_a_clean_exit_2(lm_file, tmp_path, capsys):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    raw_values = st.one_of(
        st.sampled_from(ODD_VALUES),
        st.text(max_size=30),
        st.integers(-(10**12), 10**12).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )
    base = [
        *single("list", "random:tiny-gpt2", "lora", "language-modeling", f"file:{lm_file}"),
        "--out",
        str(tmp_path / "never"),
    ]

    @given(key=st.sampled_from(_documented_keys()), raw=raw_values)
    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(key, raw):
        code = cli.main(base + ["--set", f"{key}={raw}"])
        err = capsys.readouterr().err.strip()
        assert code in (0, 2), (key, raw, err)
        if code == 2:
            assert len(err.splitlines()) == 1 and err.startswith("peftbench: error:"), (key, raw, err)

    for key in _documented_keys():  # every odd value on every key, then hypothesis's own draws
        for raw in ODD_VALUES:
            code = cli.main(base + ["--set", f"{key}={raw}"])
            err = capsys.readouterr().err.strip()
            assert code in (0, 2) and (code == 0 or len(err.splitlines()) == 1), (key, raw, err)
    check()
    assert not (tmp_path / "never").exists()


def test_a_signal_during_a_result_write_waits_until_the_file_is_complete(tmp_path, monkeypatch):
    """SIGINT arriving between writing and renaming: the rename still happens, then the interrupt."""
    # the interpreter's own SIGINT handler, whatever an earlier test in this process left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    path = tmp_path / "results" / "x.json"
    real_replace = os.replace

    def replace_after_a_signal(src, dst):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands in the middle of the write
        real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace_after_a_signal)
    with pytest.raises(KeyboardInterrupt):
        results.write_json_atomic(path, {"status": "success", "n": 1})
    signal.signal(signal.SIGINT, previous)
    assert json.loads(path.read_text()) == {"status": "success", "n": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp file left
