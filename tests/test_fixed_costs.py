"""What each run's process pays beyond its work (issue 26): no library imported that the run does not need, no
lookup repeated per call, graphs that stay static when only the epoch's last batch is smaller."""

import subprocess
import sys

import pytest

from peftbench.measure import memory
from peftbench.run.train import compile_dynamic


def test_quieting_the_libraries_imports_none_of_them():
    code = (
        "import os, sys\n"
        "from peftbench.run.progress import quiet_libraries\n"
        "quiet_libraries()\n"
        "print('datasets' in sys.modules, os.environ['DATASETS_VERBOSITY'], os.environ['TRANSFORMERS_VERBOSITY'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "error", "error"]


def test_libc_is_looked_up_once_per_process(monkeypatch):
    import ctypes.util

    calls = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: calls.append(name) or real(name))
    memory._malloc_trim.cache_clear()
    try:
        for _ in range(3):
            memory.release_free_memory()
    finally:
        memory._malloc_trim.cache_clear()
    assert calls == ["c"]


def test_fixed_length_examples_compile_static_graphs_varying_ones_dynamic():
    blocks = [{"input_ids": [1] * 8, "labels": [1] * 8} for _ in range(10)]  # 10 blocks, batch 4: a last batch of 2
    assert compile_dynamic(blocks) is False  # the last batch gets a static graph of its own, not a dynamic one
    assert compile_dynamic(blocks + [{"input_ids": [1] * 5, "labels": [1] * 5}]) is True
    pairs = [{"input_ids": [1] * 8, "labels": [1] * n, "decoder": True} for n in (3, 3, 5)]  # one source length
    assert compile_dynamic(pairs) is True  # the decoder's shape follows the targets
    assert compile_dynamic([dict(p, labels=[1] * 3) for p in pairs]) is False


def test_planning_a_suite_with_a_common_schedule_leaves_transformers_trainer_utilities_unimported(tmp_path):
    """Checking train.lr_scheduler imported transformers' trainer utilities (and with them peft and torchao):
    6.4 s of a one-run suite's 6.8 s of planning. The common names are known without it; the list agrees with
    what transformers itself steps, and an unknown name is still refused by asking transformers."""
    from peftbench.errors import ConfigError
    from peftbench.run import plan

    assert plan.STEPPABLE <= set(plan.schedulers())
    data = tmp_path / "lm.jsonl"
    data.write_text('{"text": "call me ishmael some years ago never mind how long precisely"}\n' * 20)
    exp = {"id": "a", "model": {"spec": "random:tiny-gpt2"}, "method": {"name": "lora"}}
    exp |= {"data": {"spec": f"file:{data}", "task": "language-modeling"}, "train": {"lr_scheduler": "cosine"}}
    raw = {"name": "s", "experiments": [exp]}
    code = (
        "import sys; from peftbench.run.plan import suite_from_dict\n"
        f"suite_from_dict({raw!r}, name='s')\n"
        "print('transformers.trainer_utils' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"
    raw["experiments"][0]["train"]["lr_scheduler"] = "cosine_of_my_own"
    with pytest.raises(ConfigError, match="train.lr_scheduler: 'cosine_of_my_own' is not a schedule"):
        plan.suite_from_dict(raw, name="s")


def test_a_second_suite_plans_a_method_that_passed_without_importing_peft_or_building_the_model(tmp_path):
    """Planning a LoRA run built the model on the meta device (the method's probe) and imported peft (the options'
    check): 4.4 s of a one-run suite's 10 s process on 2 cores. Checks that passed are kept in the cache; one that
    failed (LoHa cannot wrap GPT-2's Conv1D) is checked, and refused, every time."""
    import os

    data = tmp_path / "lm.jsonl"
    data.write_text('{"text": "call me ishmael some years ago never mind how long precisely"}\n' * 20)

    def plan_in_a_process(method: str) -> tuple[int, str, str]:
        exp = {"id": "a", "model": {"spec": "random:tiny-gpt2"}, "method": {"name": method, "r": 4}}
        exp |= {"data": {"spec": f"file:{data}", "task": "language-modeling"}}
        code = (
            "import sys; from peftbench.run.plan import suite_from_dict\n"
            f"suite_from_dict({ {'name': 's', 'experiments': [exp]}!r}, name='s')\n"
            "print('peft' in sys.modules, 'transformers.models.gpt2.modeling_gpt2' in sys.modules)\n"
        )
        env = {**os.environ, "PEFTBENCH_CACHE": str(tmp_path / "cache")}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        return proc.returncode, (proc.stdout.strip().splitlines() or [""])[-1], proc.stderr[-600:]

    assert plan_in_a_process("lora")[:2] == (0, "True True")  # the first plan checks: peft and the model
    assert plan_in_a_process("lora")[:2] == (0, "False False")  # the second finds both checks passed
    for _ in range(2):
        code, _, err = plan_in_a_process("loha")
        assert code != 0 and "loha cannot apply to random:tiny-gpt2" in err


def test_a_suites_parent_process_never_imports_torch_once_its_checks_have_passed(tmp_path):
    """The parent plans, starts each run's process (forked from the warm server, which imports the training stack
    once), asks whether each measurement group is current and writes the report: none of it needs torch, whose
    import had cost the parent 1.1 s of a one-run suite's 2.5 s outside its phases on 2 cores."""
    import json
    import os

    data = tmp_path / "lm.jsonl"
    data.write_text('{"text": "call me ishmael some years ago never mind how long precisely"}\n' * 40)
    exp = {"id": "a", "model": {"spec": "random:tiny-gpt2"}, "method": {"name": "lora", "r": 4}}
    exp |= {"data": {"spec": f"file:{data}", "task": "language-modeling", "max_eval_samples": 4}}
    exp |= {"train": {"max_steps": 1, "batch_size": 2}}
    exp |= {"measure": {"warmup": 1, "iterations": 1, "min_seconds": 0.0, "large_batch_size": 0, "new_tokens": 2}}
    exp["measure"] |= {"stage": "on", "merged": False, "optimized": "off"}  # the stage: a group to ask about
    suite = tmp_path / "s.yaml"  # (JSON is YAML)
    suite.write_text(json.dumps({"name": "s", "experiments": [exp]}))
    env = {**os.environ, "PEFTBENCH_CACHE": str(tmp_path / "cache")}

    def run(out: str) -> list[str]:
        code = (
            "import sys; from peftbench.cli import main\n"
            f"rc = main(['run', {str(suite)!r}, '--out', {str(tmp_path / out)!r}, '--device', 'cpu'])\n"
            "print(rc, 'torch' in sys.modules)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1].split()

    run("first")  # checks the method (peft, the model on the meta device): torch, once
    assert run("second") == ["0", "False"]
    result = json.loads((tmp_path / "second" / "results" / "a.json").read_text())
    assert result["status"] == "success" and (tmp_path / "second" / "measurements").is_dir()


def _fake_torch(tmp_path, monkeypatch, version_text: str):
    """A torch package whose version file says ``version_text``, found by ``find_spec`` but never imported."""
    import importlib.util

    from peftbench.run import runner

    pkg = tmp_path / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the fake torch is not to be imported')\n")
    (pkg / "version.py").write_text(version_text)
    spec = importlib.util.spec_from_file_location("torch", pkg / "__init__.py")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "torch" else real(name, *a))
    runner.cuda_devices.cache_clear()
    return runner


class _Driver:
    def __init__(self, init: int, count: int):
        self.init, self.count = init, count

    def cuInit(self, flags):
        return self.init

    def cuDeviceGetCount(self, ref):
        ref._obj.value = self.count
        return 0


@pytest.mark.parametrize(
    ("build", "driver", "seen"),
    [
        ("cuda: Optional[str] = None\nhip: Optional[str] = None\n", _Driver(0, 2), 0),  # a CPU build sees none
        ("cuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n", _Driver(0, 2), 2),
        ("cuda = '12.8'\n", _Driver(100, 5), 0),  # CUDA_ERROR_NO_DEVICE (CUDA_VISIBLE_DEVICES="")
        ("cuda: Optional[str] = '12.8'\n", None, 0),  # no driver library
    ],
)
def test_the_suites_cuda_check_asks_the_driver_not_torch(tmp_path, monkeypatch, build, driver, seen):
    import ctypes

    runner = _fake_torch(tmp_path, monkeypatch, build)

    def cdll(name):
        assert name == "libcuda.so.1"
        if driver is None:
            raise OSError(f"{name}: cannot open shared object file")
        return driver

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    try:
        assert runner.cuda_devices() == seen
        if not seen:
            with pytest.raises(runner.ConfigError, match="--device cuda: no CUDA device"):
                runner.resolve_device("cuda")
    finally:
        runner.cuda_devices.cache_clear()


def test_a_rocm_build_or_an_unread_version_file_asks_torch(tmp_path, monkeypatch):
    import torch  # the real one (this test's process has it): asked only where the version file cannot answer

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 7)
    for build in ("cuda = None\nhip = '6.2'\n", "__version__ = '2.13.0'\n"):
        runner = _fake_torch(tmp_path / build[:4], monkeypatch, build)
        assert runner.cuda_devices() == 7
    runner.cuda_devices.cache_clear()


def test_the_cuda_check_on_a_cpu_build_leaves_torch_unimported():
    code = "import sys; from peftbench.run import runner; print(runner.cuda_devices(), 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0", "False"]  # this machine's torch is a CPU build


def test_the_warm_server_alone_skips_the_interpreters_finalisation():
    """The forkserver's preload registers a quick exit (its torch's teardown held the suite's stdout open after the
    suite exited); an ordinary import of the module registers nothing."""
    from peftbench.run import warm

    assert warm.QUICK_EXIT is False and warm._in_the_server() is False
    scope = {"warm": warm}
    exec(
        compile(
            "def main():\n    return warm._in_the_server()\n", "/usr/lib/python3/multiprocessing/forkserver.py", "exec"
        ),
        scope,
    )
    assert scope["main"]() is True  # called from forkserver.main, as the server's preload is
    probe = "import sys, peftbench.run.warm as w; print(w.QUICK_EXIT); sys.stdout.flush()"
    code = (
        "import multiprocessing as mp\n"
        "ctx = mp.get_context('forkserver'); ctx.set_forkserver_preload(['peftbench.run.warm'])\n"
        f"p = ctx.Process(target=exec, args=({probe!r},)); p.start(); p.join()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True"]  # the server's child: forked after the preload that registered it
