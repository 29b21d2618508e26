"""One run as a recipe: prepare -> train -> evaluate -> save -> measure -> commit, and its result record.

Usage:
    result = Recipe(run, out_dir=Path("runs/demo"), device="cpu").run()   # peftbench.run.record.execute writes it

Artefacts are committed in an order that a kill at any point cannot break: the adapter is written to a temp folder,
the old result is removed, the adapter folder is swapped in, and only then the new result is written; so a
``success`` never exists without its adapter, and temp folders left by a kill are cleaned by the next run.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from peftbench import results, stats
from peftbench.catalog import data as data_mod
from peftbench.catalog import methods, models, sources
from peftbench.catalog.forgetting import Probe
from peftbench.catalog.scoring import GENERATION, generation_mode
from peftbench.catalog.tasks import TASKS, mean_loss
from peftbench.errors import Pruned, Skipped
from peftbench.measure import dir_bytes
from peftbench.measure.inference import logits_for, measure_inference
from peftbench.measure.latency import reference_ms
from peftbench.measure.memory import free_cached_memory
from peftbench.measure.phases import Phases
from peftbench.measure.storage import file_sizes, saved_bytes, weights_bytes
from peftbench.results import Result
from peftbench.run import distributed
from peftbench.run.compiletime import compile_workers_for, stop_compile_workers
from peftbench.run.faults import fault_point
from peftbench.run.graphed import step_size
from peftbench.run.plan import Run
from peftbench.run.progress import progress
from peftbench.run.settings import Settings, batches_per_process, total_steps
from peftbench.run.speed import is_warm, mark_warm, planned_tokens, warm_key
from peftbench.run.speed import resolve as resolve_speed
from peftbench.run.tracking import Trackers, final_values
from peftbench.run.train import UNTRAINED, train, varying

log = logging.getLogger("peftbench")


class Recipe:
    """The phases of one run; ``run()`` drives them and returns the result (None off the main process)."""

    def __init__(
        self,
        run: Run,
        *,
        out_dir: Path,
        device: str = "auto",
        attempt: str | None = None,
        tracking: dict | None = None,
        timing: dict | None = None,
    ):
        self.plan, self.out_dir, self.device, self.attempt = run, Path(out_dir), device, attempt
        self.tracking = tracking or {}
        self.timing = timing or {}  # {"spawned_at": when the suite started this process, "plan_seconds": ...}
        self.phases: Phases | None = None
        self.trackers: Trackers | None = None
        self.exp = copy.deepcopy(run.exp)
        self.task = TASKS[self.exp.data.task]
        self.started = time.time()
        self.temp_dirs: list[Path] = []
        self.out: dict = {}  # result sections, filled phase by phase

    def run(self) -> Result | None:
        try:
            self.prepare()
            fault_point("prepared", self.plan.run_id)
            self._start_trackers()
            with self.phases("train"):
                self.train()
            if not self.main:  # under a multi-GPU launch, the main process evaluates, measures, records
                return None
            with self.phases("evaluate"):
                self.evaluate()
            with self.phases("forgetting"):  # phases never nest: each second is counted once
                self._forgetting_after()
            with self.phases("save"):
                self.save()
            with self.phases("measure"):
                self.measure()
            return self.commit()
        finally:
            if self.trackers:
                self.trackers.finish()
            for d in self.temp_dirs:
                shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------ phases

    def prepare(self) -> None:
        exp = self.exp
        began = time.perf_counter()
        self.strategy = distributed.strategy(exp.train, world_size=distributed.world_size())
        self.accelerator = distributed.make_accelerator(
            device=self.device,
            mixed_precision=exp.train.mixed_precision,
            grad_accum=exp.train.gradient_accumulation_steps,
        )
        self.dev = self.accelerator.device
        self.main = self.accelerator.is_main_process
        self._start_phases(began)
        self.workers = compile_workers_for(exp, self.accelerator)
        torch.manual_seed(exp.train.seed)
        self.quantization = exp.model.quantization or methods.lookup(exp.method.name).quantization
        if self.quantization:
            why = models.quantization_unavailable(self.quantization, self.dev)
            if why:
                raise Skipped(why)
        with self.phases("load"):
            self.loaded = models.load(exp.model, seed=exp.model.seed, device=self.dev)
            if self.strategy != "fsdp" and not self.quantization:  # the probe runs where the model will train
                self.loaded.model.to(self.dev)
        with self.phases("forgetting"):
            self._forgetting_before()
        self.loftq_factors = None
        if self.quantization:
            with self.phases("load"):  # LoftQ: full-precision init, then quantised
                if methods.lookup(exp.method.name).init_before_quantization:
                    self.loaded.model, self.loftq_factors = methods.loftq_base(
                        options=exp.method.options, model=self.loaded.model, family=self.loaded.family
                    )
                self.loaded = models.quantize(self.loaded, self.quantization, self.dev)
        self.chat = self._chat_template(self.loaded.tokenizer)
        with self.phases("encode"):
            self.splits = data_mod.load(exp.data)
            enc_kw = {"limit": exp.data.max_train_samples} if self.task.blocks else {}
            self.features = self._encode(self.splits.train, **enc_kw)
        if not self.features:
            raise ValueError(f"no training examples after tokenisation ({exp.data.spec})")
        n = self.accelerator.num_processes
        per_epoch = batches_per_process(len(self.features), batch_size=exp.train.batch_size, num_processes=n)
        self.steps = total_steps(exp.train, per_epoch)
        with self.phases("load"):  # the model as it will train: loaded, then wrapped by its method
            self._apply_method(self.loaded)
        self.params = models.count_parameters(self.model)  # before merging folds adapters away
        self.settings = self._settings(n, per_epoch)
        self.quality_on = self.loaded.pretrained
        strat = self.task.label_field
        self.eval_records = data_mod.sample(
            self.splits.validation, exp.train.eval_samples, seed=exp.data.seed, stratify=strat
        )

    def _start_phases(self, began: float) -> None:
        """The phase clocks, with this run's share of the suite's planning, its process's start-up and the device's
        (the accelerator, CUDA's context, the energy counter since ``began``: 0.2 s on the H200 host)."""
        self.phases = Phases(self.dev)
        if self.dev.type == "cuda":
            torch.empty(1, device=self.dev)  # the context is made here, not in the first phase that uses it
        self.phases.add("device", time.perf_counter() - began)
        if self.timing.get("plan_seconds") is not None:
            self.phases.add("plan", self.timing["plan_seconds"])
        if self.timing.get("spawned_at"):  # interpreter, imports and the payload, before this recipe
            self.phases.add("startup", max(0.0, self.started - self.timing["spawned_at"]))

    def _settings(self, n: int, per_epoch: int) -> Settings:
        """What this run decided on its machine (``resolved`` in the result)."""
        exp = self.exp
        return Settings(
            family=self.loaded.family,
            tokenizer=self.loaded.tokenizer_spec,
            learning_rate=exp.train.learning_rate if self.applied.trains else None,
            chat_template=self.chat,
            mixed_precision=self.accelerator.mixed_precision,
            device=str(self.dev),
            num_processes=n,
            quantization=self.quantization,
            distributed={
                "strategy": self.strategy,
                "world_size": n,
                "gradient_checkpointing": exp.train.gradient_checkpointing,
            },
            dtype=str(next(self.model.parameters()).dtype).replace("torch.", ""),
            batches_per_epoch=per_epoch,
            total_steps=self.steps,
            speed=self._speed() if self.applied.trains else None,
        )

    def train(self) -> None:
        exp, applied = self.exp, self.applied
        periodic = self._periodic_eval if self.quality_on and self.main else None
        # step 0 (before training) is the zero-shot baseline, measured once by the `none` experiment
        curve = [{"step": 0, **periodic(0)}] if periodic and exp.train.eval_steps and not applied.trains else []
        if not applied.trains:
            self.out["train"] = {**UNTRAINED, "eval_curve": curve, "examples": len(self.features)}
            return
        if exp.train.gradient_checkpointing:
            models.enable_checkpointing(self.model)
        if self.settings.speed["compile"] != "off":  # compiled graphs are reused by the next run's process
            sources.use_inductor_cache()
        before = reference_ms(self.dev)  # the machine's speed now, and after: drift between runs
        self.train_started = time.time()  # a pruned trial's cost is recorded from here
        with progress(total=self.settings.total_steps, desc=f"train {self.plan.run_id}") as bar:
            tr = train(
                self.model,
                self.features,
                args=exp.train,
                settings=self.settings,
                accelerator=self.accelerator,
                pad_id=self.loaded.tokenizer.pad_token_id,
                evaluate=periodic,
                step_hook=applied.step_hook,
                on_log=self.trackers.log if self.trackers else None,
                progress=lambda step, loss, tps: (
                    bar.set_postfix(loss=f"{loss:.4f}", tokens_per_s=f"{tps:,.0f}"),
                    bar.update(step - bar.n),
                ),
            )
        after = reference_ms(self.dev)
        if self.settings.speed["compile"] != "off":  # the next run of this model and method finds its graphs
            mark_warm(self.warm_key)
        self.model = self.accelerator.unwrap_model(self.model)
        self._release_training_state()
        if self.strategy == "fsdp":
            self._unshard()
        self.out["train"] = {
            **vars(tr),
            "eval_curve": curve + tr.eval_curve,
            "reference_ms": {"before": round(before, 5), "after": round(after, 5)},
            "examples": len(self.features),
            "examples_seen": tr.steps
            * exp.train.batch_size
            * exp.train.gradient_accumulation_steps
            * self.accelerator.num_processes,
        }

    def evaluate(self) -> None:
        """Validation (loss always; quality when a sweep selects on it) and test quality with intervals."""
        exp, splits = self.exp, self.splits
        lm = self.task.blocks
        # the periodic-evaluation sample when one is set (cheaper), else the capped validation split
        val_records = splits.validation if lm else self.eval_records
        val_feats = self._encode(
            val_records, **({"limit": exp.train.eval_samples or exp.data.max_eval_samples} if lm else {})
        )
        val = {
            "examples": len(val_records),
            "loss": round(
                mean_loss(
                    self.model,
                    val_feats,
                    tok=self.loaded.tokenizer,
                    family=self.loaded.family,
                    device=self.dev,
                    batch_size=exp.train.batch_size,
                ),
                6,
            )
            if val_feats
            else None,
        }
        if self.quality_on and self.plan.sweep:
            q = self._quality(
                val_records,
                desc=f"validation {self.plan.run_id}",
                limit=exp.train.eval_samples or exp.data.max_eval_samples,
            )
            val.update({k: v for k, v in q.items() if k in self.task.metrics})
        self.out["validation"] = val
        self.out["quality"] = dict.fromkeys(self.task.metrics)
        if not self.quality_on:
            return
        q = self._quality(splits.test, desc=f"test {self.plan.run_id}")
        samples = q.pop("samples")
        samples["fingerprint"] = stats.fingerprint([repr(sorted(r.items())) for r in splits.test])
        self.out["quality"] = {k: q[k] for k in self.task.metrics}
        self.out["quality_details"] = {k: v for k, v in q.items() if k not in self.task.metrics}
        self.out["quality_samples"] = samples
        self.out["quality_interval"] = {}
        for k in self.task.metrics:
            _, lo, hi = stats.bootstrap_interval(samples, k)
            self.out["quality_interval"][k] = {
                "low": round(lo, 4),
                "high": round(hi, 4),
                "level": stats.LEVEL,
                "method": f"bootstrap over {samples['n']} test examples, {stats.RESAMPLES} resamples",
            }
        if self.task.label_field:
            self.out["quality_baselines"] = data_mod.baselines(self.splits)

    def save(self) -> None:
        """The adapter (or full checkpoint) to a temp folder beside its final place."""
        workdir = self.out_dir / "adapters"
        workdir.mkdir(parents=True, exist_ok=True)
        self.adapter_tmp = Path(tempfile.mkdtemp(prefix=f".{self.plan.run_id}-", dir=workdir))
        self.temp_dirs.append(self.adapter_tmp)
        self.adapter_bytes, self.adapter_files = 0, {}
        if self.applied.trains:
            self.model.save_pretrained(self.adapter_tmp, safe_serialization=True)
            # peft's auto-generated model card is not part of the adapter: count weights + config only
            (self.adapter_tmp / "README.md").unlink(missing_ok=True)
            self.adapter_tmp.chmod(0o777 & ~results.umask())
            self.adapter_bytes, self.adapter_files = dir_bytes(self.adapter_tmp), file_sizes(self.adapter_tmp)
            fault_point("adapter-written", self.plan.run_id, path=next(self.adapter_tmp.glob("*.safetensors"), None))
        self.train_dtype = next(self.model.parameters()).dtype

    def measure(self) -> None:
        """Inference unmerged, then merged where the method can merge; then the full model's bytes."""
        exp, applied, dev = self.exp, self.applied, self.dev
        tok = self.loaded.tokenizer
        model = merged_model = self.model
        inference = None
        group = results.measurement_group(self.plan.exp.to_dict())
        if group is not None:  # timed with its group after training (measure.stage), never alone
            inference = {"stage": {"file": f"measurements/{group}.json"}}
        if exp.measure.enabled and group is None:
            self._cast(model, models.resolve_dtype(exp.measure.dtype, dev, inference=True))
            vocab = model.config.vocab_size if hasattr(model, "config") else len(tok)
            kw = {"family": self.loaded.family, "vocab_size": vocab, "args": exp.measure, "device": dev}
            with progress(desc=f"measure {self.plan.run_id}") as bar:

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
        self.out["inference"] = inference
        if methods.lookup(exp.method.name).trains_base:  # the checkpoint is the full model
            self.full_bytes = self.adapter_bytes
        else:
            self._cast(merged_model, self.train_dtype)
            base, weights = merged_model, None
            if hasattr(merged_model, "get_base_model"):  # not merged: the base model as it ships
                base = merged_model.get_base_model()
                weights = methods.base_state_dict(base)
            self.full_bytes = saved_bytes(
                base,
                scratch=self.out_dir / "adapters",
                cache=sources.cache_dir() / "full-model-bytes.json",
                state_dict=weights,
            )

    def commit(self) -> Result:
        """Remove the old result, swap the adapter in, and return the new result (the caller writes it)."""
        run_id = self.plan.run_id
        results.result_path(self.out_dir, run_id).unlink(missing_ok=True)
        final = self.out_dir / "adapters" / run_id
        if self.applied.trains:
            trash = None
            if final.exists():
                trash = final.with_name(f".{run_id}-old-{os.getpid()}")
                os.replace(final, trash)
                self.temp_dirs.append(trash)
            os.replace(self.adapter_tmp, final)
            fault_point("adapter-swapped", run_id)
        else:
            shutil.rmtree(final, ignore_errors=True)  # a `none` run ships nothing
        result = self._result(adapter_dir=str(Path("adapters") / run_id) if self.applied.trains else None)
        self._log_final(result)
        return result

    # ------------------------------------------------------------ helpers

    def _cast(self, model, dtype) -> None:
        """A bitsandbytes base keeps the dtypes it was quantised with (transformers refuses a cast)."""
        if not self.quantization:
            methods.cast(model, dtype)

    def _storage(self, adapter_dir: str | None) -> dict:
        return {
            "adapter_bytes": self.adapter_bytes,  # every file written, the config included (the report's "storage")
            "adapter_weights_bytes": weights_bytes(self.adapter_files),  # the weight files alone (peft's count)
            "adapter_files": self.adapter_files,
            "adapter_dir": adapter_dir,
            "full_model_bytes": self.full_bytes,
            "ratio_to_full": round(self.adapter_bytes / self.full_bytes, 8) if self.full_bytes else None,
            "dtype": str(self.train_dtype).replace("torch.", ""),
        }

    def _result(self, *, adapter_dir: str | None) -> Result:
        exp, loaded, splits = self.exp, self.loaded, self.splits
        total, trainable = self.params
        return Result(
            id=self.plan.experiment_id,
            run_id=self.plan.run_id,
            status="success",
            config=self.plan.exp.to_dict(),  # the plan's config, as hashed (what the run decided: `resolved`)
            config_hash=self.plan.config_hash,
            attempt=self.attempt,
            seed=exp.train.seed,
            resolved=self.settings.to_dict(),
            env=results.capture_env(str(self.dev)),
            method_resolved=self.applied.resolved,
            model={
                "spec": loaded.spec,
                "family": loaded.family,
                "tokenizer": loaded.tokenizer_spec,
                "pretrained": loaded.pretrained,
                "vocab_size": len(loaded.tokenizer),
            },
            data={
                "train_examples": len(self.features),
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
            storage=self._storage(adapter_dir),
            train=self.out["train"],
            validation=self.out.get("validation"),
            quality=self.out.get("quality"),
            quality_interval=self.out.get("quality_interval"),
            quality_samples=self.out.get("quality_samples"),
            quality_baselines=self.out.get("quality_baselines"),
            quality_note=loaded.quality_note,
            quality_split="test" if self.quality_on else None,
            quality_details=self.out.get("quality_details") or {},
            forgetting=self.out.get("forgetting"),
            phases=self.phases.to_dict(train_tokens=(self.out.get("train") or {}).get("tokens")),
            trial=None
            if self.plan.trial is None
            else {"number": self.plan.trial, "params": self.plan.trial_params, "default": self.plan.trial_default},
            generation={**GENERATION, "max_new_tokens": exp.data.max_target_length} if self.task.generates else None,
            inference=self.out.get("inference"),
            started_at=results.timestamp(self.started),
            finished_at=results.now(),
            wall_seconds=round(time.time() - self.started, 3),
        )

    def _start_trackers(self) -> None:
        """One tracker run per peftbench run, on the main process: the resolved config as hyperparameters."""
        if not self.tracking.get("log_with") or not self.main:
            return
        self.trackers = Trackers(
            self.tracking["log_with"],
            out_dir=self.out_dir,
            project=self.tracking.get("project") or "peftbench",
            run_name=self.plan.run_id,
        )
        self.trackers.start(
            {
                **self.exp.to_dict(),
                "resolved": self.settings.to_dict(),
                "run_id": self.plan.run_id,
                "config_hash": self.plan.config_hash,
            }
        )

    def _log_final(self, result: Result) -> None:
        """Quality, efficiency and storage numbers as the tracker run's last step."""
        if self.trackers:
            self.trackers.log(final_values(result), step=max(1, result.train.get("steps") or 0))

    def _unshard(self) -> None:
        """FSDP: the full weights gathered into a model rebuilt on the main process (a plain model from here)."""
        exp, full = self.exp, distributed.gather_full_state(self.model, main=self.main)
        self.model = self.applied.model = self.loaded.model = None  # the shards go before the full model comes
        free_cached_memory()
        if self.main:
            self._apply_method(models.load(exp.model, seed=exp.model.seed, device=self.dev))
            self.model.load_state_dict(full)

    def _apply_method(self, loaded: models.LoadedModel) -> None:
        """The method applied to the loaded model (at prepare, and again after sharded training)."""
        exp = self.exp
        self.applied = methods.apply(
            name=exp.method.name,
            options=exp.method.options,
            model=loaded.model,
            family=loaded.family,
            total_steps=self.steps,
            loftq_factors=self.loftq_factors,
        )
        self.model = self.applied.model.to(self.dev)

    def _speed(self) -> dict:
        """The speed switches for this run's device, model and data (``speed.resolve``): compilation where the
        run's tokens repay it (fewer needed when this model and method compiled here before)."""
        t, e, shapes_vary, n = self.exp.train, self.exp, varying(self.features), self.accelerator.num_processes
        tokens = planned_tokens(self.features, steps=self.steps, args=t, processes=n)
        precision = self.accelerator.mixed_precision
        self.warm_key = warm_key(e.model.spec, e.method.name, e.method.options, precision, shapes_vary)
        kw = {"family": self.loaded.family, "task": self.task.name, "model": self.model, "varying": shapes_vary}
        kw |= {"sharded": self.strategy == "fsdp", "tokens": tokens, "warm": is_warm(self.warm_key), "processes": n}
        kw |= step_size(self.model, self.features, rows=t.batch_size, device=self.dev)
        return stop_compile_workers(self.workers, resolve_speed(t, device_type=self.dev.type, **kw))

    def _release_training_state(self) -> None:
        """Optimizer states and gradients must not count towards inference memory."""
        self.accelerator.free_memory()  # drops accelerate's references to optimizer and scheduler
        self.model.zero_grad(set_to_none=True)
        free_cached_memory()

    def _forgetting_before(self) -> None:
        """The base model's NLL on the general-text probe, before any method touches it (LoftQ, a
        quantised base and PiSSA change the weights they start from)."""
        setting = self.exp.measure.forgetting
        ok = setting and self.loaded.pretrained and self.main
        self.probe = Probe.for_model(setting, self.loaded, data_seed=self.exp.data.seed) if ok else None
        self.before = self._probe_nll(self.loaded.model, "before") if self.probe else None

    def _forgetting_after(self) -> None:
        """The trained model on the same windows (the zero-shot run is its own base: 0, exactly)."""
        if self.probe is None:
            return
        after = self._probe_nll(self.model, "after") if self.applied.trains else list(self.before)
        self.out["forgetting"] = self.probe.record(self.before, after)

    def _probe_nll(self, model, when: str) -> list[float]:
        model = self.accelerator.unwrap_model(model)
        dev, batch = next(model.parameters()).device, max(1, self.exp.train.batch_size)  # FSDP's base: on the CPU
        with progress(total=None, desc=f"forgetting {when} {self.plan.run_id}"):
            return self.probe.nll(model, tok=self.loaded.tokenizer, device=dev, batch_size=batch)

    def _chat_template(self, tok) -> bool:
        wanted = self.exp.model.chat_template
        has = bool(getattr(tok, "chat_template", None))
        if wanted == "on" and not has:
            raise ValueError(
                f"model.chat_template: on, but the tokenizer of {self.exp.model.spec} has no chat template"
            )
        return self.loaded.family == "causal" and (wanted == "on" or (wanted == "auto" and has))

    def _encode(self, records, **kw) -> list[dict]:
        return self.task.encode(
            records,
            tok=self.loaded.tokenizer,
            family=self.loaded.family,
            args=self.exp.data,
            label_names=self.splits.label_names,
            chat=self.chat,
            **kw,
        )

    def _quality(self, records, *, desc: str, limit: int | None = None, periodic: bool = False) -> dict:
        exp = self.exp
        kwargs = {"limit": limit or exp.data.max_eval_samples} if self.task.blocks else {}
        if self.task.generates:  # (mode, why): eager between training steps, whose CUDA graphs are alive
            steps = -(-len(records) // max(1, exp.train.batch_size)) * exp.data.max_target_length
            value = "off" if periodic else exp.train.eval_generation
            kwargs["generation"] = generation_mode(value, device_type=self.dev.type, steps=steps)
        with progress(total=len(records), desc=desc) as bar:
            return self.task.evaluate(
                self.accelerator.unwrap_model(self.model),
                records,
                tok=self.loaded.tokenizer,
                family=self.loaded.family,
                args=exp.data,
                device=self.dev,
                batch_size=max(1, exp.train.batch_size),
                label_names=self.splits.label_names,
                progress=bar.update,
                chat=self.chat,
                **kwargs,
            )

    def _periodic_eval(self, step: int) -> dict:
        q = self._quality(self.eval_records, desc=f"eval@{step}", limit=self.exp.train.eval_samples, periodic=True)
        scores = {k: v for k, v in q.items() if isinstance(v, (int, float))}
        self._prune_check(step, scores)
        return scores

    def _prune_check(self, step: int, scores: dict) -> None:
        """A search's hopeless trial stops here: worse than the earlier trials' median at this step."""
        rule = self.plan.prune
        limit = (rule or {}).get("thresholds", {}).get(str(step))
        v = scores.get((rule or {}).get("key"))
        if limit is None or v is None:
            return
        if (v < limit) if rule["better"] == "max" else (v > limit):
            raise Pruned(
                f"pruned at step {step}: validation {rule['key']} {v:.4g} is worse than the earlier trials' "
                f"median {limit:.4g} at that step"
            )
