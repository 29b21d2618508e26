"""The fast training path: what each speed switch resolves to, packed batches, and a loss that
never materialises the vocabulary-sized logits.

Usage:
    switches = resolve(train_args, device_type="cuda", family="causal", task="classification", model=model)
    module = LossModule(model, fused_loss=switches["fused_loss"])   # forward(batch) -> scalar loss
    regions = CompiledRegions(model, dynamic=True)                  # one graph per repeated block
(packed and length-grouped batches themselves are built in ``catalog.batches``)

Every switch is ``auto`` by default: on where it helps on CUDA, off on CPU (the CPU path stays the
plain one the tests pin down); ``on``/``off`` force it. A switch that cannot apply (a fused loss on
an encoder-decoder, packing on an attention that does not keep packed examples apart) resolves to ``off`` with the
reason, and the resolved values and reasons land in the result (``resolved.speed``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Callable

import torch

from peftbench.catalog.batches import pack_seq2seq, segment_masks
from peftbench.catalog.taskspecs import SPECS
from peftbench.run import graphed
from peftbench.run.chunked import ALIGN, chunked_linear_cross_entropy

# what auto resolves to on CUDA where measuring chose off (t5-base, H200, benchmarks/results/train_speed_h200.md)
SEQ2SEQ_PACKING = (
    "packed rows are longer, and T5's biased attention pays for them: t5-base packed at 1.08x Trainer's "
    "tok/s and 1.22x its memory, padded at 1.52x and 0.69x (each against its own run's Trainer)"
)
GROUPING = (
    "on an H200 t5-base trained at 23,001 tok/s length-grouped against 31,374 padded: host-bound, "
    "and a new batch shape every step; on for compute-bound runs (larger models or batches, CPUs)"
)
FSDP_COMPILE = (
    "compiled sharded training gives the eager losses, but its speed on GPUs is not yet measured; "
    "train.compile: on compiles"
)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def split_head(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(body, lm_head) of a causal LM, peft-wrapped or not, when logits are exactly ``head(body(x))``.

    None when they are not: a prompt-learning method (its virtual tokens live in the peft
    wrapper's forward), an adapted or biased head, logit soft-capping or scaling.
    """
    if _prompt_learning(model):
        return None
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(hf.config, "is_encoder_decoder", False):
        return None
    if any(getattr(hf.config, k, None) for k in ("final_logit_softcapping", "logit_scale", "output_multiplier")):
        return None
    head = hf.get_output_embeddings()
    body = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
    if type(head) is not torch.nn.Linear or head.bias is not None or not isinstance(body, torch.nn.Module):
        return None
    return body, head


def resolve(
    args,
    *,
    device_type: str,
    family: str,
    task: str,
    model,
    varying: bool = False,
    sharded: bool = False,
    tokens: float | None = None,
    warm: bool = False,
    processes: int = 1,
    step_flops: float | None = None,
    sms: int | None = None,
) -> dict:
    """The speed switches as they will run here: {"compile": "off" | "model" | "regions", ..., "reasons": {...}}.

    ``varying``: the training examples have different lengths (batches change shape); ``sharded``:
    FSDP trains the model (``auto`` does not compile it: compiled sharded training gives the eager
    losses, tests/test_distributed.py, but its speed is not yet measured on GPUs; ``on`` compiles); ``step_flops``:
    a padded step's compute (``graphed.step_flops``) and ``sms`` the GPU's multiprocessors, for whether the step is
    host-bound: there ``auto`` records the eager step as a CUDA graph rather than compile (``graphed.choose``)."""
    cuda = device_type == "cuda"
    reasons: dict[str, str] = {}

    def on_off(key: str) -> bool:
        value = getattr(args, key)
        if value == "auto":
            reasons[key] = "auto: on with CUDA" if cuda else "auto: off on CPU"
            return cuda
        return value == "on"

    step = {"flops": step_flops, "sms": sms}
    fused_loss = _fused_loss(args.fused_loss, cuda=cuda, model=model, reasons=reasons)
    compile_mode = _compiling(  # with the loss as it resolved (a forced Liger loss may resolve to off)
        args, reasons, cuda=cuda, varying=varying, tokens=tokens, warm=warm, sharded=sharded, n=processes,
        step={**step, "fused_loss": fused_loss},
    )  # fmt: skip
    out = {"compile": compile_mode, "fused_optimizer": on_off("fused_optimizer"), "fused_loss": fused_loss}
    if args.packing == "auto" and cuda and family != "causal":
        packing, reasons["packing"] = False, f"auto: off for encoder-decoders ({SEQ2SEQ_PACKING})"
    else:
        packing = on_off("packing")
    if packing and SPECS[task].blocks:
        packing, reasons["packing"] = False, "off: language-modelling blocks have no padding"
    elif packing and family != "causal" and not seq2seq_packs_correctly(model):
        packing, reasons["packing"] = False, "off: this encoder-decoder's attention does not keep packed examples apart"
    elif packing and family == "causal" and not packs_correctly(model):
        packing, reasons["packing"] = False, "off: this model's attention does not keep packed examples apart"
    out["packing"] = packing
    out["group_by_length"] = _grouping(args.group_by_length, reasons, packing=packing, varying=varying)
    out["cuda_graphs"] = _cuda_graphs(args, reasons, cuda=cuda, mode=compile_mode, varying=varying, n=processes)
    out["graph_step"], why = graphed.choose(args, cuda=cuda, mode=compile_mode, n=processes, sharded=sharded, **step)
    if why:
        reasons["graph_step"] = why
    graphed.one_shape(out, reasons, args.fused_loss)
    out["cudnn_attention"] = _cudnn_attention(args.cudnn_attention, cuda=cuda, varying=varying, out=out, why=reasons)
    out["dataloader_workers"] = _workers(args.dataloader_workers, cuda=cuda, varying=varying, reasons=reasons)
    return {**out, "sharded": sharded, "pin_memory": cuda, "reasons": reasons}


WORKERS = "one H200, gpt2-medium LoRA 16 x 512, 50 steps: the same steady rate, 1.0 s less warm-up without them"


def _workers(value: int | None, *, cuda: bool, varying: bool, reasons: dict) -> int:
    """Data loader worker processes: as given, else 2 with CUDA where examples vary in length (their batches are
    padded or packed while the GPU trains) and none where batches only stack fixed-length blocks (``WORKERS``)."""
    if value is not None:
        return value
    if cuda and not varying:
        reasons["dataloader_workers"] = f"auto: 0, fixed-length examples are only stacked ({WORKERS})"
        return 0
    return 2 if cuda else 0


def _grouping(value: str, reasons: dict, *, packing: bool, varying: bool) -> bool:
    """Whether batches are grouped by length: ``auto`` off (``GROUPING``), and never where nothing would group."""
    if value == "auto":
        reasons["group_by_length"] = f"auto: off ({GROUPING})"
        return False
    if value == "on" and packing:
        reasons["group_by_length"] = "off: packed batches have no padding to group away"
    elif value == "on" and not varying:
        reasons["group_by_length"] = "off: every example has the same length"
    else:
        return value == "on"
    return False


def _compiling(args, reasons: dict, *, cuda: bool, varying: bool, tokens, warm: bool, sharded: bool, n: int, step):
    """``_compile_mode``, but off where the eager step is recorded instead (host-bound, ``graphed``) or FSDP shards
    the model (``auto``)."""
    instead = graphed.records_instead_of_compiling(args, cuda=cuda, n=n, sharded=sharded, **step)
    if instead:
        reasons["compile"] = instead
        return "off"
    mode = _compile_mode(args.compile, cuda=cuda, varying=varying, reasons=reasons, tokens=tokens, warm=warm)
    if sharded and args.compile == "auto" and mode != "off":
        mode, reasons["compile"] = "off", f"auto: off under FSDP ({FSDP_COMPILE})"
    return mode


# What compilation costs and saves (one H200, random:gpt2-medium, 16 x 512 tokens per step; session 7,
# benchmarks/results/suite_speed_h200.md): regions with CUDA graphs steady at 153-156k tok/s (full fine-tuning) and
# 209-211k (LoRA) against eager 73.6k and 83.6k, so each token saves about 7.1 us; a cold cache's warm-up cost
# 12.5 s (full; LoRA 22.1 s before its first block shared the others' graph), a warm one's 3.9-4.6 s (loading the
# graphs and recording the CUDA graphs), eager training's 0.7 s. Compilation repays itself after about
# 12.5 s / 7.1 us = 1.8 M tokens (cold) and 4.2 s / 7.1 us = 0.6 M (warm): at 50 steps (0.41 M) a warm regions
# run read 0.88x Trainer's all-steps rate (full) where eager reads 1.04x.
REPAYS_TOKENS = {"cold": 1.8e6, "warm": 6.0e5}
COMPILE_SOURCE = "gpt2-medium on an H200: 7.1 us saved per token against 12.5 s (cold) or 4.2 s (warm) of warm-up"


def too_short_to_compile(tokens: float, cache: str) -> bool:
    """Whether a run training ``tokens`` is too short to repay a compilation on a ``cold`` or ``warm`` cache
    (``REPAYS_TOKENS``): ``auto``'s test, and the compile workers' (``compiletime.warm_compile_workers``)."""
    return tokens < REPAYS_TOKENS[cache]


def _compile_mode(
    value: str, *, cuda: bool, varying: bool, reasons: dict, tokens: float | None = None, warm: bool = False
) -> str:
    """``off``, ``model`` (one graph for the whole forward) or ``regions`` (one graph per repeated block).

    ``auto`` picks what pays for this run: ``regions`` (as fast as one whole-model graph once warm, 150.9k against
    127.4k-150.5k tok/s, at a fifth of its compile time, and the only one that copes with varying shapes: a whole
    30-layer model compiled for dynamic shapes took 280 s), or ``off`` where the run trains fewer ``tokens`` than
    compilation repays (``REPAYS_TOKENS``, lower when this model and method compiled here before: ``warm``). ``on``
    keeps its meaning: ``model`` for fixed shapes, ``regions`` for varying ones."""
    if value in ("off", "model", "regions"):
        return value
    if value == "auto" and not cuda:
        reasons["compile"] = "auto: off on CPU"
        return "off"
    if value == "on":
        mode = "regions" if varying else "model"
        reasons["compile"] = f"on: {mode} ({'batch shapes vary' if varying else 'fixed batch shapes'})"
        return mode
    cache = "warm" if warm else "cold"
    if tokens is not None and too_short_to_compile(tokens, cache):
        reasons["compile"] = (
            f"auto: off ({tokens / 1e6:.2f} M tokens to train, under the {REPAYS_TOKENS[cache] / 1e6:.2f} M a "
            f"{cache} compilation repays; {COMPILE_SOURCE})"
        )
        return "off"
    reasons["compile"] = (
        f"auto: regions ({'' if tokens is None else f'{tokens / 1e6:.2f} M tokens, '}{cache} cache; as fast as "
        f"a whole-model graph once warm at a fifth of its compile time)"
    )
    return "regions"


# One H200, gpt2-medium, 16 x 512 tokens per step, regions compiled, the same call (train_speed_h200.md, session 7):
# with CUDA graphs LoRA 214.9k tok/s against 194.9k, full fine-tuning 159.3k against 132.8k, the same losses.
CUDA_GRAPHS = "one H200, gpt2-medium: LoRA 214.9k tok/s against 194.9k, full fine-tuning 159.3k against 132.8k"


def _cuda_graphs(args, reasons: dict, *, cuda: bool, mode: str, varying: bool, n: int) -> bool:
    """Whether the compiled graphs run as CUDA graphs (torch.compile's ``reduce-overhead``: each graph's kernels
    replayed by one launch, where the host otherwise issues them one by one and the GPU waits between). Only
    for compiled runs of one shape on one CUDA process without gradient accumulation: a graph is recorded per
    shape, and graphs under DDP's gradient hooks or recomputed (checkpointed) blocks are not measured."""
    value = args.cuda_graphs
    if value == "off":
        return False
    why = None
    if not cuda:
        why = "off on CPU"
    elif mode == "off":
        why = "off: nothing is compiled" + (" (the eager step is recorded: graph_step)" if value == "on" else "")
    elif mode == "model" and value == "auto":
        why = "off for a whole-model graph (measured over compiled blocks only; on forces it)"
    elif varying:
        why = "off: batch shapes vary (a graph would be recorded per shape)"
    elif n > 1:
        why = "off: several processes (DDP's gradient hooks under CUDA graphs are not measured)"
    elif args.gradient_checkpointing:
        why = "off: recomputed (checkpointed) blocks under CUDA graphs are not measured"
    elif args.gradient_accumulation_steps > 1:  # a graph's gradient output, kept across micro-batches, is rewritten
        why = "off: gradients accumulated over micro-batches would live in the graphs' rewritten outputs"
    if why:
        reasons["cuda_graphs"] = f"{value}: {why}"
        return False
    reasons["cuda_graphs"] = f"{value}: on ({CUDA_GRAPHS})"
    return True


# One H200, smollm2-135m full fine-tuning, classification-shaped (16 examples of 16-512 tokens a step, packed): the
# host spent 2.1 ms in each call of cuDNN's attention, forward and backward (1,290 ms of a 4,918 ms window of 20
# steps, 60 calls a step), the GPU idle 92 % of the window (benchmarks/results/train_speed_h200.md, session 9).
CUDNN_ATTENTION = "one H200, smollm2-135m packed rows of varying length: 2.1 ms of host time per cuDNN attention call"
CUDNN_RECORDED = "one H200, smollm2-135m padded to 16 x 512, 60 steps: 45.8k against 40.7k tokens/s (LoRA) without it"


def _cudnn_attention(value: str, *, cuda: bool, varying: bool, out: dict, why: dict) -> bool:
    """Whether training's attention may use cuDNN's kernels (torch's own choice) or keeps to flash and
    memory-efficient ones: ``auto`` keeps off cuDNN with CUDA where batch shapes vary (``CUDNN_ATTENTION``), but not
    for a recorded step, whose batches are padded to one shape and whose host time is paid once."""
    if value != "auto":
        return value == "on"
    if cuda and out["graph_step"]:
        why["cudnn_attention"] = f"auto: on, the recorded step has one shape ({CUDNN_RECORDED})"
        return True
    if cuda and varying:
        why["cudnn_attention"] = f"auto: off, batch shapes vary ({CUDNN_ATTENTION})"
        return False
    return True


def attention_kernels(speed: dict, device_type: str) -> contextlib.AbstractContextManager:
    """Training's attention kernels as ``speed`` says: without cuDNN's where ``cudnn_attention`` is off (CUDA)."""
    if speed.get("cudnn_attention", True) or device_type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def planned_tokens(features: list[dict], *, steps: int, args, processes: int) -> float:
    """Tokens a run will train on: steps x examples per step x the mean example's tokens (T5: source + target)."""
    per = sum(len(f["input_ids"]) + len(f.get("labels") or []) * bool(f.get("decoder")) for f in features)
    return steps * args.batch_size * args.gradient_accumulation_steps * processes * per / max(1, len(features))


def warm_key(model_spec: str, method: str, options: dict, precision: str, varying: bool) -> str:
    """What a run's compiled regions depend on: the architecture, the method's wrapping, the compute dtype."""
    import hashlib

    text = json.dumps([model_spec, method, sorted(options.items()), precision, varying], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


WARM_FILE = "inductor/peftbench-compiled.json"  # beside the inductor cache whose graphs it marks


def is_warm(key: str) -> bool:
    """Whether a run with this key compiled here before (its graphs are in the inductor cache)."""
    from peftbench.catalog.sources import cached_keys

    return key in cached_keys(WARM_FILE)


def mark_warm(key: str) -> None:
    """A missing mark only costs the next run a cold estimate."""
    from peftbench.catalog.sources import add_cached_key

    add_cached_key(WARM_FILE, key)


def _fused_loss(value: str, *, cuda: bool, model, reasons: dict) -> str:
    if value == "off":
        return "off"
    split = split_head(model)
    if split is None:
        reasons["fused_loss"] = "off: the logits are not head(body(x)) (seq2seq, prompt method, adapted head)"
        return "off"
    if not head_of_body(model, split):
        reasons["fused_loss"] = "off: this method trains parameters outside the body and the head"
        return "off"
    if value in ("liger", "chunked"):
        return value
    vocab = split[1].weight.shape[0]
    if value == "auto" and not cuda:  # benchmarks/results/cpu_fused_loss_2core.md
        reasons["fused_loss"] = (
            f"auto: chunked on CPU (a vocabulary of {vocab}: on 2 cores never slower than the model's own loss, "
            f"+2 to +9 % tokens/s, and up to 0.5 GiB less at 262k tokens)"
        )
        return "chunked"
    if vocab % ALIGN:  # Liger's GEMMs on an unaligned vocabulary run 3-4x slower than the padded chunked loss
        reasons["fused_loss"] = f"{value}: chunked (a vocabulary of {vocab} is padded to a multiple of {ALIGN})"
        return "chunked"
    if liger_available() and cuda:
        reasons["fused_loss"] = f"{value}: Liger's fused linear cross-entropy"
        return "liger"
    reasons["fused_loss"] = f"{value}: chunked (Liger needs CUDA and liger-kernel: pip install 'peftbench[speed]')"
    return "chunked"


def head_of_body(model, split: tuple[torch.nn.Module, torch.nn.Linear]) -> bool:
    """Every trainable parameter lives in the body or the head: a method that trains a network beside
    them (peft's shadow adds to the output path) would be skipped by the fused loss and train nothing."""
    body, head = split
    inside = {id(p) for p in body.parameters()} | {id(p) for p in head.parameters()}
    return all(id(p) in inside for p in model.parameters() if p.requires_grad)


def _prompt_learning(model) -> bool:
    configs = getattr(model, "peft_config", None) or {}
    return any(getattr(c, "is_prompt_learning", False) for c in configs.values())


def packs_correctly(model) -> bool:
    """Two short random examples, packed into one row, give the logits they give apart.

    Checked on the model itself (a forward of 12 tokens), since whether position ids keep
    examples apart depends on the architecture's attention and mask code."""
    if _prompt_learning(model):  # virtual tokens are prepended to the row, not to each example
        return False
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    vocab = hf.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, vocab, (1, 5), generator=g), torch.randint(0, vocab, (1, 7), generator=g)
    pos = torch.tensor([[*range(5), *range(7)]])
    return _same_logits(
        model,
        lambda: torch.cat([hf(input_ids=x.to(device), use_cache=False).logits[0] for x in (a, b)]),
        lambda: hf(input_ids=torch.cat([a, b], 1).to(device), position_ids=pos.to(device), use_cache=False).logits[0],
    )


def _same_logits(model, apart: Callable[[], torch.Tensor], packed: Callable[[], torch.Tensor]) -> bool:
    """The examples' logits computed apart equal those of their packed row (eval mode, TF32 off:
    its rounding would hide nothing but blur the comparison; the model is left as it was)."""
    was_training, tf32 = model.training, torch.backends.cuda.matmul.allow_tf32
    model.eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            x, y = apart().float(), packed().float()
    finally:
        model.train(was_training)
        torch.backends.cuda.matmul.allow_tf32 = tf32
    # a leak across the boundary changes the second example's logits by O(1); rounding by far less
    scale = float(x.abs().max()) or 1.0
    return x.shape == y.shape and bool((x - y).abs().max() <= 1e-3 * scale)


def seq2seq_packed_forward(model, batch: dict, **kw):
    """An encoder-decoder's forward over a ``pack_seq2seq`` batch: the encoder runs with its
    block-diagonal mask first, since the model would otherwise give the encoder the decoder's
    cross-attention mask (both travel as ``attention_mask``)."""
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    enc_mask, dec_mask, cross_mask = segment_masks(batch["encoder_segments"], batch["decoder_segments"], dtype)
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoded = hf.get_encoder()(input_ids=batch["input_ids"], attention_mask=enc_mask)
    return model(
        encoder_outputs=encoded,
        attention_mask=cross_mask,
        decoder_input_ids=batch["decoder_input_ids"],
        decoder_attention_mask=dec_mask,
        labels=batch.get("labels"),
        use_cache=False,
        **kw,
    )


def seq2seq_packs_correctly(model) -> bool:
    """Two random source/target pairs, packed into one row, give the decoder logits they give apart."""
    if _prompt_learning(model):
        return False
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    vocab = hf.get_input_embeddings().num_embeddings
    start = hf.config.decoder_start_token_id or 0
    g = torch.Generator().manual_seed(0)
    feats = [
        {
            "input_ids": torch.randint(2, vocab, (n,), generator=g).tolist(),
            "labels": torch.randint(2, vocab, (m,), generator=g).tolist(),
        }
        for n, m in ((5, 3), (7, 4))
    ]
    packed = pack_seq2seq(feats, pad_id=0, start_id=start, max_padding=1.0)  # one row: two pairs, any padding
    packed = {k: v.to(device) for k, v in packed.items() if k != "labels"}

    def apart():
        return torch.cat(
            [
                hf(
                    input_ids=torch.tensor([f["input_ids"]], device=device),
                    labels=torch.tensor([f["labels"]], device=device),
                    use_cache=False,
                ).logits[0]
                for f in feats
            ]
        )

    return _same_logits(model, apart, lambda: seq2seq_packed_forward(hf, packed).logits[0])


class CompiledRegions:
    """Regional compilation: every repeated block (a ModuleList of one class: GPT-2's ``h``,
    Llama's ``layers``) compiled in place, so one compilation serves all of them and compile time
    stays that of one block however deep the model (whole-model compilation of a 30-layer model
    with dynamic shapes took minutes). Without repeated blocks the whole module is compiled.
    ``off()`` runs eager in between (periodic evaluations); ``undo()`` restores the model.

    Where the blocks train but the input embeddings do not (LoRA and most adapters), the embeddings' output is
    made to require gradients while training, as every later block's input does: one graph serves the first
    block too, where its input without gradients cost a second compilation (one H200, gpt2-medium LoRA: a cold
    warm-up of 22.1 s against full fine-tuning's 12.5 s), at the price of the first block's input gradient."""

    def __init__(self, module: torch.nn.Module, **compile_kw):
        taken: list[str] = []
        for name, m in module.named_modules():
            if any(name.startswith(t + ".") for t in taken):
                continue
            if isinstance(m, torch.nn.ModuleList) and len(m) > 1 and len({type(b) for b in m}) == 1:
                taken.append(name)
        self.blocks = [b for name in taken for b in module.get_submodule(name)] or [module]
        for b in self.blocks:
            b.compile(**compile_kw)
        self._compiled = [b._compiled_call_impl for b in self.blocks]
        self._hook = _grad_into_blocks(module, self.blocks) if taken else None

    def _eager(self) -> None:
        for b in self.blocks:
            b._compiled_call_impl = None

    def undo(self) -> None:
        self._eager()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @contextlib.contextmanager
    def off(self):
        self._eager()
        try:
            yield
        finally:
            for b, c in zip(self.blocks, self._compiled):
                b._compiled_call_impl = c


def _grad_into_blocks(module: torch.nn.Module, blocks: list[torch.nn.Module]):
    """A hook making the input embeddings' output require gradients (in grad mode), where blocks train and the
    embeddings do not; None where nothing is to do or the model has no input embeddings to hook."""
    hf = module.get_base_model() if hasattr(module, "get_base_model") else module
    embeddings = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
    if not isinstance(embeddings, torch.nn.Module) or any(p.requires_grad for p in embeddings.parameters()):
        return None
    if not any(p.requires_grad for b in blocks for p in b.parameters()):
        return None

    def require_grad(_module, _inputs, output):
        if (
            torch.is_grad_enabled()
            and torch.is_tensor(output)
            and output.is_floating_point()
            and not output.requires_grad
        ):
            output.requires_grad_(True)

    return embeddings.register_forward_hook(require_grad)


# ---------------------------------------------------------------- loss


class LossModule(torch.nn.Module):
    """forward(batch) -> the training loss; wraps the model so DDP and torch.compile see one module.

    ``fused_loss`` off: the model's own loss. ``chunked``/``liger``: the body's hidden states at
    the positions that predict a label (``loss_index``/``loss_targets`` from the collate), then a
    fused linear + cross-entropy against the head's weight."""

    def __init__(self, model: torch.nn.Module, *, fused_loss: str = "off", compiled: bool = False, masked=False):
        super().__init__()
        self.model = model
        self.fused_loss, self.compiled = fused_loss, compiled  # compiled: the chunked loss's arithmetic compiled
        self.masked = masked  # targets may be IGNORE (a run whose last batch is grown by filler rows)
        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._no_split_modules = list(getattr(hf, "_no_split_modules", None) or [])  # FSDP's units
        if fused_loss != "off":
            split = split_head(model)
            if split is None:
                raise ValueError("train.fused_loss needs a causal LM whose logits are head(body(x))")
            self._split = split  # a plain tuple: not registered twice as submodules
            if fused_loss == "liger":
                from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

                self._liger = LigerFusedLinearCrossEntropyLoss()

    def forward(self, batch: dict) -> torch.Tensor:
        if "encoder_segments" in batch:
            return seq2seq_packed_forward(self.model, batch).loss
        if self.fused_loss == "off":  # no cache: it costs memory, and packed rows are only detected without one
            return self.model(**batch, use_cache=False).loss
        body, head = self._split
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_index", "loss_targets")}
        hidden = body(**inputs, use_cache=False).last_hidden_state
        rows = hidden.flatten(0, 1).index_select(0, batch["loss_index"])
        return self._loss(rows, head.weight, batch["loss_targets"])

    @torch.compiler.disable
    def _loss(self, rows: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        device_type = rows.device.type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):  # (not meta)
            # the head's matmul in the compute dtype, as autocast runs it
            rows = rows.to(torch.get_autocast_dtype(device_type))
        if self.fused_loss == "liger":
            return self._liger(weight.to(rows.dtype), rows, targets)
        return chunked_linear_cross_entropy(rows, weight, targets, compiled=self.compiled, masked=self.masked)
