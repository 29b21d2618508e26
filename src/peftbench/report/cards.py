"""A model card for every saved adapter: ``adapters/<run>/README.md`` in the Hugging Face layout (YAML metadata,
then what was trained, how, how well, how fast and how big, and how to load it), so ``huggingface-cli upload``
publishes a self-describing adapter. Written with the report, when the verdict is known; the card is not part of
``storage.adapter_bytes`` (counted when the adapter was saved, before it).

Usage:
    write_cards(out_dir, results, verdict_groups)     # -> the cards written
"""

from __future__ import annotations

import json
from pathlib import Path

from peftbench import __version__
from peftbench.fs import human_bytes
from peftbench.results import write_text_atomic

HUB_PREFIXES = ("random:", "builtin:", "/", ".", "~")


def write_cards(out_dir: Path, results: list[dict], verdict_groups: list[dict]) -> list[Path]:
    written = []
    for r in results:
        folder = (r.get("storage") or {}).get("adapter_dir")
        if r.get("status") != "success" or not folder or not (Path(out_dir) / folder).is_dir():
            continue
        path = Path(out_dir) / folder / "README.md"
        write_text_atomic(path, card(r, _verdict_line(r, verdict_groups)))
        written.append(path)
    return written


def _verdict_line(r: dict, groups: list[dict]) -> str:
    for g in groups:
        if r["id"] in g.get("experiments", []):
            won = [m["label"] for m in g.get("measures", []) if r["id"] in (m.get("winners") or [])]
            others = len(g["experiments"]) - 1
            if not won:
                return f"Best (or tied for best) on no measure against the {others} other experiments of its group."
            return f"Best, or tied for best, against the {others} other experiments of its group on: {', '.join(won)}."
    return "No verdict (the experiment is alone in its group)."


def card(r: dict, verdict: str) -> str:
    base = r["config"]["model"]["spec"]
    method = r["config"]["method"]["name"]
    task = r["config"]["data"]["task"]
    full = method == "full"
    meta = {
        "library_name": "transformers" if full else "peft",
        "tags": ["peftbench", method, task],
        **({} if base.startswith(HUB_PREFIXES) else {"base_model": base}),
    }
    front = "\n".join(f"{k}: {json.dumps(v)}" for k, v in meta.items())
    lines = [f"---\n{front}\n---", "", f"# {r['id']}", ""]
    lines.append(
        f"{'Full fine-tuning' if full else method + ' adapter'} of `{base}` for {task}, trained and measured by "
        f"peftbench {__version__} (seed {r.get('seed')}, config hash `{r['config_hash']}`)."
    )
    lines += ["", "## Verdict", "", verdict, "", "## Results", ""]
    lines += _results_table(r)
    lines += ["", "## Configuration", "", "```json", json.dumps(_config(r), indent=1, sort_keys=True), "```", ""]
    lines += ["## How to load", "", "```python", *_load_lines(r, base, full), "```", ""]
    return "\n".join(lines)


def _results_table(r: dict) -> list[str]:
    rows = []
    interval = r.get("quality_interval") or {}
    for k, v in (r.get("quality") or {}).items():
        if v is None:
            rows.append((k, f"n/a ({r.get('quality_note') or 'not scored'})"))
        else:
            iv = interval.get(k) or {}
            ci = f" (95 % interval {iv['low']:g} to {iv['high']:g})" if iv.get("low") is not None else ""
            rows.append((f"{k} ({r.get('quality_split') or 'test'})", f"{v:g}{ci}"))
    params = r.get("params") or {}
    if params.get("trainable") is not None:
        rows.append(("trainable parameters", f"{params['trainable']:,} of {params.get('total', 0):,}"))
    storage = r.get("storage") or {}
    rows.append(("storage (every file)", human_bytes(storage.get("adapter_bytes") or 0)))
    if storage.get("adapter_weights_bytes") is not None:
        rows.append(("weights file(s)", human_bytes(storage["adapter_weights_bytes"])))
    tps = (r.get("train") or {}).get("tokens_per_second")
    if tps:
        rows.append(("training throughput", f"{tps:,.0f} tokens/s on {r.get('env', {}).get('device')}"))
    p50 = ((r.get("inference") or {}).get("latency_ms") or {}).get("p50_ms")
    if p50 is not None:
        rows.append(("forward latency p50", f"{p50:.2f} ms"))
    return ["| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def _config(r: dict) -> dict:
    cfg = r["config"]
    method = r.get("method_resolved") or cfg["method"]
    return {
        "method": {k: v for k, v in method.items() if v not in (None, {}, [], "")},
        "train": {k: cfg["train"].get(k) for k in ("max_steps", "batch_size", "learning_rate", "seed", "lr_scheduler")},
        "data": {k: cfg["data"].get(k) for k in ("spec", "task", "max_source_length", "max_target_length")},
    }


def _load_lines(r: dict, base: str, full: bool) -> list[str]:
    auto = "AutoModelForSeq2SeqLM" if r["config"]["model"].get("family") == "seq2seq" else "AutoModelForCausalLM"
    if full:
        return [f"from transformers import {auto}", "", f'model = {auto}.from_pretrained("path/to/this/folder")']
    if base.startswith(("random:", "builtin:")):  # no hub id: peftbench builds that base
        get = [
            "from peftbench.catalog.models import load",
            "from peftbench.spec.config import ModelArgs",
            "",
            f'base = load(ModelArgs(spec="{base}"), seed={r["config"]["model"].get("seed", 0)}).model',
        ]
    else:
        get = [f"from transformers import {auto}", "", f'base = {auto}.from_pretrained("{base}")']
    return ["from peft import PeftModel", *get, 'model = PeftModel.from_pretrained(base, "path/to/this/folder")']
