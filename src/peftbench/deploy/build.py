"""A candidate in the form a target ships: the model the stage times and re-scores, its bytes, its build time.

Usage:
    builder = Builder(family="causal", threads=4, workdir=Path(tmp))
    d = builder.build("onnx-int8", name="lora:merged", model=merged_model)   # Deployed
    d.model(input_ids=...).logits; d.bytes; d.export_seconds; d.load_seconds; d.note

A builder holds what a group's candidates share: the CPU fp32 copy of each candidate (for ``cpu`` and as the
exporter's input) and the group's ONNX graph (``deploy.onnx.Graph``), exported once.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from peftbench.deploy import onnx as onnx_mod
from peftbench.deploy.targets import TARGETS


@dataclass
class Deployed:
    target: str
    model: torch.nn.Module  # called as a transformers model: forward(**inputs).logits, generate(...)
    device: torch.device
    bytes: int  # on disk, what ships
    resident_bytes: int  # what the loaded form holds before a call
    export_seconds: float
    load_seconds: float
    note: str | None = None


class ThreadedModel(torch.nn.Module):
    """A PyTorch CPU model run at a fixed thread count (the setting is process-wide: set around each call)."""

    def __init__(self, model, threads: int):
        super().__init__()
        self.inner, self.threads = model, threads
        self.config = model.config

    def _call(self, fn, *a, **kw):
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return fn(*a, **kw)
        finally:
            torch.set_num_threads(before)

    def forward(self, *a, **kw):
        return self._call(self.inner, *a, **kw)

    def generate(self, *a, **kw):
        return self._call(self.inner.generate, *a, **kw)


def weight_bytes(model) -> int:
    """Bytes of a model's distinct tensors (tied weights once): what ``save_pretrained`` writes, less headers."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


class Builder:
    def __init__(self, *, family: str, threads: int, workdir: Path):
        self.family, self.threads, self.workdir = family, threads, Path(workdir)
        self.graph: onnx_mod.Graph | None = None
        self._cpu: dict[str, torch.nn.Module] = {}
        self._onnx: dict[str, tuple[Path, float]] = {}

    def cpu_copy(self, name: str, model) -> torch.nn.Module:
        if name not in self._cpu:
            self._cpu[name] = copy.deepcopy(model).to("cpu", torch.float32).eval()
        return self._cpu[name]

    def build(self, target: str, *, name: str, model) -> Deployed:
        t = TARGETS[target]
        if target == "cpu":
            m = self.cpu_copy(name, model)
            b = weight_bytes(m)
            return Deployed(target, ThreadedModel(m, self.threads), torch.device("cpu"), b, b, 0.0, 0.0)
        if target.startswith("onnx"):
            return self._onnx_target(t, name=name, model=model)
        if target.startswith("gpu-"):
            return self._torchao(t, model=model)
        raise ValueError(f"no builder for target {target!r}")

    def _fp32_onnx(self, name: str, model) -> tuple[Path, float, str | None]:
        """The candidate's fp32 ONNX file: the group's graph with its weights, or an export of its own."""
        if name in self._onnx:
            return (*self._onnx[name], None)
        src = self.cpu_copy(name, model)
        started, note = time.perf_counter(), None
        if self.graph is None:
            self.graph = onnx_mod.Graph(src, family=self.family)
            note = f"the group's graph exported here ({self.graph.export_seconds:.1f} s)"
        folder = self.workdir / "onnx" / _safe(name)
        if self.graph.fits(src):
            path = self.graph.save(src, folder)
        else:
            path, note = onnx_mod.export_alone(src, family=self.family, folder=folder), "exported on its own"
        self._onnx[name] = (path, time.perf_counter() - started)
        return path, self._onnx[name][1], note

    def _onnx_target(self, t, *, name: str, model) -> Deployed:
        path, seconds, note = self._fp32_onnx(name, model)
        if t.weights != "fp32":
            started = time.perf_counter()
            path = onnx_mod.quantize(path, self.workdir / t.name / _safe(name), t.weights)
            seconds += time.perf_counter() - started
        size = onnx_mod.folder_bytes(path.parent)
        started = time.perf_counter()
        m = onnx_mod.OnnxModel(path, family=self.family, threads=self.threads, config=model.config)
        return Deployed(t.name, m, torch.device("cpu"), size, size, seconds, time.perf_counter() - started, note)

    def _torchao(self, t, *, model) -> Deployed:
        """torchao weight-only quantisation of a copy on the GPU (bf16 activations, as servers run it). GPT-2's
        Conv1D layers become the equal ``nn.Linear`` first (torchao quantises linear layers only)."""
        from torchao.quantization import quantize_

        started = time.perf_counter()
        m = copy.deepcopy(model).to("cuda", torch.bfloat16).eval()
        converted = conv1d_to_linear(m)
        config, how = _torchao_config(t.weights)
        quantize_(m, config)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        path = self.workdir / t.name / f"{id(m)}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(m.state_dict(), path)
        size = path.stat().st_size
        path.unlink()
        note = how + (f"; {converted} Conv1D layers as nn.Linear" if converted else "")
        return Deployed(t.name, m, torch.device("cuda"), size, size, seconds, 0.0, note)


def _torchao_config(weights: str):
    """The installed torchao's weight-only config (int4: the tinygemm layout torch's own kernel runs)."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if weights == "int8":
        return Int8WeightOnlyConfig(), "torchao Int8WeightOnlyConfig()"
    try:
        return Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"), (
            "torchao Int4WeightOnlyConfig(group_size=128, tile_packed_to_4d)"
        )
    except TypeError:  # an older torchao: its default layout is tinygemm's
        return Int4WeightOnlyConfig(group_size=128), "torchao Int4WeightOnlyConfig(group_size=128)"


def conv1d_to_linear(model) -> int:
    """Replace transformers' Conv1D (GPT-2's projections, weight stored in x out) by the same nn.Linear."""
    from transformers.pytorch_utils import Conv1D

    n = 0
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, Conv1D):
                lin = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1], device=child.weight.device)
                lin = lin.to(child.weight.dtype)
                with torch.no_grad():
                    lin.weight.copy_(child.weight.T)
                    lin.bias.copy_(child.bias)
                setattr(mod, child_name, lin)
                n += 1
    return n


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
