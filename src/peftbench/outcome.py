"""What a run leaves after training: inference measured unmerged and merged, the model's bytes on
disk, and the result record. Functions of a ``experiment.Recipe`` (its phases' state).

Usage:
    measure(recipe)                                  # recipe.out["inference"], recipe.full_bytes
    result(recipe, adapter_dir="adapters/<run>")     # the success Result
"""

from __future__ import annotations

import time

from peftbench import methods, models, results, sources, stats
from peftbench.measure.inference import logits_for, measure_inference
from peftbench.measure.storage import saved_bytes
from peftbench.progress import progress
from peftbench.results import Result
from peftbench.scoring import GENERATION


def _cast(recipe, model, dtype) -> None:
    """A bitsandbytes base keeps the dtypes it was quantised with (transformers refuses a cast)."""
    if not recipe.quantization:
        methods.cast(model, dtype)


def measure(recipe) -> None:
    """Inference unmerged, then merged where the method can merge; then the full model's bytes."""
    exp, applied, dev = recipe.exp, recipe.applied, recipe.dev
    tok = recipe.loaded.tokenizer
    model = merged_model = recipe.model
    inference = None
    if exp.measure.enabled:
        _cast(recipe, model, models.resolve_dtype(exp.measure.dtype, dev, inference=True))
        vocab = model.config.vocab_size if hasattr(model, "config") else len(tok)
        kw = {"family": recipe.loaded.family, "vocab_size": vocab, "args": exp.measure, "device": dev}
        with progress(desc=f"measure {recipe.plan.run_id}") as bar:

            def prog(label):
                bar.set_postfix_str(label)
                bar.update(1)

            inference = measure_inference(model, pad_id=tok.pad_token_id, progress=prog, **kw)
            inference["merged"], inference["merge_note"] = None, applied.merge_note
            if applied.can_merge and exp.measure.merged:
                before = logits_for(model, **kw)
                merged_model, inference["merge_note"] = methods.merge(model)
            if merged_model is not model:
                after = logits_for(merged_model, **kw)
                m = measure_inference(merged_model, pad_id=tok.pad_token_id, progress=prog, **kw)
                m.pop("shapes", None)
                m["max_abs_logit_diff"] = float((before - after).abs().max())
                overhead = stats.compare(
                    [stats.samples_of(inference["latency_ms"]["samples_ms"])],
                    [stats.samples_of(m["latency_ms"]["samples_ms"])],
                    "median",
                    relative=True,
                )
                m["unmerged_overhead_percent"] = round(overhead.effect, 3)
                m["unmerged_overhead_ci95"] = [round(overhead.low, 3), round(overhead.high, 3)]
                inference["merged"] = m
    elif applied.can_merge:
        merged_model, _ = methods.merge(model)
    recipe.out["inference"] = inference
    if exp.method.name == "full":
        recipe.full_bytes = recipe.adapter_bytes
    else:
        _cast(recipe, merged_model, recipe.train_dtype)
        base, weights = merged_model, None
        if hasattr(merged_model, "get_base_model"):  # not merged: the base model as it ships
            base = merged_model.get_base_model()
            weights = methods.base_state_dict(base)
        recipe.full_bytes = saved_bytes(
            base,
            scratch=recipe.out_dir / "adapters",
            cache=sources.cache_dir() / "full-model-bytes.json",
            state_dict=weights,
        )


def storage(recipe, adapter_dir: str | None) -> dict:
    return {
        "adapter_bytes": recipe.adapter_bytes,
        "adapter_files": recipe.adapter_files,
        "adapter_dir": adapter_dir,
        "full_model_bytes": recipe.full_bytes,
        "ratio_to_full": round(recipe.adapter_bytes / recipe.full_bytes, 8) if recipe.full_bytes else None,
        "dtype": str(recipe.train_dtype).replace("torch.", ""),
    }


def result(recipe, *, adapter_dir: str | None) -> Result:
    exp, loaded, splits = recipe.exp, recipe.loaded, recipe.splits
    total, trainable = recipe.params
    return Result(
        id=recipe.plan.experiment_id,
        run_id=recipe.plan.run_id,
        status="success",
        config=recipe.plan.exp.to_dict(),  # the plan's config, as hashed (what the run decided: `resolved`)
        config_hash=recipe.plan.config_hash,
        attempt=recipe.attempt,
        seed=exp.train.seed,
        resolved=recipe.settings.to_dict(),
        env=results.capture_env(str(recipe.dev)),
        method_resolved=recipe.applied.resolved,
        model={
            "spec": loaded.spec,
            "family": loaded.family,
            "tokenizer": loaded.tokenizer_spec,
            "pretrained": loaded.pretrained,
            "vocab_size": len(loaded.tokenizer),
        },
        data={
            "train_examples": len(recipe.features),
            "test_examples": len(splits.test),
            "validation_examples": len(splits.validation),
            "label_names": splits.label_names,
            **splits.info,
        },
        params={
            "total": total,
            "trainable": trainable,
            "trainable_percent": round(100 * trainable / total, 6) if total else None,
        },
        storage=storage(recipe, adapter_dir),
        train=recipe.out["train"],
        validation=recipe.out.get("validation"),
        quality=recipe.out.get("quality"),
        quality_interval=recipe.out.get("quality_interval"),
        quality_samples=recipe.out.get("quality_samples"),
        quality_baselines=recipe.out.get("quality_baselines"),
        quality_note=loaded.quality_note,
        quality_split="test" if recipe.quality_on else None,
        quality_details=recipe.out.get("quality_details") or {},
        generation={**GENERATION, "max_new_tokens": exp.data.max_target_length} if recipe.task.generates else None,
        inference=recipe.out.get("inference"),
        started_at=results.timestamp(recipe.started),
        finished_at=results.now(),
        wall_seconds=round(time.time() - recipe.started, 3),
    )
