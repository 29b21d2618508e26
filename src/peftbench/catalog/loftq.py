"""LoftQ (Li et al. 2023): LoRA initialised so that quantised base + B A approximates the original weights.

Usage:
    init_loftq(peft_model, bits=4, iterations=1)   # after get_peft_model with a LoraConfig
    factors = adapter_factors(peft_model)           # a quantised base: its adapter carried over by name
    load_factors(qlora_model, factors)

For each wrapped layer W: alternate Q = dequant(quant(W - B A)) and B A = best rank-r approximation
of W - Q (SVD); the base layer then holds Q and the adapter B A. peft 0.21 computes this only on
CUDA through bitsandbytes; here the same quantisers are written in torch (NF4: the 16 normal-float
levels with an absmax scale per block of 64, as bitsandbytes' nf4; int8: absmax per row), so the
initialisation runs on any device and the same seed gives the same adapter everywhere.
"""

from __future__ import annotations

import torch

NF4_LEVELS = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)
BLOCK = 64


def nf4_roundtrip(w: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """``w`` quantised to NF4 (absmax per block of ``block`` values) and dequantised."""
    flat = w.reshape(-1)
    pad = -flat.numel() % block
    x = torch.cat([flat, flat.new_zeros(pad)]).view(-1, block)
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    levels = NF4_LEVELS.to(x)
    codes = (x / scale).unsqueeze(-1).sub(levels).abs().argmin(-1)
    out = (levels[codes] * scale).view(-1)
    return out[: flat.numel()].view_as(w)


def int8_roundtrip(w: torch.Tensor) -> torch.Tensor:
    """``w`` quantised to int8 with an absmax scale per row, and dequantised."""
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    return (w / scale).round().clamp(-127, 127) * scale


def loftq_weights(w: torch.Tensor, *, bits: int, rank: int, iterations: int):
    """(Q, A, B) with Q the dequantised base, B @ A the rank-``rank`` correction: Q + B A ~ w."""
    quant = {4: nf4_roundtrip, 8: int8_roundtrip}[bits]
    w = w.float()
    res = w
    for i in range(iterations):
        q = quant(res)
        u, s, vh = torch.linalg.svd(w - q, full_matrices=False)
        root = s[:rank].sqrt()
        b, a = u[:, :rank] * root, root[:, None] * vh[:rank]
        if i + 1 < iterations:
            res = w - b @ a
    return q, a, b


@torch.no_grad()
def init_loftq(model: torch.nn.Module, *, bits: int, iterations: int, adapter: str = "default") -> int:
    """Initialise every LoRA layer of ``model`` by LoftQ; returns how many layers it set."""
    from peft.tuners.lora import LoraLayer

    n = 0
    for layer in model.modules():
        if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
            continue
        base = layer.get_base_layer()
        fan_in_fan_out = getattr(layer, "fan_in_fan_out", False)
        w = base.weight.T if fan_in_fan_out else base.weight  # (out, in)
        q, a, b = loftq_weights(w, bits=bits, rank=layer.r[adapter], iterations=iterations)
        scaling = layer.scaling[adapter]
        layer.lora_A[adapter].weight.copy_(a)
        layer.lora_B[adapter].weight.copy_(b / scaling)  # so that scaling * B A is the correction
        base.weight.copy_(q.T if fan_in_fan_out else q)
        n += 1
    return n


@torch.no_grad()
def adapter_factors(model: torch.nn.Module, adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every LoRA layer's (A, B) weights by module name, on the CPU."""
    from peft.tuners.lora import LoraLayer

    return {
        name: (layer.lora_A[adapter].weight.detach().cpu().clone(), layer.lora_B[adapter].weight.detach().cpu().clone())
        for name, layer in model.named_modules()
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A
    }


@torch.no_grad()
def load_factors(model: torch.nn.Module, factors: dict, adapter: str = "default") -> int:
    """Copy ``adapter_factors`` into the same-named LoRA layers of ``model``; every layer must match."""
    from peft.tuners.lora import LoraLayer

    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}
    if layers.keys() != factors.keys():
        raise ValueError(f"LoftQ factors for {len(factors)} layers, the model has {len(layers)} LoRA layers")
    for name, (a, b) in factors.items():
        layers[name].lora_A[adapter].weight.copy_(a)
        layers[name].lora_B[adapter].weight.copy_(b)
    return len(layers)
