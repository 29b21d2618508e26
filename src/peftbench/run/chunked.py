"""A fused linear + cross-entropy loss in plain PyTorch: the logits alive one chunk of rows at a time.

Usage (by ``speed.LossModule``, the training loss when ``train.fused_loss`` is ``chunked``):
    loss = chunked_linear_cross_entropy(hidden_rows, head.weight, targets, compiled=True)
"""

from __future__ import annotations

import contextlib

import torch

CHUNK_ROWS = 4096  # rows of logits alive at once in the chunked loss (4096 x 50k fp32 = 0.8 GB)
ALIGN = 64  # vocabulary rows padded to a multiple of this in the chunked loss


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """mean(CE(hidden @ weight.T, targets)) with the logits alive one chunk of rows at a time.

    The gradients are computed in the forward pass (as Liger does) and scaled in the backward,
    so neither pass keeps the full logits. The vocabulary is padded to a multiple of ``ALIGN``
    rows (their logits set to -inf): GPT-2's 50,257 rows would otherwise send every matmul to
    slow unaligned GEMM kernels."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, compiled=False, masked=False):
        n, dtype = targets.numel(), hidden.dtype
        vocab = weight.shape[0]
        acc = torch.promote_types(dtype, torch.float32)  # softmax and sums in fp32 at least
        w = weight.to(dtype)
        if vocab % ALIGN:
            w = torch.cat([w, w.new_zeros(ALIGN - vocab % ALIGN, w.shape[1])])
        grad_h = torch.zeros_like(hidden)
        grad_w = torch.zeros(w.shape, dtype=acc, device=weight.device) if weight.requires_grad else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        if masked:  # targets IGNORE (a filler row's) count nothing: the mean over the others
            count = (targets >= 0).sum().clamp_min(1).to(acc)
        else:
            count = torch.full((), max(n, 1), dtype=acc, device=hidden.device)  # a tensor: one graph for every count
        body = _compiled_chunk() if compiled else _chunk
        chunk = -(-n // -(-n // chunk)) if n else chunk  # equal chunks: one shape for a run of fixed-length batches
        for s in range(0, n, chunk):
            h, t = hidden[s : s + chunk], targets[s : s + chunk]
            loss, gh, gw = body(h, w, t, vocab, count, grad_w is not None, masked)
            total += loss
            grad_h[s : s + chunk] = gh
            if grad_w is not None:
                grad_w += gw.to(acc)
        ctx.weight_dtype = weight.dtype
        ctx.has_grad_w = grad_w is not None
        ctx.save_for_backward(grad_h, grad_w[:vocab] if grad_w is not None else torch.empty(0))
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.has_grad_w else None
        return grad_h * grad_out.to(grad_h.dtype), gw, None, None, None, None


def _summed_loss(logits, t, masked: bool):
    """Both bodies' loss from a chunk's logits (padded columns already -inf): the summed loss, each row's
    log-sum-exp, the targets as indices (``masked``: an ignored one clamped to 0) and the rows kept (None unmasked)."""
    keep = None
    if masked:
        keep, t = (t >= 0).to(logits.dtype), t.clamp_min(0)
    lse = torch.logsumexp(logits, dim=-1)
    per_row = lse - logits.gather(1, t[:, None]).squeeze(1)
    return (per_row if keep is None else per_row * keep).sum(), lse, t, keep


def _chunk(h, w, t, vocab: int, count, weight_grad: bool, masked: bool = False):
    """One chunk's summed loss and its gradients against ``h`` and (``weight_grad``) ``w``, the logits alive once:
    the softmax is computed in their place. ``masked``: targets below 0 count no loss and get no gradient."""
    logits = (h @ w.T).to(torch.promote_types(h.dtype, torch.float32))
    logits[:, vocab:] = float("-inf")
    loss, lse, t, keep = _summed_loss(logits, t, masked)
    g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
    g[torch.arange(len(t), device=g.device), t] -= 1.0
    g = (g.div_(count) if keep is None else g.mul_(keep[:, None] / count)).to(h.dtype)
    return loss, g @ w, (g.T @ h) if weight_grad else None


def _fusable_chunk(h, w, t, vocab: int, count, weight_grad: bool, masked: bool = False):
    """``_chunk``'s arithmetic in the form the compiler fuses best: nothing written in place, the padded columns a
    ``where`` and the one-hot a comparison, so the row's log-sum-exp is a plain inner reduction (one kernel
    configuration, nothing to benchmark at its first launch) and the gradient one pointwise pass over the logits.
    ``_chunk``'s in-place fill and ``index_put`` fused into one reduction kernel of four configurations, benchmarked
    at its first launch: 0.9 s of a cold gpt2-medium run's warm-up on an H200 (session 17). Eagerly this form keeps
    a second logits-sized tensor alive; ``_chunk`` is the eager body."""
    logits = (h @ w.T).to(torch.promote_types(h.dtype, torch.float32))
    cols = torch.arange(logits.shape[1], device=logits.device)
    logits = torch.where(cols < vocab, logits, float("-inf"))
    loss, lse, t, keep = _summed_loss(logits, t, masked)
    scale = (keep if keep is not None else torch.ones_like(lse)) / count
    g = ((logits - lse[:, None]).exp() - (cols == t[:, None]).to(logits.dtype)) * scale[:, None]
    g = g.to(h.dtype)
    return loss, g @ w, (g.T @ h) if weight_grad else None


COMPILED_BODY = "fusable"  # which body a run that compiles compiles: "fusable" (``_fusable_chunk``) or "eager"
_COMPILED_CHUNK: dict = {}


def _compiled_chunk():
    """The chunk's body compiled (in a run that compiles): its softmax, gather and scaling fused into a few kernels
    that read the logits once or twice, where eagerly each is a pass of its own over 4096 x vocabulary fp32 values."""
    body = _fusable_chunk if COMPILED_BODY == "fusable" else _chunk
    if body not in _COMPILED_CHUNK:
        _COMPILED_CHUNK[body] = torch.compile(body)
    return _COMPILED_CHUNK[body]


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = CHUNK_ROWS,
    compiled: bool = False,
    masked: bool = False,
) -> torch.Tensor:
    """mean(CE(hidden @ weight.T, targets)); ``masked``: over the targets that are not negative (``IGNORE``)."""
    device_type = hidden.device.type
    off = torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else None
    with off or contextlib.nullcontext():  # (the meta device has no autocast)
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk, compiled, masked)
