"""Processes and sharding: the accelerator, the strategy a run trains under, and the full model back
on the main process after sharded training.

Usage:
    acc = make_accelerator(device="auto", mixed_precision="auto", grad_accum=1)
    shard(module, mixed_precision="bf16")    # train.distributed: fsdp, before the optimizer is built
    strategy(train_args, world_size=2)       # "single" | "ddp" | "fsdp"
    full = gather_full_state(model, main=acc.is_main_process)   # every rank calls it; tensors on the main one

Several processes come from a launcher (``peftbench run --gpus N``, ``accelerate launch``, or
``accelerate launch --num_machines M --machine_rank R`` across machines; see the README); one
process per GPU. ``ddp`` keeps a whole model per GPU and averages gradients; ``fsdp`` (FSDP2:
torch's ``fully_shard``, as accelerate's plugin calls it) shards weights, gradients and optimizer
states over the processes, one unit per repeated block (the model's ``_no_split_modules``), for
models whose training state does not fit one GPU. After sharded training the main process
gathers the full weights and rebuilds the model, so evaluation, saving and inference run on a plain
model, as after data-parallel training.
"""

from __future__ import annotations

import os

import torch

from peftbench.catalog.models import bf16_by_default

_LAUNCHER_FSDP = os.environ.get("ACCELERATE_USE_FSDP")  # as the launcher left it, before any Accelerator


def world_size() -> int:
    """Processes started by a launcher (``WORLD_SIZE``); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def strategy(args, *, world_size: int) -> str:
    """What ``train.distributed`` resolves to here: ``single`` with one process."""
    if world_size <= 1:
        return "single"
    if args.distributed == "auto":  # `accelerate launch --use_fsdp` asks for sharding too
        return "fsdp" if (_LAUNCHER_FSDP or "").lower() == "true" else "ddp"
    return args.distributed


def make_accelerator(*, device: str, mixed_precision: str, grad_accum: int):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    if AcceleratorState._shared_state:  # --in-process: one experiment after another in one process
        AcceleratorState._reset_state(reset_partial_state=True)  # the process group stays; accelerate's view is new
    # peftbench shards by itself (shard()); accelerate must not wrap the model again, whatever the launcher set
    os.environ.pop("ACCELERATE_USE_FSDP", None)
    use_cpu = device == "cpu" or not torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = "bf16" if bf16_by_default("cpu" if use_cpu else "cuda") else "no"
    if not use_cpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 on by default on GPUs (DESIGN.md)
        torch.backends.cudnn.allow_tf32 = True
    # non-blocking copies of pinned batches: a blocking one would stall the host on every step
    return Accelerator(
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        dataloader_config=DataLoaderConfiguration(non_blocking=not use_cpu),
    )


def shard(module: torch.nn.Module, *, mixed_precision: str = "no") -> list[str]:
    """FSDP2 over every process: each repeated block (the model's ``_no_split_modules``) one unit,
    the rest (embeddings, head, final norm, adapters outside blocks) the root's. Weights are kept in
    fp32 shards and gathered in bf16 under bf16 mixed precision; gradients are reduced in fp32.
    Returns the block classes sharded. The same ``fully_shard`` accelerate's FSDP2 plugin calls,
    called here because accelerate applies its plugin on GPUs only (a CPU test could not check it)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    names = set(getattr(module, "_no_split_modules", None) or [])
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if mixed_precision == "bf16" else None, reduce_dtype=torch.float32
    )
    blocks = [m for m in module.modules() if type(m).__name__ in names]
    sharded = sorted({type(b).__name__ for b in blocks})  # before fully_shard renames the classes (FSDP...)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return sharded


def gather_full_state(model: torch.nn.Module, *, main: bool) -> dict[str, torch.Tensor] | None:
    """The model's full state dict on the main process (on the CPU), None elsewhere.

    Sharded tensors are gathered one at a time (a collective: every process calls this, in the
    same order), so at most one full tensor is in flight beside the shards."""
    from torch.distributed.tensor import DTensor

    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        if main:
            out[key] = value.detach().to("cpu", copy=True)
        del value
    return out if main else None


def peak_per_process(accelerator, peak_bytes: int | None) -> list[int] | None:
    """Every process's peak memory (bytes), gathered to all; None when a process has none."""
    if accelerator.num_processes <= 1:
        return [peak_bytes] if peak_bytes is not None else None
    value = torch.tensor([-1 if peak_bytes is None else peak_bytes], device=accelerator.device)
    got = [int(x) for x in accelerator.gather(value).tolist()]
    return None if any(x < 0 for x in got) else got
