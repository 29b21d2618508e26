"""The training loop: accelerate.Accelerator, AdamW, warm-up + decay, gradient accumulation.

Usage:
    out = train(model, features, args=train_args, settings=settings, accelerator=acc, pad_id=0,
                evaluate=lambda step: {...})      # settings: peftbench.run.settings.Settings
    out.loss_curve, out.eval_curve, out.laps, out.seconds, out.tokens_per_second, out.peak_memory_bytes

Nothing here reads a clock: the steps run inside a ``WorkTimer`` and a ``MemoryTracker``, and
periodic evaluations run with the timer paused, so tokens/s counts training work only. Each
logging interval is a lap (tokens, seconds), from which the report gives tokens/s an interval;
the first two steps are laps of their own, marked ``warmup`` (compilation, allocator warm-up), so
the steady rate leaves them out and ``warmup_seconds`` says what they cost beyond it.

The loss stays on the device and is read once per ``log_steps`` (no host sync per step); a NaN or
infinite loss then stops training with ``Diverged``. The speed switches (``speed.resolve``) pick
packed batches, a fused linear + cross-entropy loss, fused AdamW and ``torch.compile``. A batch without
padding says so to transformers' causal mask on the host (``run.unpadded``): no device read per step.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from peftbench.catalog.batches import (
    IGNORE,
    LengthGroupedBatches,
    fill_rows,
    grow_loss_positions,
    loss_positions,
    pack_batch,
    pack_seq2seq,
    pad_batch,
)
from peftbench.errors import Diverged
from peftbench.measure import MemoryTracker, Throughput, WorkTimer
from peftbench.measure.memory import tensor_bytes
from peftbench.measure.phases import clock_reader
from peftbench.run import compiletime, unpadded
from peftbench.run.distributed import peak_per_process, shard
from peftbench.run.graphed import GraphedStep, fixed_shape
from peftbench.run.settings import Settings
from peftbench.run.speed import CompiledRegions, LossModule, attention_kernels
from peftbench.spec.config import TrainArgs

WARMUP_STEPS = 2  # laps of their own, left out of the steady rate
PLAIN = {
    "compile": "off",
    "fused_optimizer": False,
    "fused_loss": "off",
    "packing": False,
    "group_by_length": False,
    "dataloader_workers": 0,
    "pin_memory": False,
    "sharded": False,
    "cuda_graphs": False,
    "graph_step": False,
    "cudnn_attention": True,
}


# the train section of a run that trains nothing (the zero-shot baseline)
UNTRAINED = {
    "steps": 0,
    "epochs": 0,
    "seconds": 0.0,
    "tokens": 0,
    "tokens_per_second": None,
    "samples_per_second": None,
    "peak_memory_bytes": None,
    "memory": None,
    "loss_curve": [],
    "laps": [],
    "learning_rate": None,
    "steady_tokens_per_second": None,
    "warmup_seconds": None,
    "padding_fraction": None,
    "speed": None,
    "gpu_clock_mhz": None,
    "examples_seen": 0,
}


@dataclass
class TrainResult:
    steps: int
    epochs: float
    seconds: float
    tokens: int
    tokens_per_second: float
    samples_per_second: float
    peak_memory_bytes: int
    memory: dict
    loss_curve: list[dict] = field(default_factory=list)
    eval_curve: list[dict] = field(default_factory=list)
    laps: list[dict] = field(default_factory=list)  # step, tokens, seconds (and warmup: true for the first steps)
    learning_rate: float = 0.0
    steady_tokens_per_second: float | None = None  # laps after the warm-up steps
    warmup_seconds: float | None = None  # what the warm-up steps cost beyond the steady rate (compilation)
    padding_fraction: float = 0.0  # share of the token slots processed that were padding
    speed: dict = field(default_factory=dict)  # the switches as they ran
    gpu_clock_mhz: dict | None = None  # the SM clock over the steady laps (NVML): min, median, max; None off GPUs


def make_loader(
    features: list[dict],
    *,
    batch_size: int,
    pad_id: int,
    seed: int,
    multiple_of: int = 1,
    speed: dict | None = None,
    start_id: int = 0,
) -> DataLoader:
    """Shuffled batches; padded (or packed) with the token counts of each batch. ``start_id``: an
    encoder-decoder's decoder start token (packed targets are shifted per example)."""
    speed = {**PLAIN, **(speed or {})}
    fixed = speed.get("fixed_shape") or {}  # the captured step's one shape (``run.graphed``)
    g = torch.Generator().manual_seed(seed)
    seq2seq = bool(features) and "decoder" in features[0]
    fused = speed["fused_loss"] != "off"

    def collate(batch):
        if speed["packing"] and seq2seq:
            out = pack_seq2seq(batch, pad_id=pad_id, start_id=start_id, multiple_of=multiple_of)
            real = sum(len(f["input_ids"]) for f in batch)
        elif speed["packing"]:
            out = pack_batch(batch, pad_id=pad_id, multiple_of=multiple_of)
            real = sum(len(f["input_ids"]) for f in batch)
        else:
            out = pad_batch(
                batch,
                pad_id=pad_id,
                multiple_of=multiple_of,
                length=fixed.get("length", 0),
                label_length=fixed.get("label_length", 0),
            )
            real = int(out["attention_mask"].sum())
        slots = out["input_ids"].numel()
        if seq2seq:  # the decoder's targets are processed tokens too
            n_target = int((out["labels"] != IGNORE).sum())
            real, slots = real + n_target, slots + out["labels"].numel()
        if fused:
            out["loss_index"], out["loss_targets"] = loss_positions(out["labels"])
            if fixed:
                out = grow_loss_positions(out, fixed["loss_positions"])
        out["num_tokens"], out["num_slots"], out["num_examples"] = real, slots, len(batch)
        out["unpadded"] = not seq2seq and not speed["packing"] and real == slots  # known here: no device read
        return out

    workers = speed["dataloader_workers"]
    if speed["group_by_length"]:
        order = {"batch_sampler": LengthGroupedBatches(features, batch_size=batch_size, seed=seed)}
    else:
        order = {"batch_size": batch_size, "shuffle": True, "generator": g, "drop_last": False}
    return DataLoader(
        features,
        **order,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=speed["pin_memory"],
        persistent_workers=workers > 0,
    )


def varying(features: list[dict]) -> bool:
    """Whether batches change shape: inputs of different lengths, or an encoder-decoder's targets of different
    lengths (its decoder's shape is the targets')."""
    if len({len(f["input_ids"]) for f in features}) > 1:
        return True
    return bool(features) and "decoder" in features[0] and len({len(f["labels"]) for f in features}) > 1


def log_every(args: TrainArgs, device_type: str) -> int:
    """``log_steps``, or when unset: every step on CPU, every 10 on GPUs (each read is a host sync)."""
    return args.log_steps if args.log_steps else (10 if device_type == "cuda" else 1)


@dataclass
class _Tally:
    """Counters of the loop; the loss sum stays on the device until a log step reads it."""

    tokens: int = 0
    slots: int = 0
    samples: int = 0
    micro: int = 0
    lap_tokens: int = 0
    loss_sum: torch.Tensor | float = 0.0
    loss_n: int = 0


def _optimizer(params, *, learning_rate: float, args: TrainArgs, fused: bool, device=None):
    """AdamW; ``device``: its step recorded in a CUDA graph (``capturable``, the learning rate a tensor there that
    the schedule fills in place)."""
    kw = {"fused": True} if fused else {}
    if device is not None:
        kw["capturable"], learning_rate = True, torch.tensor(learning_rate, dtype=torch.float32, device=device)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=args.weight_decay, **kw)


def compile_dynamic(features: list[dict]) -> bool:
    """How a run's graphs are compiled: for dynamic shapes at once where the examples' lengths vary; else static,
    and a batch of another shape than the first (the epoch's last, smaller batch) is grown to the first's by filler
    rows where it is an unpadded causal batch, else runs eagerly (``_Loop.fit``).
    Left to torch, that batch's recompilation marked the batch dimension dynamic and every later step ran the
    slower dynamic graph (one H200, gpt2-medium full fine-tuning: regions 95.9k tokens/s against 138k, a
    whole-model graph 7.7-29.6k); a static graph of its own cost a second compilation, once per shape (a cold
    whole-model one took longer than the 80 steps it served)."""
    return bool(varying(features))


def _prepare(model, loader, *, args, settings: Settings, accelerator, speed: dict, dynamic: bool, static: bool):
    """The loss module, optimizer, loader and schedule, placed by accelerate (or sharded: FSDP2), and
    the compiled regions when blocks are compiled one by one. The schedule is not given to accelerate:
    its ``AcceleratedScheduler`` steps once per process on every optimizer step (for a schedule sized
    for one process's data), so two processes reached the end of a ``max_steps`` schedule halfway.
    The loop steps it once per optimizer step instead, on every process alike."""
    from transformers import get_scheduler

    # the chunked loss compiled where it was measured faster (GPUs; on CPU it would add a C++ build to every run)
    compiled_loss = speed["compile"] != "off" and accelerator.device.type == "cuda"
    # static: the last batch may be grown by filler rows, whose targets the chunked loss masks
    masked = static or bool(speed.get("fixed_shape"))  # padded loss positions (``run.graphed``) are masked too
    module = LossModule(model, fused_loss=speed["fused_loss"], compiled=compiled_loss, masked=masked)
    if speed["sharded"]:  # FSDP2 replaces the parameters with shards: the optimizer is built on those
        speed["sharded"] = shard(module, mixed_precision=accelerator.mixed_precision) or True
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(
        params,
        learning_rate=settings.learning_rate,
        args=args,
        fused=speed["fused_optimizer"],
        device=accelerator.device if speed["graph_step"] else None,
    )
    steps = settings.total_steps
    warmup = int(args.warmup_ratio * steps)
    scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    if speed["sharded"]:  # not wrapped again (DDP): the loop's autocast gives the mixed precision
        optimizer, loader = accelerator.prepare(optimizer, loader)
    else:
        module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    regions = None
    graphs = {"mode": "reduce-overhead"} if speed["cuda_graphs"] else {}  # CUDA graphs: kernels replayed as one
    if speed["compile"] == "regions":
        regions = CompiledRegions(model, dynamic=dynamic, **graphs)
    elif speed["compile"] == "model":
        module = torch.compile(module, dynamic=dynamic, **graphs)
    return module, optimizer, loader, scheduler, params, regions


def _setup(model, features, *, args, settings, accelerator, pad_id, speed, hooks) -> tuple[_Loop, DataLoader]:
    """The loader, and the loop over the prepared (or sharded, or compiled) module and optimizer."""
    start_id = getattr(getattr(model, "config", None), "decoder_start_token_id", None) or 0
    multiple_of = 8 if accelerator.device.type == "cuda" else 1
    if speed["graph_step"] and hooks.get("step_hook"):  # a hook between steps (AdaLoRA's ranks) is host work
        speed["graph_step"] = False
        speed.setdefault("reasons", {})["graph_step"] = "off: a hook runs between the optimizer's steps"
    if speed["graph_step"] and accelerator.device.type != "cuda":  # a graph of host kernels records nothing
        speed["graph_step"] = False
        speed.setdefault("reasons", {})["graph_step"] = f"off: the model is on {accelerator.device}, not a CUDA device"
    if settings.speed is not None:  # what training turned off (a hook, a CPU device) is what `resolved` records
        settings.speed["graph_step"] = speed["graph_step"]
    if speed["graph_step"]:
        speed["fixed_shape"] = fixed_shape(features, batch_size=args.batch_size, multiple_of=multiple_of)
    loader = make_loader(
        features,
        batch_size=args.batch_size,
        pad_id=pad_id,
        seed=args.seed,
        multiple_of=multiple_of,
        speed=speed,
        start_id=start_id,
    )
    dynamic = compile_dynamic(features)
    # compiled graphs of one shape, or the captured step's (``_Loop.fit``)
    static = (speed["compile"] != "off" and not dynamic) or speed["graph_step"]
    module, optimizer, loader, scheduler, params, regions = _prepare(
        model,
        loader,
        args=args,
        settings=settings,
        accelerator=accelerator,
        speed=speed,
        dynamic=dynamic,
        static=static,
    )
    if len(loader) != settings.batches_per_epoch:  # the steps were counted for another split of the data
        raise RuntimeError(
            f"each process draws {len(loader)} batches per epoch, {settings.batches_per_epoch} were planned"
        )
    loop = _Loop(
        args=args,
        accelerator=accelerator,
        module=module,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        steps=settings.total_steps,
        learning_rate=settings.learning_rate,
        regions=regions,
        log_steps=log_every(args, accelerator.device.type),
        static=static,
        graphs=bool(speed["cuda_graphs"]),
        graph_step=speed["graph_step"],
        pad_id=pad_id,
        **hooks,
    )
    return loop, loader


def train(
    model: torch.nn.Module,
    features: list[dict],
    *,
    args: TrainArgs,
    settings: Settings,
    accelerator,
    pad_id: int,
    evaluate: Callable[[int], dict] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
    step_hook: Callable[[int], None] | None = None,
    on_log: Callable[[dict, int], None] | None = None,
    clock: Callable[[], int] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``settings.total_steps`` optimizer steps at ``settings.learning_rate``
    with ``settings.speed``'s switches; ``step_hook(step)`` runs after each optimizer step, before the
    gradients are cleared (AdaLoRA's rank reallocation); ``on_log(values, step)`` gets each logged
    loss and evaluation (experiment trackers); ``clock()``: the GPU's SM clock in MHz, read at every lap
    (default: NVML's, on NVIDIA GPUs)."""

    speed = {**PLAIN, **(settings.speed or {})}
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    clock = clock or clock_reader(accelerator.device)
    hooks = {"step_hook": step_hook, "on_log": on_log, "evaluate": evaluate, "progress": progress, "clock": clock}
    loop, loader = _setup(
        model,
        features,
        args=args,
        settings=settings,
        accelerator=accelerator,
        pad_id=pad_id,
        speed=speed,
        hooks=hooks,
    )
    regions = loop.regions
    model.train()
    compiled = compiletime.snapshot()
    try:
        with MemoryTracker(accelerator.device, resident_bytes=tensor_bytes(model)) as mem, unpadded.masks():
            with loop.timer.running(), attention_kernels(speed, accelerator.device.type):
                loop.run(loader, model)
    finally:
        if regions:
            regions.undo()  # evaluation and inference run the model as it was given
        loop.release_graphs()
    result = loop.finish(n_batches=len(loader))
    result.speed = {k: v for k, v in speed.items() if k != "reasons"}
    result.speed["compile_seconds"] = compiletime.since(compiled)  # the part of the warm-up spent compiling
    if loop.static:  # batches of another shape than the compiled one (the epoch's last): filled, or run eagerly
        result.speed["filled_batches"], result.speed["eager_batches"] = loop.filled_batches, loop.eager_batches
    if loop.stepper:  # the captured step: replays, and batches stepped eagerly beside it
        result.speed["graph_replays"], result.speed["graph_eager_steps"] = loop.stepper.replays, loop.eager_steps
        result.speed["graph_failed"] = loop.stepper.failed
    result.peak_memory_bytes = mem.result.peak_bytes
    result.memory = mem.result.to_dict()
    result.memory["per_process_peak_bytes"] = peak_per_process(accelerator, mem.result.peak_bytes)
    model.eval()
    return result


class _Loop:
    """The steps of one training run, with their laps, loss curve and periodic evaluations."""

    def __init__(
        self,
        *,
        args,
        accelerator,
        module,
        optimizer,
        scheduler,
        params,
        steps,
        learning_rate,
        regions,
        log_steps,
        evaluate,
        progress,
        step_hook=None,
        on_log=None,
        static=False,
        clock=None,
        pad_id=0,
        graphs=False,
        graph_step=False,
    ):
        self.args, self.acc, self.module, self.regions = args, accelerator, module, regions
        self.static, self.shape, self.eager_batches, self.filled_batches = static, None, 0, 0
        self.pad_id, self.loss_positions, self.graphs = pad_id, None, graphs
        self.stepper = GraphedStep(self._step, optimizer) if graph_step else None
        self.eager_steps = 0  # a captured step's batches that did not fit its shape
        self.warmup_steps = WARMUP_STEPS + bool(graph_step)  # the captured step: its recording is a lap too
        self.step_hook, self.on_log, self.clock = step_hook, on_log, clock
        self.optimizer, self.scheduler, self.params = optimizer, scheduler, params
        self.steps, self.log_steps, self.evaluate, self.progress = steps, log_steps, evaluate, progress
        self.timer = WorkTimer(accelerator.device)
        self.result = TrainResult(0, 0.0, 0.0, 0, 0.0, 0.0, 0, {}, learning_rate=learning_rate)
        self.t = _Tally()
        self.step = 0

    def release_graphs(self) -> None:
        """The recorded CUDA graphs (compiled, or the captured step) and their memory, released for what follows."""
        if self.stepper:
            self.stepper.release()
        if self.graphs:
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees

            reset_cudagraph_trees()

    def run(self, loader, model) -> None:
        while self.step < self.steps:
            for batch in loader:
                self._micro_step(batch)
                if not self.acc.sync_gradients:
                    continue
                self.step += 1
                self._after_step(model)
                if self.step >= self.steps:
                    return

    def _micro_step(self, batch: dict) -> None:
        t = self.t
        n_tok, n_slots, n_ex = batch.pop("num_tokens"), batch.pop("num_slots"), batch.pop("num_examples")
        batch, eager = self.fit(batch)
        n_slots = batch["input_ids"].numel() if batch.get("unpadded") else n_slots  # filler rows are processed slots
        loss = self.stepper(batch) if self.stepper else None
        if loss is not None:  # the captured step ran: forward to the optimizer's update
            self.scheduler.step()
        else:
            self.eager_steps += bool(self.stepper)
            loss = self._eager_step(batch, eager)
        t.tokens, t.lap_tokens, t.slots = t.tokens + n_tok, t.lap_tokens + n_tok, t.slots + n_slots
        t.samples, t.micro = t.samples + n_ex, t.micro + 1
        t.loss_sum = t.loss_sum + loss.detach().float()
        t.loss_n += 1

    def _step(self, batch: dict, eager: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
        """One micro-batch's forward, backward, clipping and ``optimizer.step()``: the step ``run.graphed`` records,
        and the eager loop's (``eager``: the compiled functions off for a batch of another shape)."""
        inputs = {k: v for k, v in batch.items() if k != "unpadded"}
        with self.acc.accumulate(self.module), eager or contextlib.nullcontext():
            with self.acc.autocast(), unpadded.batch(batch.get("unpadded", False)):  # a sharded module is not prepared
                loss = self.module(inputs)
            self.acc.backward(loss)
            if self.acc.sync_gradients and self.args.max_grad_norm > 0:
                self.acc.clip_grad_norm_(self.params, self.args.max_grad_norm)
            self.optimizer.step()  # accelerate's optimizer skips this between accumulated micro-batches
        return loss

    def _eager_step(self, batch: dict, eager) -> torch.Tensor:
        if self.graphs:  # a new step: the CUDA graphs' outputs of the last one are no longer read
            torch.compiler.cudagraph_mark_step_begin()
        loss = self._step(batch, eager)
        if self.acc.sync_gradients and not getattr(self.optimizer, "step_was_skipped", False):
            self.scheduler.step()  # once per optimizer step taken (fp16 skips a step on overflow)
        if self.step_hook and self.acc.sync_gradients:
            self.step_hook(self.step + 1)
        # a captured step's gradients live in its graph: zeroed, not dropped
        self.optimizer.zero_grad(set_to_none=self.stepper is None or self.stepper.graph is None)
        return loss

    def fit(self, batch: dict) -> tuple[dict, contextlib.AbstractContextManager]:
        """Compiled graphs for the first batch's shape. A batch of another shape where examples have one length
        (the epoch's last, smaller batch): grown to the first's rows by filler rows that count no loss, if it is
        an unpadded causal batch (the same loss and gradients, the full batch's graphs); else run eagerly (forward
        and backward): no second compilation, the same arithmetic."""
        nothing = contextlib.nullcontext()
        if not self.static:
            return batch, nothing
        shape = tuple(batch["input_ids"].shape)
        if self.shape is None:
            self.shape = shape
            self.loss_positions = batch["loss_index"].numel() if "loss_index" in batch else None
        if shape == self.shape:
            return batch, nothing
        # a captured step's padded causal batch may be filled too: filler rows attend within themselves
        fillable = batch.get("unpadded") or self.stepper
        if fillable and shape[1:] == self.shape[1:] and shape[0] < self.shape[0]:
            with contextlib.suppress(ValueError):  # rows of keys without a filler value: eager
                grown = fill_rows(batch, self.shape[0], pad_id=self.pad_id, loss_positions_len=self.loss_positions)
                self.filled_batches += 1
                return grown, nothing
        self.eager_batches += 1
        stack = contextlib.ExitStack()  # every compiled function eager: the blocks, the whole model, the chunked loss
        if self.regions:
            stack.enter_context(self.regions.off())
        stack.enter_context(torch.compiler.set_stance("force_eager"))
        return batch, stack

    def _after_step(self, model) -> None:
        step, args, t = self.step, self.args, self.t
        warm = step <= self.warmup_steps < self.steps - 1  # compilation and first allocations: laps of their own
        if warm or step % self.log_steps == 0 or step == self.steps:
            mean_loss = float(t.loss_sum) / t.loss_n  # the one host sync of the interval
            if not math.isfinite(mean_loss) and step == 1:  # before any update: not the learning rate
                raise Diverged(
                    f"the loss was {mean_loss} at the first step, before any update: the method's options "
                    f"or the data give no finite loss"
                )
            if not math.isfinite(mean_loss):
                raise Diverged(
                    f"diverged by step {step} (loss {mean_loss}): lower train.learning_rate "
                    f"(was {self.result.learning_rate:g})"
                )
            lap = {
                "step": step,
                "tokens": t.lap_tokens,
                "seconds": self.timer.lap(),
                **({"warmup": True} if warm else {}),
                **({"sm_clock_mhz": self.clock()} if self.clock else {}),
            }
            self.result.laps.append(lap)
            lr = float(self.scheduler.get_last_lr()[0])  # a tensor for a captured step's optimizer
            self.result.loss_curve.append({"step": step, "loss": round(mean_loss, 6), "learning_rate": lr})
            t.loss_sum, t.loss_n, t.lap_tokens = 0.0, 0, 0
            rate = t.tokens / max(self.timer.elapsed(), 1e-9)
            if self.progress:
                self.progress(step, mean_loss, rate)
            if self.on_log:
                self.on_log({"train/loss": mean_loss, "train/learning_rate": lr, "train/tokens_per_second": rate}, step)
        if self.evaluate and args.eval_steps and (step % args.eval_steps == 0 or step == self.steps):
            with self.timer.paused(), self.regions.off() if self.regions else contextlib.nullcontext():
                model.eval()
                self.result.eval_curve.append({"step": step, **self.evaluate(step)})
                model.train()
            if self.on_log:
                self.on_log({f"eval/{k}": v for k, v in self.result.eval_curve[-1].items() if k != "step"}, step)

    def finish(self, *, n_batches: int) -> TrainResult:
        r, t, acc = self.result, self.t, self.acc
        tokens, samples, slots = t.tokens, t.samples, t.slots
        if acc.num_processes > 1:  # every process trained on its own shard: add them up
            counts = acc.reduce(torch.tensor([tokens, samples, slots], device=acc.device), reduction="sum")
            tokens, samples, slots = (int(x) for x in counts.tolist())
        r.steps, r.epochs, r.seconds, r.tokens = (
            self.step,
            round(t.micro / max(1, n_batches), 4),
            self.timer.seconds,
            tokens,
        )
        r.tokens_per_second = Throughput.of(volume=tokens, seconds=self.timer.seconds, unit="tokens/s").value
        r.samples_per_second = Throughput.of(volume=samples, seconds=self.timer.seconds, unit="samples/s").value
        r.padding_fraction = round(1 - tokens / slots, 6) if slots else 0.0
        steady = [lap for lap in r.laps if not lap.get("warmup")]
        warm = [lap for lap in r.laps if lap.get("warmup")]
        clocks = sorted(lap["sm_clock_mhz"] for lap in steady if "sm_clock_mhz" in lap)
        if clocks:
            r.gpu_clock_mhz = {"min": clocks[0], "median": clocks[len(clocks) // 2], "max": clocks[-1]}
        secs = sum(lap["seconds"] for lap in steady)
        if secs > 0:
            rate = sum(lap["tokens"] for lap in steady) / secs * acc.num_processes
            r.steady_tokens_per_second = round(rate, 3)
            r.warmup_seconds = round(
                max(
                    0.0,
                    sum(lap["seconds"] for lap in warm) - sum(lap["tokens"] for lap in warm) * acc.num_processes / rate,
                ),
                4,
            )
        return r
