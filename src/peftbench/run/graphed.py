"""An eager training step recorded once as a CUDA graph and replayed: forward, backward, clipping and the
optimizer's update in one launch, without compiling anything.

Usage (by the training loop on one CUDA process where nothing is compiled: ``train.cuda_graphs: on``, or ``auto``
where the padded step is host-bound, ``choose``):
    stepper = GraphedStep(step, optimizer)  # step(batch) -> loss: forward .. optimizer.step()
    loss = stepper(batch)        # None: this batch does not fit the recorded shape (the loop steps it eagerly)
    stepper.release()            # after training: the graph, its inputs and its memory pool let go

Small models at small batches are host-bound: the GPU waits while Python issues each kernel (gpt2 at 8 x 128
tokens: 31-43 ms a step eager, 14-20 ms compiled, session 11). Compilation removes that wait but costs 12-74 s a
run, more than a run of a few hundred steps saves; a CUDA graph of the eager step removes it for the price of a
few eager steps. A graph replays one shape, so the loader pads every batch to one shape (``fixed_shape``: the
longest example, the batch's rows) and the fused loss's positions to one count; the padding is work the idle GPU
absorbs.

How it follows PyTorch's whole-network capture: the first ``WARMUP`` steps run eagerly on a side stream (lazy
initialisation, the optimizer's state), the gradients are dropped, the step is recorded on its next batch into
static input tensors and replayed at once (recording runs nothing). Each later batch is copied into those
inputs and replayed: the backward recorded with no gradients present writes them afresh each replay, the
optimizer (``capturable``, its learning rate a tensor the schedule fills) updates the parameters in place.
A batch of another shape (the epoch's last, where filler rows cannot grow it) returns None and the loop steps it
eagerly on the same gradient tensors (``zero_grad`` keeps them: ``set_to_none`` would cut them off the graph).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from peftbench.catalog.batches import IGNORE

WARMUP = 2  # eager steps before recording, on a side stream

# Where ``auto`` records the step: a padded step's compute (6 x parameters x padded tokens) under what an H200 (132
# SMs) finishes before the host has issued its kernels eagerly; scaled by the GPU's SM count elsewhere (a rough
# proxy: a generation's tensor cores differ more). Measured on one H200 (benchmarks/results/suite_speed_h200.md):
# gpt2 and t5-small shapes at 8 x <= 128 tokens (0.5-0.8 TFLOP a padded step) trained the 300-step study in 57.6 s
# against 261.6 s eager; smollm2-135m classification-shaped at 16 x 512 padded (6.6 TFLOP) 3.35x (LoRA) and 4.21x
# (full) Trainer's steady rate at 72.7 % padding; gpt2-medium 16 x 512 (17.4 TFLOP) gained 2-4 % only (compute-bound:
# padding a varying batch would cost there, and long runs compile instead).
HOST_BOUND_FLOPS = 1.0e13
H200_SMS = 132
HOST_BOUND_SOURCE = (
    "one H200: gpt2 and t5-small at 8 x <= 128 tokens trained a 300-step study 4.5x faster, smollm2-135m 16 x 512 "
    "padded 3.4-4.2x Trainer; gpt2-medium 16 x 512 (17.4 TFLOP) gained 2-4 %"
)


def step_flops(model, features: list[dict], *, rows: int) -> float:
    """A padded step's compute, roughly: 6 x the model's parameters x rows x (the longest example's inputs, and an
    encoder-decoder's longest targets)."""
    if not features:
        return 0.0
    shape = fixed_shape(features, batch_size=rows, multiple_of=1)
    length = shape["length"] + shape.get("label_length", 0)
    return 6.0 * sum(p.numel() for p in model.parameters()) * rows * length


def step_size(model, features: list[dict], *, rows: int, device: torch.device) -> dict:
    """``speed.resolve``'s ``step_flops`` and ``sms`` for a run on ``device``: its padded step's compute and, on
    CUDA, the GPU's multiprocessors (``host_bound`` scales its limit by them)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None
    return {"step_flops": step_flops(model, features, rows=rows), "sms": sms}


def host_bound(flops: float | None, sms: int | None) -> tuple[bool, str]:
    """Whether a step of ``flops`` leaves the GPU waiting on the host (``HOST_BOUND_FLOPS``), and the figure."""
    if not flops:
        return False, "the step's size is unknown"
    limit = HOST_BOUND_FLOPS * (sms or H200_SMS) / H200_SMS
    side = "under" if flops <= limit else "over"
    return flops <= limit, f"{flops / 1e12:.2f} TFLOP a padded step, {side} the {limit / 1e12:.1f} of a host-bound one"


def not_recordable(args, *, n: int, sharded: bool) -> str | None:
    """Why the eager step cannot be recorded on this run (None: it can)."""
    if n > 1 or sharded:
        return "several processes (their gradient exchange is not recorded)"
    if args.gradient_checkpointing:
        return "recomputed (checkpointed) blocks are not recorded"
    if args.gradient_accumulation_steps > 1:
        return "gradients accumulated over micro-batches"
    return None


def records_instead_of_compiling(args, *, cuda: bool, n: int, sharded: bool, flops, sms, fused_loss: str) -> str | None:
    """Where ``compile: auto`` and ``cuda_graphs: auto`` meet a host-bound step that can be recorded: the reason to
    compile nothing and record the eager step (a recorded gpt2 step at 8 x 128 tokens took about 11 ms, a compiled
    one 14-20 ms after 12-74 s of compilation); None where compilation is chosen as before. ``fused_loss``: the loss
    as it resolved."""
    if args.compile != "auto" or args.cuda_graphs != "auto" or not cuda or not_recordable(args, n=n, sharded=sharded):
        return None
    if args.fused_loss == "liger" and fused_loss == "liger":  # a forced Liger loss keeps the step eager (LIGER_SYNC)
        return None
    bound, figure = host_bound(flops, sms)
    return f"auto: off, the eager step is recorded instead (host-bound: {figure})" if bound else None


def choose(args, *, cuda: bool, mode: str, n: int, sharded: bool, flops=None, sms=None) -> tuple[bool, str | None]:
    """Whether the eager step is recorded as one CUDA graph and replayed, every batch padded to one shape, and why:
    where nothing is compiled on one CUDA process without gradient accumulation or recomputed blocks, ``on``
    always, ``auto`` where the padded step is host-bound (``host_bound``). (False, None): nothing to say."""
    if mode != "off" or not cuda or args.cuda_graphs == "off":
        return False, None
    blocked = not_recordable(args, n=n, sharded=sharded)
    if blocked:
        return False, f"{args.cuda_graphs}: off, {blocked}"
    if args.cuda_graphs == "auto":
        bound, figure = host_bound(flops, sms)
        if not bound:
            return False, f"auto: off ({figure}; {HOST_BOUND_SOURCE})"
        return True, f"auto: on, the eager step recorded as one CUDA graph, batches padded to one shape ({figure})"
    return True, "on: the eager step recorded as one CUDA graph, every batch padded to one shape"


def fixed_shape(features: list[dict], *, batch_size: int, multiple_of: int) -> dict:
    """The one shape every batch is padded to: the longest example's inputs (and an encoder-decoder's targets),
    rounded up to ``multiple_of``, and the fused loss's positions: rows x the most targets an example has (a
    classification batch's few answer tokens stay few: the chunked loss computes logits for every position)."""

    def up(n: int) -> int:
        return -(-n // multiple_of) * multiple_of

    length = up(max(len(f["input_ids"]) for f in features))
    most = max(sum(t != IGNORE for t in f["labels"]) for f in features)
    out = {"length": length, "rows": batch_size, "loss_positions": up(batch_size * most)}
    if "decoder" in features[0]:
        out["label_length"] = up(max(len(f["labels"]) for f in features))
    return out


# One H200, smollm2-135m classification-shaped, train.cuda_graphs auto (session 15, train_speed_h200.md): with Liger's
# loss the recording failed ("operation not permitted when stream is capturing", fused_linear_cross_entropy.py:132,
# where it calls .item()) and 58 steps ran eagerly at 14.6k tokens/s; the chunked loss's graph ran 37.4k (session 12).
LIGER_SYNC = (
    "Liger's fused linear cross-entropy reads its count of targets back to the host (.item()), which a CUDA graph "
    "cannot record: on an H200 smollm2-135m's recording failed and the step ran eagerly at 14.6k tokens/s, where "
    "the chunked loss's graph ran 37.4k"
)


def one_shape(out: dict, reasons: dict, fused_loss: str) -> None:
    """A captured step's loss, one a graph can hold (``LIGER_SYNC``: ``auto`` takes the chunked loss, a forced Liger
    loss keeps the step eager), then packing and length grouping off (their batches change shape)."""
    if out["graph_step"] and out["fused_loss"] == "liger":
        if fused_loss == "auto":
            out["fused_loss"], reasons["fused_loss"] = "chunked", f"auto: chunked, the step is recorded ({LIGER_SYNC})"
        else:
            out["graph_step"], reasons["graph_step"] = False, f"off: fused_loss is liger ({LIGER_SYNC})"
    for key in ("packing", "group_by_length") if out["graph_step"] else ():
        if out[key]:
            out[key], reasons[key] = False, "off: the captured step pads every batch to one shape"


def _signature(batch: dict) -> tuple:
    return tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in batch.items() if torch.is_tensor(v)))


def _why(e: BaseException) -> str:
    """A failed recording's reason: the first error (a failed capture's end raises its own over the one that failed
    it, which becomes its context), its first line and the innermost frame outside torch that raised it."""
    while e.__context__ is not None:
        e = e.__context__
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/torch/" not in f.filename]
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}{where}"


class GraphedStep:
    """``step`` (one batch's forward, backward, clipping and ``optimizer.step()``, returning the loss) run eagerly
    ``WARMUP`` times, then recorded as one CUDA graph and replayed for every batch of the recorded shape."""

    def __init__(self, step: Callable[[dict], torch.Tensor], optimizer, *, warmup: int = WARMUP):
        self.step_fn, self.optimizer, self.warmup = step, optimizer, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: dict = {}
        self.loss: torch.Tensor | None = None
        self.signature: tuple | None = None
        self.unpadded = False
        self.eager, self.replays = 0, 0
        self.failed: str | None = None  # why recording failed (the run goes on eagerly)
        self.side = torch.cuda.Stream()

    def __call__(self, batch: dict) -> torch.Tensor | None:
        if self.failed:
            return None
        if self.graph is None and self.eager < self.warmup:
            return self._warm(batch)
        if self.graph is None:
            try:
                self._record(batch)
            except RuntimeError as e:  # an operation a graph cannot hold (a host read): this run steps eagerly
                self.failed, self.graph, self.inputs = _why(e), None, {}
                self.optimizer.zero_grad(set_to_none=True)
                return None
        elif not self.fits(batch):
            self.optimizer.zero_grad(set_to_none=False)  # the graph's gradient tensors, zeroed for an eager step
            return None
        else:
            for k, v in self.inputs.items():
                v.copy_(batch[k], non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.loss.detach().clone()  # the next replay rewrites the recorded loss

    def fits(self, batch: dict) -> bool:
        """A batch the recorded graph computes: its shapes, and no padding where the graph was recorded without
        a mask (an unpadded batch's graph attends causally; a padded one's reads the mask and fits both)."""
        return _signature(batch) == self.signature and (not self.unpadded or bool(batch.get("unpadded")))

    def _warm(self, batch: dict) -> torch.Tensor:
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            loss = self.step_fn(batch).detach().clone()
            self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream().wait_stream(self.side)
        self.eager += 1
        return loss

    def _record(self, batch: dict) -> None:
        self.inputs = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
        static = {**batch, **self.inputs}
        self.signature, self.unpadded = _signature(batch), bool(batch.get("unpadded"))
        self.optimizer.zero_grad(set_to_none=True)  # recorded with no gradients: each replay writes them afresh
        torch.cuda.synchronize()
        generator = torch.cuda.default_generators[torch.cuda.current_device()]
        before = generator.clone_state()  # dropout's seed and offset, not marked as capturing
        stream = torch.cuda.current_stream()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the loader's pin-memory thread allocates pinned memory while the step is recorded, which
            # the default (global) mode forbids to every thread, failing both the recording and the loader
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.loss = self.step_fn(static)
        except RuntimeError:
            # A capture that fails ends before the generator's epilogue: left marked as capturing, every eager
            # dropout after it raises "Offset increment outside graph capture". Its state before the capture back,
            # and the stream: torch.cuda.graph's exit, raising in capture_end, leaves its capture stream current.
            generator.graphsafe_set_state(before)
            torch.cuda.set_stream(stream)
            torch.cuda.synchronize()
            raise
        self.graph = graph

    def release(self) -> None:
        """The graph, its inputs and outputs, and the gradients living in its memory pool, let go."""
        self.graph, self.inputs, self.loss = None, {}, None
        self.optimizer.zero_grad(set_to_none=True)
