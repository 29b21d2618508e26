"""Deployment targets: where a fine-tuned model will run, declared once (no torch here; the plan checks them).

Usage:
    TARGETS["onnx-int8"].extra              # "deploy": pip install 'peftbench[deploy]'
    missing_extra("onnx-int8")              # None, or the one-line reason the target cannot be built here
    not_exportable("onnx", family="seq2seq", merges=False)   # None, or why this candidate has no such form
    thread_count(4)                         # the CPU targets' threads: the setting, capped at the usable cores

``torch`` is the training device (today's numbers: unmerged and merged). Every other target takes the
*merged* model (the base itself for zero-shot, the checkpoint for full fine-tuning), turns it into what
ships, and the measurement stage times it beside the others and re-scores the task's test examples with it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str  # what runs it
    device: str  # cpu | cuda
    weights: str  # fp32 | int8 | int4 | q8_0 | q4_k_m (the training dtype for torch)
    modules: tuple[str, ...]  # importable modules the target needs
    extra: str | None  # pip install 'peftbench[<extra>]'
    families: tuple[str, ...] = ("causal", "seq2seq")
    skip_when_missing: bool = False  # an optional source build: recorded skipped, not refused up front
    description: str = ""

    @property
    def exports(self) -> bool:
        return self.name not in ("torch", "cpu")


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("torch", "PyTorch", "train", "train", (), None, description="the training device, unmerged and merged"),
        Target(
            "cpu", "PyTorch", "cpu", "fp32", (), None, description="the merged model on CPU, fp32: the edge reference"
        ),
        Target(
            "onnx",
            "ONNX Runtime (CPU)",
            "cpu",
            "fp32",
            ("onnx", "onnxruntime", "onnxscript"),
            "deploy",
            description="exported with torch.onnx (dynamo), fp32",
        ),
        Target(
            "onnx-int8",
            "ONNX Runtime (CPU)",
            "cpu",
            "int8",
            ("onnx", "onnxruntime", "onnxscript"),
            "deploy",
            description="ONNX Runtime's dynamic quantisation (int8 weights, int8 activations per call)",
        ),
        Target(
            "onnx-int4",
            "ONNX Runtime (CPU)",
            "cpu",
            "int4",
            ("onnx", "onnxruntime", "onnxscript"),
            "deploy",
            description="ONNX Runtime's weight-only MatMulNBits quantiser (4 bits, blocks of 32, symmetric)",
        ),
        Target(
            "gpu-int8",
            "PyTorch + torchao (CUDA)",
            "cuda",
            "int8",
            ("torchao",),
            "deploy-gpu",
            description="torchao weight-only int8 on the GPU (server deployment)",
        ),
        Target(
            "gpu-int4",
            "PyTorch + torchao (CUDA)",
            "cuda",
            "int4",
            ("torchao",),
            "deploy-gpu",
            description="torchao weight-only int4 (groups of 128, bf16 activations) on the GPU",
        ),
        Target(
            "gguf-q8_0",
            "llama.cpp",
            "cpu",
            "q8_0",
            ("llama_cpp",),
            "gguf",
            families=("causal",),
            skip_when_missing=True,
            description="llama.cpp's format and runtime (llama-cpp-python, built from source)",
        ),
        Target(
            "gguf-q4_k_m",
            "llama.cpp",
            "cpu",
            "q4_k_m",
            ("llama_cpp",),
            "gguf",
            families=("causal",),
            skip_when_missing=True,
            description="llama.cpp's 4-bit k-quant mix",
        ),
    ]
}

DEFAULT_CPU_THREADS = 4


def missing_extra(name: str) -> str | None:
    """Why the target cannot be built in this environment (a module it needs is not installed), or None."""
    t = TARGETS[name]
    gone = [m for m in t.modules if importlib.util.find_spec(m) is None]
    if not gone:
        return None
    return f"measure.targets: {name} needs {', '.join(gone)}: pip install 'peftbench[{t.extra}]'"


def not_exportable(name: str, *, family: str, merges: bool) -> str | None:
    """Why a candidate has no form for this target (None: it has one). Only merged weights are exported:
    a method that cannot merge (prompt tuning's virtual tokens, an adapter that refused) has no plain model
    to hand to an exporter or a quantiser."""
    t = TARGETS[name]
    if family not in t.families:
        return f"not exportable: {t.runtime} has no {family} models"
    if t.exports or name == "cpu":
        if not merges:
            return "not exportable: the method does not merge into the base's weights"
    return None


def thread_count(setting: int) -> int:
    """The CPU targets' thread count: the setting, at most the cores this process may use (more threads
    than cores time the scheduler, not the model)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(setting, cores))
