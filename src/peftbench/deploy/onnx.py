"""ONNX export and ONNX Runtime inference: one graph per architecture, each candidate's weights written into it.

Usage:
    graph = Graph(model, family="causal")                  # torch.onnx.export(dynamo=True), once per group
    path = graph.save(candidate_model, folder)             # that graph with the candidate's weights
    path = quantize(path, folder_int8, "int8")              # dynamic int8 | weight-only int4 (MatMulNBits)
    m = OnnxModel(path, family="causal", threads=4, config=model.config)
    m(input_ids=..., attention_mask=...).logits             # what the scorers and the stage call
    m.generate(input_ids=..., attention_mask=..., max_new_tokens=16)

Exporting a 135M-parameter model takes about a minute on two cores; a group's candidates (the base, merged
adapters, full fine-tuned checkpoints) share the architecture and differ only in weights. So the base is
exported once with a distinct random *marker* in every parameter; the exporter folds transposes into
constants, and each of the graph's initializers is found again as a parameter (or its transpose) by the
marker's bytes. A candidate is then that graph with its own parameters written in (a few seconds). The
stage checks every fp32 export's logits against PyTorch's (``max_abs_logit_diff``); a candidate whose
weights do not fit the graph (an untied head, another shape) is exported on its own.

Generation re-runs the whole sequence for each new token (the graph takes no KV cache): the ONNX numbers
for generation are those of a decoder without a cache, and say so.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("peftbench")

THIRD = {"causal": "position_ids", "seq2seq": "decoder_input_ids"}  # the graph's third input per family


class _Logits(torch.nn.Module):
    """The model as the graph sees it: three integer inputs, the logits out (no cache)."""

    def __init__(self, model, family: str):
        super().__init__()
        self.model, self.family = model, family

    def forward(self, input_ids, attention_mask, third):
        kw = {THIRD[self.family]: third}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw).logits


def _export(model, family: str):
    """torch.onnx's dynamo exporter (the TorchScript one fails on transformers 5's masks), batch and lengths
    dynamic. T5's sdpa attention reshapes a transposed view, which export cannot trace: eager attention."""
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    third = torch.full((2, 4), 5, dtype=torch.long) if family == "seq2seq" else torch.arange(8).expand(2, 8)
    dims = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    dims["third"] = {0: "batch", 1: "dec" if family == "seq2seq" else "seq"}
    with _attention("eager" if family == "seq2seq" else None, model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = logging.getLogger("torch.onnx")
        level, quiet.level = quiet.level, logging.ERROR
        try:
            return torch.onnx.export(
                _Logits(model, family).eval(),
                (ids, mask, third),
                None,
                dynamo=True,
                input_names=["input_ids", "attention_mask", "third"],
                output_names=["logits"],
                dynamic_shapes=dims,
                optimize=True,
                verbose=False,
            )
        finally:
            quiet.level = level


@contextlib.contextmanager
def _attention(impl: str | None, model):
    old = getattr(model.config, "_attn_implementation", None)
    if impl and old != impl:
        model.set_attn_implementation(impl)
    try:
        yield
    finally:
        if impl and old != impl:
            model.set_attn_implementation(old)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


class Graph:
    """The group's exported graph and where each parameter sits in it."""

    def __init__(self, model, *, family: str, seed: int = 0):
        started = time.perf_counter()
        self.family = family
        params = dict(model.named_parameters())  # tied weights listed once
        kept = {n: p.detach().clone() for n, p in params.items()}
        g = torch.Generator().manual_seed(seed)
        marks = {}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))
                a = p.detach().float().numpy()
                marks[_digest(a)] = (n, False)
                if a.ndim == 2:
                    marks[_digest(a.T)] = (n, True)
            try:
                self.program = _export(model, family)
                self.slots = self._find(marks)  # before the weights return: unfolded initializers alias them
            finally:
                for n, p in params.items():
                    p.copy_(kept[n])
        self.mapped = {n for n, _ in self.slots.values()}
        self.export_seconds = time.perf_counter() - started

    def _find(self, marks: dict) -> dict[str, tuple[str, bool]]:
        slots = {}
        for name, value in self.program.model.graph.initializers.items():
            arr = value.const_value.numpy()
            if arr.dtype == np.float32 and arr.size > 1 and (hit := marks.get(_digest(arr))) is not None:
                slots[name] = hit
        return slots

    def fits(self, model) -> bool:
        """Whether the model's parameters are exactly the ones the graph has places for."""
        names = {n for n, _ in model.named_parameters()}
        return self.mapped <= names and {n for n in names if n in self.mapped} == self.mapped

    def save(self, model, folder: Path) -> Path:
        """The graph with ``model``'s weights, as ``folder/model.onnx`` (+ its external data)."""
        import onnx_ir as ir

        folder.mkdir(parents=True, exist_ok=True)
        params = {n: p.detach().float().cpu().numpy() for n, p in model.named_parameters()}
        inits = self.program.model.graph.initializers
        for name, (param, transposed) in self.slots.items():
            a = params[param].T if transposed else params[param]
            inits[name].const_value = ir.tensor(np.ascontiguousarray(a).reshape(inits[name].shape.numpy()), name=name)
        path = folder / "model.onnx"
        self.program.save(path, external_data=True)
        return path


def export_alone(model, *, family: str, folder: Path) -> Path:
    """A candidate whose weights do not fit the group's graph, exported on its own."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    _export(model, family).save(path, external_data=True)
    return path


def quantize(src: Path, folder: Path, weights: str) -> Path:
    """int8: ONNX Runtime's dynamic quantisation (int8 weights, activations quantised per call);
    int4: its weight-only MatMulNBits quantiser (4 bits in blocks of 32, symmetric)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / "model.onnx"
    quiet = logging.getLogger("onnxruntime.quantization")
    level, quiet.level = quiet.level, logging.ERROR
    root = logging.getLogger()
    root_level, root.level = root.level, logging.ERROR  # the quantisers log every node at INFO on the root
    try:
        if weights == "int8":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=True)
        elif weights == "int4":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True)
            q.process()
            q.model.save_model_to_file(str(dst), True)
        else:
            raise ValueError(f"no ONNX quantisation for {weights!r}")
    finally:
        quiet.level, root.level = level, root_level
    return dst


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session behind the calls the scorers and the stage make of a transformers model."""

    def __init__(self, path: Path, *, family: str, threads: int, config):
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.family, self.config, self.threads = family, config, threads

    def forward(self, input_ids, attention_mask=None, position_ids=None, decoder_input_ids=None, labels=None, **_):
        ids = input_ids.cpu()
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.cpu()
        if self.family == "seq2seq":
            third = decoder_input_ids if decoder_input_ids is not None else self._shift_right(labels)
        else:  # transformers' default: positions 0..n-1 whatever the mask (as PyTorch scored it)
            third = position_ids if position_ids is not None else torch.arange(ids.shape[1]).expand_as(ids)
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "third": third.cpu().numpy()}
        feed = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in feed.items()}
        return types.SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))

    def _shift_right(self, labels):
        start = self.config.decoder_start_token_id
        dec = torch.full_like(labels, self.config.pad_token_id)
        dec[:, 1:] = labels[:, :-1].clamp(min=0).masked_fill(labels[:, :-1] < 0, self.config.pad_token_id)
        dec[:, 0] = start
        return dec

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, *, max_new_tokens: int, min_new_tokens: int = 0, **kw):
        """Greedy decoding (the only decoding peftbench scores or times): transformers' answer, token by token."""
        ids = input_ids.cpu()
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.cpu()
        pad = kw.get("pad_token_id")
        pad = self.config.pad_token_id if pad is None else pad
        eos = kw.get("eos_token_id", self.config.eos_token_id)
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        eos = [e for e in eos if 0 <= e < self.config.vocab_size]
        pad = eos[0] if pad is None and eos else (pad or 0)
        if self.family == "seq2seq":
            out = torch.full((ids.shape[0], 1), self.config.decoder_start_token_id, dtype=torch.long)
        else:
            out = ids
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for step in range(max_new_tokens):
            if self.family == "seq2seq":
                logits = self(input_ids=ids, attention_mask=mask, decoder_input_ids=out).logits[:, -1]
            else:
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self(input_ids=out, attention_mask=mask, position_ids=pos).logits[:, -1]
            if step < min_new_tokens and eos:
                logits[:, eos] = -float("inf")
            nxt = logits.argmax(-1).masked_fill(done, pad)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if self.family == "causal":
                mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
            done |= torch.isin(nxt, torch.tensor(eos, dtype=torch.long)) if eos else done
            if bool(done.all()):
                break
        return out
