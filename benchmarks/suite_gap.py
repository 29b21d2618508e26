# ruff: noqa: E501
"""Where a suite's wall time goes outside its runs' phases: a six-run suite (gpt2-medium LM x LoRA/full/IA3, saved
random gpt2 and t5-small summarisation with LoRA, two of them with ``train.eval_generation: on``), run as one
``peftbench run`` process with ``-X importtime``, every stderr line timestamped from the process's start.

    python benchmarks/make_data.py /tmp/pbdata
    OUT=benchmarks/results python benchmarks/suite_gap.py /tmp/pbdata /tmp/gap cuda

Writes ``$OUT/gap.json`` (suite wall, the phases summed with the suite's one plan counted once, per-run rows) and
``$OUT/gap_log.txt`` (the timeline; imports over 0.3 s). The summarisation models are saved to disk first so that
they count as pretrained (quality, forgetting and evaluation's generation run; random weights skip them). A rerun
into the same folder would skip the runs that succeeded (results are keyed by config hash), so the suite's folder
is removed first.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

data, out = sys.argv[1], Path(sys.argv[2])
GPT2, T5 = os.environ.get("GPT2", "gpt2"), os.environ.get("T5", "t5-small")
suite = f"""name: gap
defaults:
  data: {{max_train_samples: 2000, max_eval_samples: 64, max_source_length: 256, max_target_length: 64}}
  train: {{max_steps: 50, batch_size: 8}}
  measure: {{enabled: false}}
experiments:
  - {{id: lm-lora, model: {{spec: "random:gpt2-medium"}}, data: {{spec: "file:{data}/lm.jsonl", task: language-modeling}}, method: {{name: lora}}}}
  - {{id: lm-full, model: {{spec: "random:gpt2-medium"}}, data: {{spec: "file:{data}/lm.jsonl", task: language-modeling}}, method: {{name: full}}}}
  - {{id: lm-ia3, model: {{spec: "random:gpt2-medium"}}, data: {{spec: "file:{data}/lm.jsonl", task: language-modeling}}, method: {{name: ia3}}}}
  - {{id: sum-lora, model: {{spec: "random:gpt2"}}, data: {{spec: "file:{data}/summ.jsonl", task: summarization, fields: {{source: article, target: highlights}}}}, method: {{name: lora}}}}
  - {{id: sum-lora-gen-on, model: {{spec: "random:gpt2"}}, data: {{spec: "file:{data}/summ.jsonl", task: summarization, fields: {{source: article, target: highlights}}}}, method: {{name: lora}}, train: {{eval_generation: "on", seed: 7}}}}
  - {{id: t5-lora, model: {{spec: "random:t5-small"}}, data: {{spec: "file:{data}/summ.jsonl", task: summarization, fields: {{source: article, target: highlights}}}}, method: {{name: lora}}, train: {{eval_generation: "on"}}}}
"""


def saved(shape):
    d = Path(data) / f"saved-{shape}"
    if not d.exists():
        from peftbench.catalog import models
        from peftbench.spec.config import ModelArgs

        lm = models.load(ModelArgs(spec=f"random:{shape}"), seed=0)
        lm.model.save_pretrained(d)
        lm.tokenizer.save_pretrained(d)
    return str(d)


G, T = saved(GPT2), saved(T5)
suite = suite.replace('"random:gpt2"', f'"{G}"').replace('"random:t5-small"', f'"{T}"')
y = out / "gap.yaml"
shutil.rmtree(out / "suite", ignore_errors=True)  # an earlier call's results would be skipped, not run, and summed
out.mkdir(parents=True, exist_ok=True)
y.write_text(suite)
t0 = time.perf_counter()
proc = subprocess.Popen(
    [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "peftbench",
        "run",
        str(y),
        "--device",
        sys.argv[3] if len(sys.argv) > 3 else "cuda",
        "--out",
        str(out / "suite"),
    ],
    stderr=subprocess.PIPE,
    text=True,
)
log = []
for line in proc.stderr:
    t = time.perf_counter() - t0
    if line.startswith("import time:"):
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and int(parts[1].strip()) > 300000:
            log.append(f"{t:7.2f} {line.rstrip()}")
        continue
    log.append(f"{t:7.2f} {line.rstrip()[:300]}")
proc.wait()
wall = time.perf_counter() - t0
Path(os.environ.get("OUT", "/tmp")).joinpath("gap_log.txt").write_text("\n".join(log))
print("rc", proc.returncode, "wall", round(wall, 2))
print("\n".join(x for x in log if " train " not in x[:20] and "import time" not in x)[-3000:])
rows = []
total = 0.0
for f in sorted((out / "suite" / "results").glob("*.json")):
    r = json.loads(f.read_text())
    ph = (r.get("phases") or {}).get("seconds", {})
    s = sum(ph.values()) - (ph.get("plan", 0) if rows else 0)
    total += s  # the suite's one plan, in every run
    q = (r.get("quality_details") or {}).get("generation")
    rows.append(
        {
            "id": r["id"],
            "status": r.get("status"),
            "phases": ph,
            "sum": round(s, 2),
            "wall_seconds": r.get("wall_seconds"),
            "generation": q,
            "evaluate": ph.get("evaluate"),
            "quality": r.get("quality"),
            "error": str(r.get("error"))[:600],
        }
    )
    print(json.dumps(rows[-1]))
res = {
    "suite_wall": round(wall, 2),
    "sum_phases": round(total, 2),
    "runs": len(rows),
    "gap_per_run": round((wall - total) / max(1, len(rows)), 2),
    "rows": rows,
}
print(json.dumps({k: v for k, v in res.items() if k != "rows"}))
Path(os.environ.get("OUT", "/tmp")).joinpath("gap.json").write_text(json.dumps(res, indent=1))
