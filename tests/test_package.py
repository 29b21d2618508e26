"""The built wheel carries the suites: installed from it, `peftbench list demo` works from any folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_suites_and_a_version(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("peftbench-*.whl")
    target = tmp_path / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inst.returncode == 0, inst.stderr
    shipped = sorted(p.name for p in (target / "peftbench" / "experiments").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (ROOT / "experiments").glob("*.yaml")) and "demo.yaml" in shipped
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import peftbench, sys; assert peftbench.__file__.startswith(sys.argv[1]), peftbench.__file__; "
        "from peftbench.cli import main; sys.exit(main(['list', 'demo']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("todo") == 12 and "builtin-smollm2-135m--classification--lora" in out.stdout
    suite = tmp_path / "tiny.yaml"  # the installed package runs a suite too (torch etc. from this environment)
    data = tmp_path / "lm.jsonl"
    data.write_text("".join('{"text": "%s"}\n' % ("word " * 40) for _ in range(12)))
    suite.write_text(
        f"name: tiny\nexperiments:\n  - {{id: t, model: {{spec: 'random:tiny-gpt2'}},"
        f" method: {{name: lora}}, data: {{spec: 'file:{data}', task: language-modeling,"
        f" max_source_length: 16}},"
        f" train: {{max_steps: 1, batch_size: 2}}, measure: {{enabled: false}}}}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "peftbench", "run", str(suite), "--out", str(tmp_path / "o"), "--device", "cpu"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "results" / "t.json").read_text())["status"] == "success"
    version = subprocess.run(
        [sys.executable, "-m", "peftbench", "--version"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert version.stdout.strip().startswith("peftbench 0.")


def test_imports_follow_the_layers_with_no_circle_and_torch_free_parts():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_imports
    finally:
        sys.path.pop(0)
    assert check_imports.problems(ROOT / "src" / "peftbench") == []
    graph = check_imports.imports(ROOT / "src" / "peftbench")
    assert "torch" in graph["catalog.models"] and "torch" not in graph["catalog.methodspecs"]  # the check sees torch
