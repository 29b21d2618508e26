"""The training loop: accelerate.Accelerator, AdamW, warm-up + decay, gradient accumulation.

Usage:
    out = train(model, features, args=train_args, accelerator=acc, pad_id=0, learning_rate=2e-4,
                evaluate=lambda step: {...})
    out.loss_curve, out.eval_curve, out.laps, out.seconds, out.tokens_per_second, out.peak_memory_bytes

Nothing here reads a clock: the steps run inside a ``WorkTimer`` and a ``MemoryTracker``, and
periodic evaluations run with the timer paused, so tokens/s counts training work only. Each
logging interval is a lap (tokens, seconds), from which the report gives tokens/s an interval.
A NaN or infinite loss stops training at once with ``Diverged``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from peftbench.config import TrainArgs
from peftbench.errors import Diverged
from peftbench.measure import MemoryTracker, Throughput, WorkTimer
from peftbench.measure.memory import tensor_bytes
from peftbench.tasks import IGNORE, pad_batch


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
    laps: list[dict] = field(default_factory=list)  # per logging interval: step, tokens, seconds
    learning_rate: float = 0.0


def make_loader(features: list[dict], *, batch_size: int, pad_id: int, seed: int, multiple_of: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    seq2seq = bool(features) and "decoder" in features[0]

    def collate(batch):
        out = pad_batch(batch, pad_id=pad_id, multiple_of=multiple_of)
        # tokens processed: inputs plus, for encoder-decoders, the decoder's targets
        out["num_tokens"] = int(out["attention_mask"].sum()) + (int((out["labels"] != IGNORE).sum()) if seq2seq else 0)
        return out

    return DataLoader(features, batch_size=batch_size, shuffle=True, generator=g, collate_fn=collate, drop_last=False)


def total_steps(args: TrainArgs, n_batches: int) -> int:
    if args.max_steps > 0:
        return args.max_steps
    return max(1, math.ceil(n_batches * args.epochs / args.gradient_accumulation_steps))


def train(model: torch.nn.Module, features: list[dict], *, args: TrainArgs, accelerator, pad_id: int,
          learning_rate: float, evaluate: Callable[[int], dict] | None = None,
          progress: Callable[[int, float, float], None] | None = None) -> TrainResult:
    from transformers import get_scheduler

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    multiple = 8 if accelerator.device.type == "cuda" else 1
    loader = make_loader(features, batch_size=args.batch_size, pad_id=pad_id, seed=args.seed, multiple_of=multiple)
    steps = total_steps(args, len(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                              num_warmup_steps=int(args.warmup_ratio * steps), num_training_steps=steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    timer = WorkTimer(accelerator.device)
    result = TrainResult(0, 0.0, 0.0, 0, 0.0, 0.0, 0, {}, learning_rate=learning_rate)
    tokens = samples = micro = lap_tokens = 0
    running_loss, running_n = 0.0, 0
    step = 0
    with MemoryTracker(accelerator.device, resident_bytes=tensor_bytes(model)) as mem, timer.running():
        while step < steps:
            for batch in loader:
                n_tok = batch.pop("num_tokens")
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, args.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                tokens += n_tok
                lap_tokens += n_tok
                samples += batch["input_ids"].shape[0]
                micro += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise Diverged(f"diverged at step {step + 1} (loss {value}): lower train.learning_rate "
                                   f"(was {learning_rate:g})")
                running_loss += value
                running_n += 1
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if step % args.log_steps == 0 or step == steps:
                    mean_loss = running_loss / running_n
                    result.loss_curve.append({"step": step, "loss": round(mean_loss, 6),
                                              "learning_rate": scheduler.get_last_lr()[0]})
                    result.laps.append({"step": step, "tokens": lap_tokens, "seconds": timer.lap()})
                    running_loss, running_n, lap_tokens = 0.0, 0, 0
                    if progress:
                        progress(step, mean_loss, tokens / max(timer.elapsed(), 1e-9))
                if evaluate and args.eval_steps and (step % args.eval_steps == 0 or step == steps):
                    with timer.paused():
                        model.eval()
                        result.eval_curve.append({"step": step, **evaluate(step)})
                        model.train()
                if step >= steps:
                    break
    if accelerator.num_processes > 1:  # every process trained on its own shard: add them up
        counts = accelerator.reduce(torch.tensor([tokens, samples], device=accelerator.device), reduction="sum")
        tokens, samples = (int(x) for x in counts.tolist())
    result.steps = step
    result.epochs = round(micro / max(1, len(loader)), 4)
    result.seconds = timer.seconds
    result.tokens = tokens
    result.tokens_per_second = Throughput.of(volume=tokens, seconds=timer.seconds, unit="tokens/s").value
    result.samples_per_second = Throughput.of(volume=samples, seconds=timer.seconds, unit="samples/s").value
    result.peak_memory_bytes = mem.result.peak_bytes
    result.memory = mem.result.to_dict()
    model.eval()
    return result
