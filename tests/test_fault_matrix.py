"""The fault matrix of the correctness issue: a failed rerun keeps the last success, every documented file
format loads, every bad input is refused before anything loads (exit 2, one line, nothing written), a full
or read-only folder ends in one line, and the stored config hashes to the stored config_hash."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftbench import cli, results
from peftbench.catalog import data
from peftbench.run import plan, record
from peftbench.spec import config
from peftbench.spec.config import DataArgs

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"spec": "random:tiny-gpt2"},
    "train": {"max_steps": 2, "batch_size": 2},
    "measure": {"enabled": False, "forgetting": None},
}


HOT = ["--set", "method.name=full", "--set", "train.learning_rate=1e6", "--set", "train.max_steps=20"]  # diverges


def lm_suite(tmp_path, data_dir, **train) -> Path:
    raw = {
        "name": "matrix",
        "defaults": {
            **TINY,
            "data": {"spec": f"file:{data_dir}/lm.jsonl", "task": "language-modeling", "max_source_length": 16},
            "train": {**TINY["train"], **train},
        },
        "experiments": [{"id": "x", "method": {"name": "lora"}}],
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def peftbench(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "peftbench", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def one_line_exit_2(argv, capsys, fragment) -> str:
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("peftbench: error:") and len(err.splitlines()) == 1, err
    assert fragment in err, err
    return err


# ---------------------------------------------------------------- a failed rerun keeps the last success


def test_a_failed_rerun_keeps_the_success_and_its_adapter_and_says_so(tmp_path, data_dir, capsys):
    out, suite = tmp_path / "o", lm_suite(tmp_path, data_dir)
    base = ["run", str(suite), "--out", str(out), "--device", "cpu", "--in-process"]
    assert cli.main(base) == 0
    adapter = out / "adapters" / "x" / "adapter_model.safetensors"
    first, weights = results.read_result(out / "results" / "x.json"), adapter.read_bytes()
    # another config that fails while training: the rerun is stale, fails, and must not replace the success
    assert cli.main([*base, *HOT]) == 1
    kept = results.read_result(out / "results" / "x.json")
    assert kept.status == "success" and kept.attempt == first.attempt and adapter.read_bytes() == weights
    tried = results.read_result(out / "attempts" / "x.json")
    assert tried.status == "failed" and tried.error.startswith("diverged by step")
    assert "the last success stays in" in capsys.readouterr().out
    # a child killed mid-run (recorded by the suite's process) keeps it too
    killed = peftbench(*base[:-1], "--force", env={"PEFTBENCH_FAULT": "prepared@x"})
    assert killed.returncode == 1 and results.read_result(out / "results" / "x.json").attempt == first.attempt
    assert "killed by signal 9" in results.read_result(out / "attempts" / "x.json").error
    assert cli.main(["list", str(suite), "--out", str(out), *HOT]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("stale (last attempt failed: the run's process was killed by signal 9"), listed
    report = (out / "report.md").read_text()
    assert "Later attempts that did not succeed" in report and "killed by signal 9" in report
    # a new success replaces the old one and the attempt is gone
    assert cli.main([*base, "--force"]) == 0
    assert results.read_result(out / "results" / "x.json").attempt != first.attempt
    assert not (out / "attempts" / "x.json").exists()


# ---------------------------------------------------------------- every documented file format loads


def _write_formats(d: Path, rows: list[dict]) -> list[Path]:
    import csv

    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    frame = pd.DataFrame(rows)
    frame.to_parquet(d / "pandas.parquet")
    pq.write_table(pa.Table.from_pylist(rows), d / "arrow.parquet")
    frame.to_csv(d / "pandas.csv")  # with pandas' unnamed index column
    pacsv.write_csv(pa.Table.from_pylist(rows), d / "arrow.csv")  # every field quoted
    with open(d / "module.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    frame.to_json(d / "pandas-columns.json")  # {column: {index: value}}, pandas' default
    frame.to_json(d / "pandas-records.json", orient="records")
    frame.to_json(d / "pandas-lines.jsonl", orient="records", lines=True)
    (d / "module.json").write_text(json.dumps(rows, indent=0))
    (d / "module.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sorted(p for p in d.iterdir())


def test_files_written_by_pyarrow_pandas_csv_and_json_load_alike(tmp_path):
    rows = [{"text": f'row {i}: {"good" if i % 2 else "bad"}, "quoted", ünïcode', "label": i % 2} for i in range(12)]
    files = _write_formats(tmp_path, rows)
    assert len(files) == 10
    for path in files:
        args = DataArgs(spec=f"file:{path}", task="classification")
        assert data.check_file(args) == [], path.name
        loaded = data.load(args)
        got = sorted(loaded.train + loaded.validation + loaded.test, key=lambda r: r["text"])
        assert got == sorted(rows, key=lambda r: r["text"]), path.name  # integers stay integers


def test_a_real_parquet_file_trains_end_to_end(tmp_path, data_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (data_dir / "cls.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "valid.parquet")
    argv = ["run", "--model", "random:tiny-gpt2", "--method", "lora", "--task", "classification"]
    argv += ["--dataset", f"file:{tmp_path}/valid.parquet", "--set", "train.max_steps=1", "--set"]
    argv += ["measure.enabled=false", "--device", "cpu", "--in-process", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 0


# ---------------------------------------------------------------- refused before anything loads


BAD = [
    (["--set", "train.lr_scheduler=bogus"], "train.lr_scheduler: 'bogus' is not a schedule"),
    (["--set", "train.lr_scheduler=reduce_lr_on_plateau"], "is not a schedule these runs can step"),
    (["--set", "train.seed=99999999999999999999999999"], "train.seed: 99999999999999999999999999 is outside 0.."),
    (["--set", "train.seed=-1"], "train.seed: -1 is outside 0..4294967295"),
    (["--set", "data.seed=4294967296"], "data.seed: 4294967296 is outside"),
    (["--set", "train.batch_size=100000000000000000000"], "train.batch_size: 100000000000000000000 is past the"),
    (["--set", "method.r=100000000000000000000"], "method.r: 100000000000000000000 is past the largest size"),
    (["--id", "i" * 100, "--seeds", "1" + "0" * 159], "...(160 characters) is outside 0..4294967295"),
    (["--set", "model.chat_template=on"], "model.chat_template: on, but the tokenizer of random:tiny-gpt2 has no"),
    (["--set", "train.max_steps={a: [[[[[[]]]]]]}"], "train.max_steps: expected int"),
    (["--set", "model.family=seq2seq"], "model.family: seq2seq, but random:tiny-gpt2 is a causal model"),
]


@pytest.mark.parametrize("extra, fragment", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_values_are_refused_before_anything_loads(tmp_path, data_dir, monkeypatch, capsys, extra, fragment):
    from peftbench.catalog import models

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = ["run", "--model", "random:tiny-gpt2", "--method", "lora", "--task", "classification"]
    argv += ["--dataset", f"file:{data_dir}/cls.jsonl", "--out", str(tmp_path / "o"), *extra]
    one_line_exit_2(argv, capsys, fragment)
    assert list(tmp_path.iterdir()) == []


def test_file_names_past_the_file_system_limit_are_refused(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    longest = results.longest_name("i" * 100 + "--seed4294967295")
    assert longest == 100 + len("--seed4294967295") + len("..payload-000000000000.json.xxxxxxxx") + 1
    monkeypatch.setattr(results, "NAME_MAX", longest - 1)  # a file system with shorter names
    argv = ["run", "--model", "random:tiny-gpt2", "--method", "lora", "--task", "classification"]
    argv += ["--dataset", f"file:{data_dir}/cls.jsonl", "--id", "i" * 100, "--seeds", "4294967295"]
    one_line_exit_2(argv, capsys, f"file names of {longest} bytes, past the file system's {longest - 1}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: s\nexperiments:\n  - {method: {name: lora}, train: {max_steps: 3, max_steps: 5}}\n", "line 3: dup"),
        ("name: s\nname: t\nexperiments: []\n", "line 2: duplicate key 'name' (first on line 1)"),
        ("name: s\nexperiments: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than 64 levels deep"),
        ("name: s\nexperiments:\n" + "".join("  " * i + f"- k{i}:\n" for i in range(2_000)), "nested more than"),
    ],
    ids=["duplicate section key", "duplicate suite key", "50,000 levels of lists", "2,000 levels of mappings"],
)
def test_suite_files_with_duplicate_keys_or_deep_nesting_exit_2(tmp_path, monkeypatch, capsys, text, fragment):
    suite = tmp_path / "s.yaml"
    suite.write_text(text)
    monkeypatch.chdir(tmp_path)
    one_line_exit_2(["run", suite], capsys, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_set_values_with_duplicate_keys_exit_2(capsys):
    argv = ["list", "--model", "random:tiny-gpt2", "--method", "lora", "--task", "classification", "--dataset"]
    one_line_exit_2([*argv, "hf:imdb", "--set", "method.target_modules={a: 1, a: 2}"], capsys, "duplicate key 'a'")


# ---------------------------------------------------------------- a full or read-only folder


def test_an_almost_full_disk_is_refused_before_training(tmp_path, data_dir, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))
    monkeypatch.chdir(tmp_path)
    argv = ["run", lm_suite(tmp_path, data_dir), "--out", tmp_path / "o", "--device", "cpu", "--in-process"]
    one_line_exit_2(argv, capsys, "4.1 KB free on its file system, a run needs at least 16.8 MB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matrix.yaml"]


def test_a_disk_that_fills_during_the_run_ends_in_one_line_and_frees_the_lock(tmp_path, data_dir):
    out, suite = tmp_path / "o", lm_suite(tmp_path, data_dir)
    fault = {"PEFTBENCH_FAULT": "disk-full:adapter-written"}
    proc = peftbench("run", suite, "--out", out, "--device", "cpu", env=fault)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    r = results.read_result(out / "results" / "x.json")
    assert r.status == "failed" and r.error.startswith(f"{out}: no space left on its file system (")
    assert "free) writing adapter_model.safetensors; free space or use another --out" in r.error
    with results.FolderLock(out):  # released
        pass


def test_a_full_disk_that_takes_no_record_either_exits_1_in_one_line(tmp_path, data_dir, monkeypatch, capsys):
    out = tmp_path / "o"
    argv = ["run", lm_suite(tmp_path, data_dir), "--out", out, "--device", "cpu", "--in-process"]
    real = results.write_text_atomic

    def full(path, text):
        if "results" in Path(path).parts:  # the result (success or failure) cannot be written
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(results, "write_text_atomic", full)
    assert cli.main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("peftbench:")] == [
        err.splitlines()[-1]
    ]
    assert err.splitlines()[-1].startswith(f"peftbench: error: x: not recorded: {out}: no space left on its file "), err
    with results.FolderLock(out):
        pass


def test_report_into_a_read_only_folder_exits_2_in_one_line(tmp_path, data_dir, monkeypatch, capsys):
    out = tmp_path / "o"
    assert cli.main(["run", str(lm_suite(tmp_path, data_dir)), "--out", str(out), "--in-process"]) == 0

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("peftbench.report.build.write_text_atomic", read_only)
    capsys.readouterr()
    one_line_exit_2(["report", out], capsys, f"report: {out}: on a read-only file system (")


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0


def test_real_full_and_read_only_file_systems(tmp_path, data_dir, capsys):
    """The same on real file systems (a tmpfs; skipped where this process may not mount one)."""
    small, ro = tmp_path / "small", tmp_path / "ro"
    if os.geteuid() != 0 or shutil.which("mount") is None or not _mount_tmpfs(small, "5m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        (small / "filler").write_bytes(b"\0" * (5 * 2**20 - 8192))  # full but for a few blocks
        argv = ["run", lm_suite(tmp_path, data_dir), "--out", small / "o", "--device", "cpu", "--in-process"]
        one_line_exit_2(argv, capsys, "free on its file system, a run needs at least")
        assert sorted(p.name for p in small.iterdir()) == ["filler"]
        assert _mount_tmpfs(ro, "20m")
        suite = lm_suite(tmp_path, data_dir)
        assert cli.main(["run", str(suite), "--out", str(ro / "o"), "--device", "cpu", "--in-process"]) == 0
        assert subprocess.run(["mount", "-o", "remount,ro", str(ro)]).returncode == 0
        capsys.readouterr()
        one_line_exit_2(["report", ro / "o"], capsys, "on a read-only file system (")
        one_line_exit_2(["run", suite, "--out", ro / "o", "--force"], capsys, "is not writable (Read-only file system)")
    finally:
        for p in (small, ro):
            subprocess.run(["umount", str(p)], capture_output=True)


def test_report_skips_a_malformed_result_naming_it(tmp_path, data_dir, caplog, capsys):
    out = tmp_path / "o"
    assert cli.main(["run", str(lm_suite(tmp_path, data_dir)), "--out", str(out), "--in-process"]) == 0
    good = json.loads((out / "results" / "x.json").read_text())
    (out / "results" / "bad.json").write_text(json.dumps({**good, "run_id": "bad", "config": "a string"}))
    (out / "results" / "cut.json").write_text('{"schema": "peftbench.result/2", "status": ')
    with caplog.at_level("WARNING", logger="peftbench"):
        assert cli.main(["report", str(out)]) == 0
    warned = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"skipped {out / 'results' / 'bad.json'}: not a peftbench result (config:") for m in warned)
    assert any(m.startswith(f"skipped {out / 'results' / 'cut.json'}: not readable JSON") for m in warned)
    assert all(len(m.splitlines()) == 1 for m in warned)
    assert "x" in (out / "summary.csv").read_text()


# ---------------------------------------------------------------- signals


def test_a_signal_inside_a_finaliser_still_cancels_and_prints_no_traceback():
    """SIGTERM landing in a ``__del__`` (tensors and loaders run many): Python swallows the handler's
    exception there and prints its traceback; the cancellation must still happen, silently."""
    code = (
        "import os, signal, time\n"
        "from peftbench.errors import Cancelled, cancel_on_signals\n"
        "cancel_on_signals()\n"
        "class D:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.01)\n"
        "try:\n"
        "    D()\n"
        "    for _ in range(2000):\n"
        "        time.sleep(0.001)\n"
        "    print('not cancelled')\n"
        "except Cancelled as c:\n"
        "    print('cancelled', c.signum)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == f"cancelled {signal.SIGTERM.value}" and proc.stderr == "", proc.stderr


# ---------------------------------------------------------------- one config per run, hashed as stored


@pytest.mark.parametrize("name", ["demo", "seed", "methods"])
def test_every_shipped_run_stores_the_config_its_hash_is_of(name):
    suite = plan.load_suite(str(ROOT / "experiments" / f"{name}.yaml"))
    for run in plan.plan_runs(suite):
        stored = record.failure(run, "failed", "x", started=0.0, device="cpu", attempt=None).config
        assert config.hash_of(stored) == run.config_hash, run.run_id
        trains = run.exp.method.name != "none"
        assert (stored["train"]["learning_rate"] is not None) == trains, run.run_id  # the method's default


def test_a_success_and_a_failure_store_the_planned_config(tmp_path, data_dir):
    out, suite = tmp_path / "o", lm_suite(tmp_path, data_dir)
    assert cli.main(["run", str(suite), "--out", str(out), "--device", "cpu", "--in-process"]) == 0
    (run,) = plan.plan_runs(plan.load_suite(str(suite)))
    ok = json.loads((out / "results" / "x.json").read_text())
    assert ok["config"] == run.exp.to_dict() and config.hash_of(ok["config"]) == ok["config_hash"] == run.config_hash
    assert ok["config"]["train"]["learning_rate"] == 2e-4 == ok["resolved"]["learning_rate"]  # LoRA's default
    assert ok["resolved"]["total_steps"] == ok["train"]["steps"] == 2 and ok["resolved"]["family"] == "causal"
    assert cli.main(["run", str(suite), "--out", str(out), "--device", "cpu", "--in-process", *HOT]) == 1
    bad = json.loads((out / "attempts" / "x.json").read_text())
    assert config.hash_of(bad["config"]) == bad["config_hash"] != ok["config_hash"]
