"""The stage's deployment targets: each candidate in the form it ships, timed in the stage's rounds and re-scored.

Usage (inside ``measure.stage.measure_group``):
    built, records = deploy_candidates(cands, runs, args=args, family="causal", workdir=tmp)
    ... the built candidates join the stage's rounds beside the PyTorch ones ...
    checks(built, cands, forward=...)                          # logits against PyTorch's at the fixed shape
    rescore(built, runs, records, loaded=loaded)               # the task's test examples, re-scored

For every target of ``measure.targets`` but ``torch``, each run's deployable model (the base for zero-shot,
the merged adapter, the full checkpoint) is built by ``deploy.build.Builder``; a run without one (a method
that does not merge, a family the format lacks, a target this machine cannot run) gets a record saying why
and no numbers. Quality after export is the run's own test metric recomputed from the deployed model's
answers on the same examples, with its paired difference from the PyTorch result (``stats.compare``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peftbench import stats
from peftbench.deploy import targets as targets_mod
from peftbench.deploy.build import Builder

log = logging.getLogger("peftbench")


@dataclass
class Built:
    name: str  # "<source candidate>@<target>"
    source: str  # the PyTorch candidate it was made from
    run_id: str
    target: str
    model: torch.nn.Module
    device: torch.device
    resident: int
    record: dict = field(default_factory=dict)


def _sources(cands, runs, aliases: dict) -> dict[str, object | str]:
    """run id -> the candidate a target deploys (or why it has none)."""
    by_run: dict[str, dict] = {}
    for c in cands:
        if c.run_id is not None:
            by_run.setdefault(c.run_id, {})[c.role] = c
    out = {}
    for r in runs:
        if r.run_id in aliases:
            continue
        roles = by_run.get(r.run_id, {})
        c = roles.get("merged") or roles.get("base") or roles.get("full")
        out[r.run_id] = c or "not exportable: the method does not merge into the base's weights"
    return out


def skip_reason(name: str) -> str | None:
    """Why a whole target is left out on this machine (recorded ``skipped``)."""
    t = targets_mod.TARGETS[name]
    if t.skip_when_missing and targets_mod.missing_extra(name):
        return f"skipped: {', '.join(t.modules)} is not installed (pip install 'peftbench[{t.extra}]', a source build)"
    if t.skip_when_missing:
        return "skipped: peftbench does not write GGUF files yet"
    if t.device == "cuda" and not torch.cuda.is_available():
        return "skipped: needs a CUDA GPU"
    return None


def deploy_candidates(cands, runs, *, args, family: str, aliases: dict, workdir: Path) -> tuple[list[Built], dict]:
    """Every run's deployable model built for every non-torch target; records of each (built or not)."""
    wanted = [t for t in (args.targets or ["torch"]) if t != "torch"]
    if not wanted:
        return [], {}
    builder = Builder(family=family, threads=targets_mod.thread_count(args.cpu_threads), workdir=workdir)
    sources = _sources(cands, runs, aliases)
    built, records = [], {}
    for target in wanted:
        skip = skip_reason(target)
        for run_id, src in sources.items():
            rec = {"target": target, "run_id": run_id, "status": "built", "reason": None}
            records.setdefault(target, {})[run_id] = rec
            merges = not isinstance(src, str)
            why = skip or (src if isinstance(src, str) else None)
            why = why or targets_mod.not_exportable(target, family=family, merges=merges)
            if why:
                rec.update(status="skipped" if why.startswith("skipped") else "not exportable", reason=why)
                continue
            try:
                d = builder.build(target, name=src.name, model=src.model)
            except Exception as e:  # an exporter's or quantiser's refusal: recorded, the others go on
                log.warning("%s for %s: %s", target, run_id, e)
                rec.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
                continue
            rec.update(
                candidate=f"{src.name}@{target}",
                source=src.name,
                bytes=d.bytes,
                export_seconds=round(d.export_seconds, 3),
                load_seconds=round(d.load_seconds, 3),
                threads=builder.threads if d.device.type == "cpu" else None,
                note=d.note,
            )
            built.append(
                Built(f"{src.name}@{target}", src.name, run_id, target, d.model, d.device, d.resident_bytes, rec)
            )
    return built, records


@torch.inference_mode()
def checks(built: list[Built], cands, *, forward) -> None:
    """Each built model's logits against its PyTorch source's at the stage's forward shape: the largest
    difference and the share of positions whose top token agrees (1.0 and ~1e-6 for fp32 exports)."""
    by_name = {c.name: c for c in cands}
    for b in built:
        src = by_name[b.source]
        ref = forward(src.model).logits.float().cpu()
        got = forward(b.model).logits.float().cpu()
        b.record["max_abs_logit_diff"] = float((ref - got).abs().max())
        b.record["top1_agreement"] = round(float((ref.argmax(-1) == got.argmax(-1)).float().mean()), 6)
        b.record["reference_dtype"] = str(next(src.model.parameters()).dtype).replace("torch.", "")


def rescore(built: list[Built], runs, *, loaded, family: str) -> None:
    """The task's test metric of each built model on the run's own test examples, paired with the run's."""
    from peftbench.catalog import data as data_mod
    from peftbench.catalog.tasks import TASKS
    from peftbench.spec.config import DataArgs

    by_run = {r.run_id: r for r in runs}
    splits_cache: dict[str, object] = {}
    for b in built:
        run = by_run[b.run_id]
        if not run.quality_samples:
            b.record["quality"] = None
            b.record["quality_note"] = run.quality_note or "no test quality in the run"
            continue
        cfg = run.config["data"]
        dargs = DataArgs(**{k: v for k, v in cfg.items() if k in DataArgs.__dataclass_fields__})
        key = json.dumps(cfg, sort_keys=True)
        if key not in splits_cache:
            splits_cache[key] = data_mod.load(dargs)
        splits = splits_cache[key]
        task = TASKS[dargs.task]
        q = task.evaluate(
            b.model,
            splits.test,
            tok=loaded.tokenizer,
            family=family,
            args=dargs,
            device=b.device,
            batch_size=max(1, run.config["train"]["batch_size"]),
            label_names=splits.label_names,
            chat=bool(run.resolved.get("chat_template")),
            **({"limit": dargs.max_eval_samples} if task.blocks else {}),
        )
        samples = q.pop("samples")
        samples["fingerprint"] = run.quality_samples.get("fingerprint")
        b.record["quality"] = {k: q[k] for k in task.metrics}
        b.record["quality_change"] = {}
        for k in task.metrics:
            c = stats.compare([samples], [run.quality_samples], k)
            b.record["quality_change"][k] = {
                "effect": round(c.effect, 4),
                "low": round(c.low, 4),
                "high": round(c.high, 4),
                "p_value": round(c.p_value, 4),
                "significant": c.significant,
                "test": c.test,
            }
        b.record["quality_samples"] = samples
