"""Report from fixture result JSON: winners, Pareto sets, no quality claims for random weights,
HTML embeds every image, and the report package imports without torch."""

import json
import re
import subprocess
import sys

import pytest

from peftbench.report import build
from peftbench.report.metrics import pareto


def result(model, task, method, *, quality, trainable, adapter, p50, merged_p50=None, train_mem=3e9, tok_s=100.0,
           random=False):
    return {
        "schema": "peftbench.result/2", "id": f"{model.replace(':', '-')}--{task}--{method}",
        "run_id": f"{model.replace(':', '-')}--{task}--{method}", "config_hash": "0", "status": "success",
        "error": None, "config": {"model": {"spec": model}, "data": {"spec": "builtin:x", "task": task},
                                  "method": {"name": method}},
        "env": {"cpu_count": 2, "device": "cpu"}, "model": {"pretrained": not random},
        "data": {"train_examples": 100},
        "params": {"total": 1000, "trainable": trainable},
        "storage": {"adapter_bytes": adapter, "full_model_bytes": 4000},
        "train": {"tokens_per_second": tok_s if method != "none" else None,
                  "peak_memory_bytes": train_mem if method != "none" else None,
                  "loss_curve": [{"step": s, "loss": 3.0 / s} for s in (1, 2, 3)] if method != "none" else [],
                  "eval_curve": [{"step": 0 if method == "none" else 3, **quality}] if not random else []},
        "quality": quality, "quality_note": "random weights" if random else None,
        "inference": {"shapes": {"batch_size": 1, "seq_len": 32, "new_tokens": 4},
                      "latency_ms": {"p50_ms": p50, "p95_ms": p50 * 1.1, "mean_ms": p50, "stdev_ms": p50 * 0.01},
                      "throughput_tokens_per_second": 1000 / p50, "throughput_unit": "generated tokens/s",
                      "peak_memory_bytes": 1e9,
                      "merged": None if merged_p50 is None else {
                          "latency_ms": {"p50_ms": merged_p50, "p95_ms": merged_p50 * 1.1, "mean_ms": merged_p50,
                                         "stdev_ms": merged_p50 * 0.01},
                          "throughput_tokens_per_second": 1000 / merged_p50,
                          "unmerged_overhead_percent": 100 * (p50 / merged_p50 - 1), "max_abs_logit_diff": 1e-6}},
    }


@pytest.fixture
def fixture_dir(tmp_path):
    rs = [
        result("builtin:m", "classification", "none", quality={"accuracy": 50.0}, trainable=0, adapter=0, p50=10.0),
        result("builtin:m", "classification", "full", quality={"accuracy": 90.0}, trainable=1000, adapter=4000,
               p50=10.0, train_mem=9e9, tok_s=50),
        result("builtin:m", "classification", "lora", quality={"accuracy": 85.0}, trainable=16, adapter=80,
               p50=12.0, merged_p50=10.2, train_mem=4e9, tok_s=120),
        result("builtin:m", "classification", "ia3", quality={"accuracy": 70.0}, trainable=4, adapter=20,
               p50=11.0, merged_p50=10.1, train_mem=3e9, tok_s=130),
        result("random:gpt2", "summarization", "lora", quality={"rougeL": None}, trainable=16, adapter=80, p50=5.0,
               merged_p50=4.0, random=True),
        result("random:gpt2", "summarization", "ia3", quality={"rougeL": None}, trainable=4, adapter=20, p50=4.5,
               merged_p50=4.4, random=True),
    ]
    failed = {"schema": "peftbench.result/2", "id": "oops", "run_id": "oops", "config_hash": "0", "status": "failed", "error": "ValueError: boom",
              "config": {"model": {"spec": "x"}, "data": {"task": "classification"}, "method": {"name": "lora"}}}
    (tmp_path / "results").mkdir()
    for r in rs + [failed]:
        (tmp_path / "results" / f"{r['id']}.json").write_text(json.dumps(r))
    (tmp_path / "results" / "notes.json").write_text('{"not": "a result"}')  # ignored
    return tmp_path


def test_pareto_known_sets():
    pts = [("a", 1, 10), ("b", 2, 20), ("c", 3, 15), ("d", 1, 5)]
    assert pareto(pts, ("min", "max")) == ["a", "b"]
    assert sorted(pareto(pts, ("max", "max"))) == ["b", "c"]
    assert pareto([("x", 1, 1), ("y", 1, 1)], ("min", "max")) == ["x", "y"]  # ties: neither dominates


def test_winners_and_pareto_in_verdict(fixture_dir):
    groups = build.groups(__import__("peftbench.results", fromlist=["x"]).load_results(fixture_dir))
    v = build.verdict(groups[("builtin:m", "classification")], "classification")
    text = "\n".join(v)
    assert "Best quality (accuracy): full with 90." in text
    assert "Smallest storage to ship: ia3 (20 B)." in text
    assert "Fastest training: ia3" in text and "Lowest training memory: ia3" in text
    assert "Lowest deployed latency (merged where possible): none, full (10)." in text
    assert "Pareto-optimal for accuracy vs storage to ship: full, lora, ia3." in text
    assert "Pareto-optimal for accuracy vs deployed latency p50: full." in text
    assert "lora +17.6 %" in text


def test_random_groups_make_no_quality_claims(fixture_dir):
    from peftbench.results import load_results

    rs = build.groups(load_results(fixture_dir))[("random:gpt2", "summarization")]
    text = "\n".join(build.verdict(rs, "summarization"))
    assert "not compared" in text and "Best quality" not in text and "Pareto" not in text


def test_report_files_tables_and_embedded_images(fixture_dir):
    paths = build.build_report(fixture_dir)
    md = paths["md"].read_text()
    assert "## builtin:m · classification" in md and "## random:gpt2 · summarization" in md
    assert "| full | 1,000 | 4 KB | **90** |" in md  # best accuracy marked
    assert "Failed or cancelled" in md and "ValueError: boom" in md
    pngs = sorted((fixture_dir / "plots").glob("*.png"))
    assert len(pngs) >= 6 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert sorted(re.findall(r"\]\((plots/[^)]+)\)", md)) == sorted(f"plots/{p.name}" for p in pngs)
    html = paths["html"].read_text()
    assert html.count("src='data:image/png;base64,") == len(pngs) and "plots/" not in html
    rows = paths["csv"].read_text().splitlines()
    assert len(rows) == 1 + 7 and rows[0].startswith("id,status,model")


def test_report_imports_and_runs_without_torch(fixture_dir):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from peftbench.report import build_report\n"
            f"build_report(__import__('pathlib').Path({str(fixture_dir)!r}))\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
