"""What a run decides once, before it trains: ``Settings``, frozen, read by training and stored in the result.

Usage:
    per_epoch = batches_per_process(len(features), batch_size=8, num_processes=2)
    steps = total_steps(exp.train, per_epoch)                # the schedule's, the loop's and AdaLoRA's count
    settings = Settings(family="causal", learning_rate=2e-4, total_steps=steps, ...)
    train(model, features, args=exp.train, settings=settings, accelerator=acc, pad_id=0)
    result.resolved = settings.to_dict()

Two layers of configuration, each assembled in one place. The declared config (``Experiment``: every
default filled in, the method's learning rate included) is the plan's: it is hashed, sent to the child
and stored as the result's ``config`` for every outcome, so a stored config always hashes to the stored
``config_hash``. What depends on the machine, the loaded model and the data (precision, family, the
weights' dtype, the speed switches, the steps per process) is decided here, once, and stored as the
result's ``resolved``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    family: str  # causal | seq2seq, from the loaded model's config
    tokenizer: str  # the tokenizer spec that was loaded
    learning_rate: float | None  # peak rate: the config's (the plan fills in the method's default); None: no training
    chat_template: bool  # prompts wrapped in the tokenizer's chat template
    mixed_precision: str  # no | bf16 | fp16, as the accelerator runs it
    device: str
    num_processes: int  # processes training together (data parallel or sharded)
    quantization: str | None  # the base's bitsandbytes quantisation
    distributed: dict  # strategy (single | ddp | fsdp), world_size, gradient_checkpointing
    dtype: str  # the weights' dtype while training
    batches_per_epoch: int  # one process's micro-batches in one pass over the training set
    total_steps: int  # optimizer steps, the same count on every process: the loop, the schedule, AdaLoRA
    speed: dict | None = None  # the speed switches (speed.resolve) with their reasons; None: no training

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def batches_per_process(n_examples: int, *, batch_size: int, num_processes: int) -> int:
    """Micro-batches one process draws per epoch: the epoch's batches dealt out over the processes
    (accelerate's sharded loader, ``even_batches``: every process gets as many)."""
    return math.ceil(math.ceil(n_examples / batch_size) / num_processes)


def total_steps(args, batches_per_epoch: int) -> int:
    """``train.max_steps``, or ``train.epochs`` passes over each process's share of the data."""
    if args.max_steps > 0:
        return args.max_steps
    return max(1, math.ceil(batches_per_epoch * args.epochs / args.gradient_accumulation_steps))


def for_loop(*, n_examples: int, args, learning_rate: float, accelerator, speed: dict | None = None) -> Settings:
    """Settings for the training loop alone (``train.train`` called on a bare model: tests, benchmarks),
    counted as a run counts them; what only a loaded model and tokenizer know is left unnamed."""
    n = accelerator.num_processes
    per_epoch = batches_per_process(n_examples, batch_size=args.batch_size, num_processes=n)
    return Settings(
        family="",
        tokenizer="",
        learning_rate=learning_rate,
        chat_template=False,
        mixed_precision=accelerator.mixed_precision,
        device=str(accelerator.device),
        num_processes=n,
        quantization=None,
        distributed={"strategy": "single" if n == 1 else "ddp", "world_size": n, "gradient_checkpointing": False},
        dtype="",
        batches_per_epoch=per_epoch,
        total_steps=total_steps(args, per_epoch),
        speed=speed,
    )
