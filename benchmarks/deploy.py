"""Deployed speed, size and quality per method and target, measured side by side in one stage.

Usage:
    # the edge question on this machine's CPU (pretrained SmolLM2-135M: quality is re-scored)
    python benchmarks/deploy.py --out benchmarks/results/deploy_cpu2 --threads 2
    # the same shapes on another CPU with random weights (speed and bytes only)
    python benchmarks/deploy.py --model random:smollm2-135m --tokenizer DIR --data file:/tmp/pbdata/cls.jsonl \
        --threads 4 --out /tmp/deploy_h200cpu
    # server deployment on a GPU: torchao weight-only int8 / int4 against the bf16 model
    python benchmarks/deploy.py --device cuda --model random:gpt2-medium --task language-modeling \
        --data file:/tmp/pbdata/lm.jsonl --targets torch,gpu-int8,gpu-int4 --out /tmp/deploy_gpu

One suite: none, full, LoRA and IA3 trained briefly on the task, then the measurement stage builds every
method's merged model for each target and times them all in the same interleaved rounds. The table gives,
per method and target, the p50 forward latency at batch 1 and batch 8 with its ratio to the reference
target (``cpu``, or ``torch`` on a GPU) paired over the rounds (95 % t interval on the log ratios), the
bytes that ship and their ratio, and the quality change after export with its paired bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def suite(args) -> dict:
    model = {"spec": args.model, "chat_template": args.chat_template}
    model.update({"tokenizer": args.tokenizer} if args.tokenizer else {})
    targets = args.targets.split(",")
    return {
        "name": "deploy",
        "defaults": {
            "model": model,
            "data": {
                "spec": args.data,
                "task": args.task,
                "max_train_samples": 256,
                "max_eval_samples": args.eval_samples,
                "max_source_length": 64,
            },
            "train": {"max_steps": args.steps, "batch_size": 8, "compile": "off"},
            "measure": {
                "rounds": args.rounds,
                "block_iterations": 2,
                "warmup": 2,
                "batch_size": 1,
                "large_batch_size": 8,
                "seq_len": args.seq_len,
                "new_tokens": 8,
                "generate": not args.no_generate,
                "optimized": "off",
                "targets": targets,
                "cpu_threads": args.threads,
            },
        },
        "experiments": [e for e in EXPERIMENTS if e["id"] in args.methods.split(",")],
    }


EXPERIMENTS = [
    {"id": "none", "method": {"name": "none"}},
    {"id": "full", "method": {"name": "full"}, "train": {"learning_rate": 5e-5}},
    {"id": "lora", "method": {"name": "lora"}, "train": {"learning_rate": 1e-3}},
    {"id": "ia3", "method": {"name": "ia3"}, "train": {"learning_rate": 1e-2}},
]


def _medians(doc: dict, scenario: str, name: str) -> list[float] | None:
    blocks = doc["timings"].get(scenario, {}).get(name)
    return [statistics.median(b) for b in blocks] if blocks else None


def table(doc: dict, reference: str) -> tuple[list[str], list[dict]]:
    from peftbench import stats
    from peftbench.fs import human_bytes

    lines, rows = [], []
    head = "| method | target | p50 b1 ms | vs ref b1 | p50 b8 ms | vs ref b8 | bytes | vs ref | quality change |"
    lines += [head, "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    src_of = {}
    for target, recs in doc["deploy"].items():
        for run_id, rec in recs.items():
            src_of.setdefault(run_id, {})[target] = rec
    for run_id, by_target in src_of.items():
        any_rec = next(iter(by_target.values()))
        ref_name = any_rec.get("source") if reference == "torch" else (by_target.get(reference) or {}).get("candidate")
        if reference == "torch":  # the PyTorch model's weights as held on the device
            ref_bytes = (doc["memory"].get(ref_name) or {}).get("resident_bytes")
        else:
            ref_bytes = (by_target.get(reference) or {}).get("bytes")
        for target, rec in [("torch", {"candidate": ref_name, "status": "built"})] * (reference == "torch") + list(
            by_target.items()
        ):
            if rec.get("status") != "built":
                lines.append(f"| {run_id} | {target} | {rec.get('reason')} | | | | | | |")
                continue
            if target == "torch":
                rec = {**rec, "bytes": ref_bytes}
            row = {"method": run_id, "target": target, "bytes": rec.get("bytes")}
            cells = []
            for b in (1, 8):
                mine, ref = _medians(doc, f"forward_b{b}", rec["candidate"]), _medians(doc, f"forward_b{b}", ref_name)
                if not mine:
                    cells += ["n/a", ""]
                    continue
                p50 = statistics.median(mine)
                row[f"p50_b{b}_ms"] = p50
                if ref and rec["candidate"] != ref_name:
                    c = stats.compare_rounds(ref, mine)  # ref time / my time - 1: my speed-up
                    sp = 1 + c.effect / 100
                    row[f"speedup_b{b}"] = [sp, 1 + c.low / 100, 1 + c.high / 100]
                    cells += [f"{p50:.2f}", f"{sp:.2f}× [{1 + c.low / 100:.2f}, {1 + c.high / 100:.2f}]"]
                else:
                    cells += [f"{p50:.2f}", "1 (ref)"]
            size = rec.get("bytes")
            ratio = f"{size / ref_bytes:.2f}×" if size and ref_bytes else ""
            q = (rec.get("quality_change") or {}).values()
            qtext = "; ".join(f"{c['effect']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]" for c in list(q)[:1]) or "n/a"
            row["quality_change"] = rec.get("quality_change")
            shipped = human_bytes(size) if size else ""
            lines.append(f"| {run_id} | {target} | {' | '.join(cells)} | {shipped} | {ratio} | {qtext} |")
            rows.append(row)
    return lines, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--task", default="classification")
    p.add_argument("--data", default="builtin:spam-assassin")
    p.add_argument("--targets", default="torch,cpu,onnx,onnx-int8,onnx-int4")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--methods", default="none,full,lora,ia3")
    p.add_argument("--chat-template", default="auto", help="model.chat_template (off: one-token labels, faster)")
    p.add_argument("--no-generate", action="store_true", help="forward latency only (ONNX decodes without a cache)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-samples", type=int, default=100)
    args = p.parse_args()
    runs = args.out / "runs"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "deploy.yaml"
    path.write_text(yaml.safe_dump(suite(args), sort_keys=False))
    cmd = [sys.executable, "-m", "peftbench", "run", str(path), "--out", str(runs), "--device", args.device]
    subprocess.run(cmd, check=True)
    (doc_path,) = (runs / "measurements").glob("*.json")
    doc = json.loads(doc_path.read_text())
    reference = "torch" if args.device == "cuda" else "cpu"
    lines, rows = table(doc, reference)
    env = doc["env"]
    head = [
        f"# Deployment benchmark: {args.model}, {args.task}, targets {args.targets}",
        "",
        f"Machine: {env.get('gpu') or env.get('cpu')} ({env.get('cpu_count')} cores), {args.threads} CPU threads; "
        f"{doc['rounds']} interleaved rounds, reference spread {100 * doc['reference']['spread']:.1f} %"
        f"{' (noisy)' if doc['noisy'] else ''}. Speed-ups against `{reference}` paired over rounds (95 % t on log "
        "ratios); quality change against the run's PyTorch result (paired bootstrap, 95 %).",
        "",
    ]
    (args.out.with_suffix(".md")).write_text("\n".join(head + lines) + "\n")
    (args.out.with_suffix(".json")).write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1)
    )
    print("\n".join(head + lines))


if __name__ == "__main__":
    main()
