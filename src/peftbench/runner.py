"""Run experiments: config -> model/data/method -> train -> measure -> result JSON.

Usage:
    code = run_suite(suite, out_dir=Path("runs/demo"), device="auto", force=False, only=None)
    result = run_experiment(exp, out_dir=Path("runs/x"), device="cpu")

A failing experiment is recorded as ``failed`` (with the error) and the suite goes on; Ctrl-C
records the running one as ``cancelled``. Completed results are skipped unless ``force``.
Adapters are written to a temporary folder and renamed into ``adapters/<id>/`` only on success.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from tqdm.auto import tqdm

from peftbench import data as data_mod
from peftbench import methods, models, results
from peftbench.config import Experiment, Suite
from peftbench.errors import ConfigError
from peftbench.measure import dir_bytes
from peftbench.measure.inference import inference_dtype, logits_for, measure_inference
from peftbench.measure.storage import file_sizes
from peftbench.tasks import GENERATION, TASKS
from peftbench.train import train

log = logging.getLogger("peftbench")


# ---------------------------------------------------------------- devices and accelerate

def resolve_device(name: str) -> str:
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: {name!r} is not auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return name


def make_accelerator(*, device: str, mixed_precision: str, grad_accum: int):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:  # one experiment after another: start from a clean state
        AcceleratorState._reset_state(reset_partial_state=False)
    use_cpu = device == "cpu" or not torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
    if not use_cpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 on by default on GPUs (DESIGN.md)
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum)


# ---------------------------------------------------------------- one experiment

def _bar(**kw):
    # disable=None: bars on a terminal, silent in logs and CI (no carriage-return noise)
    return tqdm(leave=False, dynamic_ncols=True, file=sys.stderr, disable=None, **kw)


def _quality(task, model, records, *, loaded, exp, device, label_names, desc: str, limit=None) -> dict:
    batch = max(1, exp.train.batch_size)
    with _bar(total=len(records), desc=desc) as bar:
        kwargs = {"limit": limit} if task.name == "language-modeling" else {}
        return task.evaluate(model, records, tok=loaded.tokenizer, family=loaded.family, args=exp.data,
                             device=device, batch_size=batch, label_names=label_names,
                             progress=bar.update, **kwargs)


def _save_model_bytes(model, workdir: Path) -> tuple[int, dict]:
    target = Path(tempfile.mkdtemp(prefix="full-", dir=workdir))
    try:
        model.save_pretrained(target, safe_serialization=True)
        return dir_bytes(target), file_sizes(target)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def run_experiment(exp: Experiment, *, out_dir: Path, device: str = "auto") -> dict:
    """Run one experiment and return its (successful) result dict; raises on failure."""
    exp = copy.deepcopy(exp)
    started = time.time()
    task = TASKS[exp.data.task]
    accelerator = make_accelerator(device=device, mixed_precision=exp.train.mixed_precision,
                                   grad_accum=exp.train.gradient_accumulation_steps)
    dev = accelerator.device
    torch.manual_seed(exp.train.seed)

    loaded = models.load(exp.model, seed=exp.train.seed, device=dev)
    exp.model.family = loaded.family
    exp.model.tokenizer = loaded.tokenizer_spec
    exp.train.mixed_precision = accelerator.mixed_precision
    splits = data_mod.load(exp.data, seed=exp.train.seed)
    tok = loaded.tokenizer
    lm = task.name == "language-modeling"
    enc_kw = {"limit": exp.data.max_train_samples} if lm else {}
    features = task.encode(splits.train, tok=tok, family=loaded.family, args=exp.data,
                           label_names=splits.label_names, **enc_kw)
    if not features:
        raise ValueError(f"no training examples after tokenisation ({exp.data.spec})")

    applied = methods.apply(name=exp.method.name, options=exp.method.options, model=loaded.model, family=loaded.family)
    model = applied.model.to(dev)
    lr = exp.train.learning_rate if exp.train.learning_rate is not None else applied.learning_rate
    exp.train.learning_rate = lr if applied.trains else None
    total, trainable = models.count_parameters(model)
    quality_on = loaded.pretrained and accelerator.is_main_process
    eval_records = splits.validation[: exp.train.eval_samples] if exp.train.eval_samples else splits.validation
    eval_limit = exp.train.eval_samples or exp.data.max_eval_samples

    def periodic_eval(step: int) -> dict:
        if not quality_on:
            return {}
        m = _quality(task, accelerator.unwrap_model(model), eval_records, loaded=loaded, exp=exp, device=dev,
                     label_names=splits.label_names, desc=f"eval@{step}", limit=eval_limit)
        return {k: v for k, v in m.items() if isinstance(v, (int, float))}

    # validation quality against step; step 0 (before training) is the zero-shot baseline, measured
    # once by the `none` experiment (LoRA and IA3 start as the identity, so it is every method's step 0)
    eval_curve = [{"step": 0, **periodic_eval(0)}] if quality_on and exp.train.eval_steps and not applied.trains else []
    if applied.trains:
        with _bar(total=exp.train.max_steps if exp.train.max_steps > 0 else None, desc=f"train {exp.id}") as bar:
            tr = train(model, features, args=exp.train, accelerator=accelerator, pad_id=tok.pad_token_id,
                       learning_rate=lr, evaluate=periodic_eval if quality_on else None,
                       progress=lambda step, loss: (bar.update(step - bar.n), bar.set_postfix(loss=f"{loss:.4f}")))
        model = accelerator.unwrap_model(model)
        train_out = {k: v for k, v in vars(tr).items()}
        train_out["eval_curve"] = eval_curve + tr.eval_curve
    else:
        train_out = {"steps": 0, "epochs": 0, "seconds": 0.0, "tokens": 0, "tokens_per_second": None,
                     "samples_per_second": None, "peak_memory_bytes": None, "memory": None, "loss_curve": [],
                     "eval_curve": eval_curve, "learning_rate": None}
    train_out["examples"] = len(features)

    result: dict = {"schema": results.SCHEMA, "id": exp.id, "status": "success", "error": None}
    if not accelerator.is_main_process:
        return result

    # quality on the held-out test split
    quality_note = loaded.quality_note
    quality: dict = dict.fromkeys(task.metrics)
    extra: dict = {}
    if quality_on:
        q = _quality(task, model, splits.test, loaded=loaded, exp=exp, device=dev, label_names=splits.label_names,
                     desc=f"test {exp.id}", limit=exp.data.max_eval_samples)
        quality = {k: v for k, v in q.items() if isinstance(v, (int, float))}
        extra = {k: v for k, v in q.items() if not isinstance(v, (int, float))}

    # storage: what ships for this method, from the files actually written
    workdir = Path(out_dir) / "adapters"
    workdir.mkdir(parents=True, exist_ok=True)
    adapter_tmp = Path(tempfile.mkdtemp(prefix=f".{exp.id}-", dir=workdir))
    final_dir = workdir / exp.id
    adapter_bytes, adapter_files = 0, {}
    if applied.trains:
        model.save_pretrained(adapter_tmp, safe_serialization=True)
        # peft's auto-generated model card is not part of the adapter: count weights + config only
        (adapter_tmp / "README.md").unlink(missing_ok=True)
        adapter_tmp.chmod(0o755)
        adapter_bytes, adapter_files = dir_bytes(adapter_tmp), file_sizes(adapter_tmp)
    train_dtype = next(model.parameters()).dtype

    # inference, unmerged then merged
    inference = None
    merged_model = model
    if exp.measure.enabled:
        idt = inference_dtype(exp.measure.dtype, dev)
        model.to(idt)
        vocab = model.config.vocab_size if hasattr(model, "config") else len(tok)
        with _bar(desc=f"measure {exp.id}") as bar:
            def prog(label):
                bar.set_postfix_str(label)
                bar.update(1)

            inference = measure_inference(model, family=loaded.family, vocab_size=vocab, args=exp.measure,
                                          device=dev, pad_id=tok.pad_token_id, progress=prog)
            inference["merged"] = None
            if applied.can_merge and exp.measure.merged:
                before = logits_for(model, family=loaded.family, vocab_size=vocab, args=exp.measure, device=dev)
                merged_model = model.merge_and_unload()
                after = logits_for(merged_model, family=loaded.family, vocab_size=vocab, args=exp.measure, device=dev)
                m = measure_inference(merged_model, family=loaded.family, vocab_size=vocab, args=exp.measure,
                                      device=dev, pad_id=tok.pad_token_id, progress=prog)
                m.pop("shapes", None)
                m["max_abs_logit_diff"] = float((before - after).abs().max())
                m["unmerged_overhead_percent"] = round(
                    100 * (inference["latency_ms"]["p50_ms"] / m["latency_ms"]["p50_ms"] - 1), 3)
                inference["merged"] = m
    elif applied.can_merge:
        merged_model = model.merge_and_unload()

    if exp.method.name == "full":
        full_bytes = adapter_bytes
    else:
        merged_model.to(train_dtype)
        base = merged_model.get_base_model() if hasattr(merged_model, "get_base_model") and not applied.can_merge else merged_model
        full_bytes, _ = _save_model_bytes(base, workdir)
    if applied.trains:
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(adapter_tmp, final_dir)
    else:
        shutil.rmtree(adapter_tmp, ignore_errors=True)

    config = exp.to_dict()
    result.update({
        "config": config,
        "method_resolved": applied.resolved,
        "env": results.capture_env(str(dev)),
        "model": {"spec": loaded.spec, "family": loaded.family, "tokenizer": loaded.tokenizer_spec,
                  "pretrained": loaded.pretrained, "vocab_size": len(tok)},
        "data": {"train_examples": len(features), "test_examples": len(splits.test),
                 "validation_examples": len(splits.validation), "label_names": splits.label_names, **splits.info},
        "params": {"total": total, "trainable": trainable,
                   "trainable_percent": round(100 * trainable / total, 6) if total else None},
        "storage": {"adapter_bytes": adapter_bytes, "adapter_files": adapter_files,
                    "adapter_dir": str(Path("adapters") / exp.id) if applied.trains else None,
                    "full_model_bytes": full_bytes,
                    "ratio_to_full": round(adapter_bytes / full_bytes, 8) if full_bytes else None,
                    "dtype": str(train_dtype).replace("torch.", "")},
        "train": train_out,
        "quality": quality,
        "quality_note": quality_note,
        "quality_split": "test" if quality_on else None,
        "quality_details": extra,
        "generation": {**GENERATION, "max_new_tokens": exp.data.max_target_length}
        if task.name == "summarization" else None,
        "inference": inference,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
        "finished_at": results.now(),
        "wall_seconds": round(time.time() - started, 3),
    })
    return result


def _failure(exp: Experiment, status: str, err: BaseException, started: float, device: str) -> dict:
    return {"schema": results.SCHEMA, "id": exp.id, "status": status,
            "error": f"{type(err).__name__}: {err}".strip() if status == "failed" else "interrupted",
            "traceback": traceback.format_exc(limit=20) if status == "failed" else None,
            "config": exp.to_dict(), "env": results.capture_env(device),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)), "finished_at": results.now(),
            "wall_seconds": round(time.time() - started, 3)}


def select(suite: Suite, only: str | None) -> list[Experiment]:
    if not only:
        return list(suite.experiments)
    chosen = [e for e in suite.experiments if fnmatch.fnmatch(e.id, only)]
    if not chosen:
        raise ConfigError(f"--only {only!r} matches no experiment id of suite {suite.name}")
    return chosen


def run_suite(suite: Suite, *, out_dir: Path, device: str = "auto", force: bool = False,
              only: str | None = None, report: bool = True, echo=print) -> int:
    """Run the suite's experiments; returns the exit code (0 all succeeded, 1 some failed)."""
    from accelerate import PartialState

    device = resolve_device(device)
    todo = select(suite, only)
    main_process = PartialState(cpu=device == "cpu").is_main_process  # `accelerate launch`: one process talks
    if not main_process:
        echo = lambda *a, **k: None  # noqa: E731
    out_dir = Path(out_dir)
    failed = 0
    for i, exp in enumerate(todo, 1):
        path = results.result_path(out_dir, exp.id)
        if not force and results.is_complete(path):
            echo(f"[{i}/{len(todo)}] {exp.id}: done, skipped (--force reruns)")
            continue
        echo(f"[{i}/{len(todo)}] {exp.id}: running")
        started = time.time()
        try:
            result = run_experiment(exp, out_dir=out_dir, device=device)
        except KeyboardInterrupt as e:
            results.write_json_atomic(path, _failure(exp, "cancelled", e, started, device))
            raise
        except Exception as e:  # recorded, and the suite goes on
            result = _failure(exp, "failed", e, started, device)
            log.debug("experiment %s failed\n%s", exp.id, result["traceback"])
        finally:
            _free_memory()
        if "config" not in result:  # not the main process
            continue
        results.write_json_atomic(path, result)
        if result["status"] == "success":
            echo(f"[{i}/{len(todo)}] {exp.id}: {_summary_line(result)}")
        else:
            failed += 1
            echo(f"[{i}/{len(todo)}] {exp.id}: FAILED {result['error']}")
    if report and main_process:
        from peftbench.report import build_report

        with contextlib.suppress(Exception):
            paths = build_report(out_dir)
            echo(f"report: {paths['md']} (and {paths['html'].name}, {paths['csv'].name}, plots/)")
    return 1 if failed else 0


def _summary_line(r: dict) -> str:
    q = {k: v for k, v in (r.get("quality") or {}).items() if v is not None}
    qs = ", ".join(f"{k}={v:.4g}" for k, v in q.items()) or f"quality n/a ({r.get('quality_note')})"
    inf = r.get("inference") or {}
    lat = (inf.get("latency_ms") or {}).get("p50_ms")
    parts = [qs, f"trainable={r['params']['trainable']:,}", f"adapter={r['storage']['adapter_bytes']:,} B"]
    if lat is not None:
        parts.append(f"p50={lat:.2f} ms")
    return "; ".join(parts)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
