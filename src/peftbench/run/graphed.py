"""An eager training step recorded once as a CUDA graph and replayed: forward, backward, clipping and the
optimizer's update in one launch, without compiling anything.

Usage (by the training loop, ``train.cuda_graphs: on`` with ``train.compile: off`` on one CUDA process):
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
