"""Model specs -> (model, tokenizer, family).

Usage:
    loaded = load(ModelArgs(spec="random:gpt2"), seed=0)
    loaded.model, loaded.tokenizer, loaded.family   # family: "causal" | "seq2seq"

Specs are resolved through ``LOADERS``, a registry of prefix -> builder:
  ``random:NAME``  the published architecture NAME built from its configuration with seeded random
                   weights (efficiency numbers exact, quality not meaningful);
  ``builtin:NAME`` a pretrained model from an offline source (``sources.py``);
  anything else    a hub id or local directory, loaded with ``from_pretrained`` (safetensors only).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftbench import fs
from peftbench.catalog.shapes import BUILTIN_MODELS, BUILTIN_TOKENIZERS, RANDOM_CONFIGS, RANDOM_TOKENIZERS
from peftbench.errors import ConfigError
from peftbench.spec.config import ModelArgs

if TYPE_CHECKING:  # torch is imported where a function needs it: a planning parent that reads specs never does
    import torch

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    family: str  # "causal" | "seq2seq"
    spec: str
    tokenizer_spec: str
    pretrained: bool  # False for random: weights -> quality metrics are null

    @property
    def quality_note(self) -> str | None:
        return None if self.pretrained else "random weights"


# ---------------------------------------------------------------- spec checks (config validation)


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or fs.exists(spec)


def local_path(spec: str) -> Path:
    """A local spec's model folder: the folder itself, or for a ``.gguf`` file the safetensors folder it was
    converted into (``$PEFTBENCH_CACHE/gguf/<name>-<sha256>/``, converted on first use)."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        from peftbench.catalog.sources import gguf_folder

        return gguf_folder(path)
    return path


def _check_gguf(path: Path) -> list[str]:
    if not path.is_file():
        return [f"model.spec: GGUF file {str(path)!r} not found"]
    try:
        local_path(str(path))
    except Exception as e:  # noqa: BLE001 (what transformers' GGUF reader says is the user's answer)
        return [f"model.spec: {path}: not a GGUF model transformers can convert ({type(e).__name__}: {e})"[:400]]
    return []


def check_spec(spec: str, *, trust_remote_code: bool = False) -> list[str]:
    if not spec:
        return ["model.spec: missing (e.g. gpt2, random:gpt2, builtin:smollm2-135m)"]
    prefix, sep, name = spec.partition(":")
    if sep and prefix == "random":
        if name not in RANDOM_CONFIGS:
            return [f"model.spec: unknown random model {name!r} (known: {', '.join(RANDOM_CONFIGS)})"]
        return []
    if sep and prefix == "builtin":
        if name not in BUILTIN_MODELS:
            return [f"model.spec: unknown builtin model {name!r} (known: {', '.join(BUILTIN_MODELS)})"]
        return []
    if sep and not _looks_local(spec):
        return [f"model.spec: unknown prefix {prefix!r} in {spec!r} (use random:, builtin:, a hub id or a directory)"]
    if _looks_local(spec) and Path(spec).suffix.lower() == ".gguf":
        return _check_gguf(Path(spec).expanduser())
    if _looks_local(spec):
        return check_model_dir(Path(spec).expanduser(), trust_remote_code=trust_remote_code)
    if not HUB_ID.match(spec):
        return [f"model.spec: {spec!r} is not a hub id (owner/name), a directory, random:NAME or builtin:NAME"]
    return []


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_dir(path: Path, *, trust_remote_code: bool) -> list[str]:
    """A local model folder: a config, safetensors weights, no custom code unless allowed."""
    if not fs.is_dir(path):
        return [f"model.spec: local model directory {str(path)!r} not found"]
    cfg = _read_config(path)
    if cfg is None:
        return [f"model.spec: {path} has no readable config.json (not a transformers model folder)"]
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
        if pickles:
            return [
                f"model.spec: {path} holds only pickle weights ({', '.join(pickles[:3])}); peftbench loads "
                "safetensors only: re-save with save_pretrained(safe_serialization=True)"
            ]
        return [f"model.spec: {path} has no *.safetensors weights"]
    if cfg.get("auto_map") and not trust_remote_code:
        return [
            f"model.spec: {path} asks for custom code (auto_map in config.json); "
            "set model.trust_remote_code=true if you trust it"
        ]
    return []


def _read_config(path: Path) -> dict | None:
    import json

    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def known_config(spec: str) -> dict | None:
    """A model's configuration when it is known without loading (random:/builtin: shapes, local
    folders); None for hub ids."""
    prefix, sep, name = spec.partition(":")
    if sep and prefix in ("random", "builtin"):
        return RANDOM_CONFIGS.get(name, {})
    if _looks_local(spec):
        return _read_config(local_path(spec)) or {}
    return None


def meta_model(spec: str) -> tuple[torch.nn.Module, str] | None:
    """(model, family) with the spec's architecture on the meta device (no weights, no memory), when
    its configuration is known without loading; None otherwise."""
    import torch
    from transformers import AutoConfig

    cfg = dict(known_config(spec) or {})
    if not cfg.get("model_type"):
        return None
    try:
        config = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "auto_map"})
        family = family_of(config)
        with torch.device("meta"):
            return _auto_class(family).from_config(config), family
    except Exception:  # an architecture this transformers cannot build: the run will say so
        return None


def max_positions(spec: str) -> int | None:
    """The longest input the model's position embeddings allow, when known without loading; None for
    relative positions (T5) or hub ids."""
    cfg = known_config(spec) or {}
    value = cfg.get("n_positions") or cfg.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def is_seq2seq_spec(spec: str) -> bool | None:
    """Whether a spec names an encoder-decoder, when that is known without loading."""
    cfg = known_config(spec)
    return None if cfg is None else bool(cfg.get("is_encoder_decoder"))


def family_of_spec(spec: str) -> str | None:
    """``causal`` | ``seq2seq`` when known without loading (random:/builtin: shapes, local folders)."""
    seq2seq = is_seq2seq_spec(spec)
    return None if seq2seq is None else "seq2seq" if seq2seq else "causal"


def check_tokenizer_spec(spec: str) -> list[str]:
    if spec == "bytes":
        return []
    prefix, sep, name = spec.partition(":")
    if sep and prefix == "builtin":
        return (
            []
            if name in BUILTIN_TOKENIZERS
            else [f"model.tokenizer: unknown builtin tokenizer {name!r} (known: {', '.join(BUILTIN_TOKENIZERS)})"]
        )
    if _looks_local(spec) or HUB_ID.match(spec):
        return []
    return [f"model.tokenizer: {spec!r} is not bytes, builtin:NAME, a hub id or a directory"]


# ---------------------------------------------------------------- loading


def bf16_by_default(device_type: str) -> bool:
    """What ``auto`` means for 16-bit work, decided here once: bf16 on GPUs that support it (mixed
    precision in training, the inference dtype), fp32 elsewhere."""
    import torch

    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_dtype(name: str, device: torch.device, *, inference: bool = False) -> torch.dtype:
    """A ``DTYPE_CHOICES`` name as a torch dtype. ``auto``: fp32 weights for training (bf16 compute
    comes from train.mixed_precision's autocast); for inference bf16 where ``bf16_by_default``."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    return torch.bfloat16 if inference and bf16_by_default(device.type) else torch.float32


def load_tokenizer(spec: str, *, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer, ByT5Tokenizer

    if spec == "bytes":
        tok = ByT5Tokenizer()
    elif spec.startswith("builtin:"):
        from peftbench.catalog import sources

        tok = AutoTokenizer.from_pretrained(sources.ensure(spec.split(":", 1)[1]))
    else:
        tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code, revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # causal LMs ship without one; padding is masked anyway
    return tok


def has_chat_template(args: ModelArgs) -> bool | None:
    """Whether the tokenizer that loading ``args`` gives has a chat template, from the tokenizer alone
    (no weights); None when the tokenizer cannot be had here (a hub id out of reach: the run tells)."""
    prefix, sep, name = args.spec.partition(":")
    if args.tokenizer:
        spec = args.tokenizer
    elif sep and prefix == "random":
        spec = RANDOM_TOKENIZERS.get(name, "bytes")
    elif sep and prefix == "builtin":
        spec = args.spec
    else:
        spec = str(local_path(args.spec)) if _looks_local(args.spec) else args.spec
    try:
        tok = load_tokenizer(spec, trust_remote_code=args.trust_remote_code, revision=args.revision)
    except Exception:  # noqa: BLE001 (offline hub, a source not fetched: the run's own load reports it)
        return None
    return bool(getattr(tok, "chat_template", None))


def family_of(config) -> str:
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def _auto_class(family: str):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM


def random_config(name: str):
    from transformers import AutoConfig

    cfg = dict(RANDOM_CONFIGS[name])
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def build_random(
    name: str, *, seed: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.nn.Module:
    """The published architecture with seeded random weights (same seed and device -> same weights).

    ``device``: where the weights are created and initialised (a 7B shape is built on its GPU, never
    in host memory first); ``"meta"`` gives shapes without storage (parameter counts, plans)."""
    import torch

    config = random_config(name)
    dtype = dtype or torch.float32
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():  # None: the caller's default
        return _auto_class(family_of(config)).from_config(config, dtype=dtype)


def _load_random(args: ModelArgs, name: str, seed: int, dtype: torch.dtype, device=None) -> LoadedModel:
    tok_spec = args.tokenizer or RANDOM_TOKENIZERS.get(name, "bytes")
    model = build_random(name, seed=seed, dtype=dtype, device=device)
    tok = load_tokenizer(tok_spec)
    if len(tok) > model.config.vocab_size:
        raise ConfigError(
            f"model.tokenizer: {tok_spec} has {len(tok)} tokens, more than {args.spec}'s "
            f"vocabulary of {model.config.vocab_size}"
        )
    return LoadedModel(model, tok, family_of(model.config), args.spec, tok_spec, pretrained=False)


def _load_pretrained(args: ModelArgs, path: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=args.trust_remote_code, revision=args.revision)
    family = family_of(config)
    model = _auto_class(family).from_pretrained(
        path,
        config=config,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=args.trust_remote_code,
        revision=args.revision,
    )
    tok_spec = args.tokenizer or path
    tok = load_tokenizer(tok_spec, trust_remote_code=args.trust_remote_code, revision=args.revision)
    return LoadedModel(model, tok, family, args.spec, tok_spec if args.tokenizer else args.spec, pretrained=True)


def _load_builtin(args: ModelArgs, name: str, dtype: torch.dtype) -> LoadedModel:
    from peftbench.catalog import sources

    folder = sources.ensure(name)
    loaded = _load_pretrained(ModelArgs(spec=str(folder), tokenizer=args.tokenizer), str(folder), dtype)
    loaded.spec = args.spec
    loaded.tokenizer_spec = args.tokenizer or args.spec
    return loaded


LOADERS: dict[str, Callable[..., LoadedModel]] = {
    "random": lambda args, name, seed, dtype, device: _load_random(args, name, seed, dtype, device),
    "builtin": lambda args, name, seed, dtype, device: _load_builtin(args, name, dtype),
}


def load(args: ModelArgs, *, seed: int = 0, device: torch.device | None = None) -> LoadedModel:
    import torch

    device = device or torch.device("cpu")
    dtype = resolve_dtype(args.dtype, device)
    prefix, sep, name = args.spec.partition(":")
    if sep and prefix in LOADERS:
        loaded = LOADERS[prefix](args, name, seed, dtype, device)
    else:
        loaded = _load_pretrained(args, str(local_path(args.spec)) if _looks_local(args.spec) else args.spec, dtype)
    if loaded.family == "causal" and getattr(loaded.model.config, "pad_token_id", None) is None:
        loaded.model.config.pad_token_id = loaded.tokenizer.pad_token_id
    return loaded


def quantization_unavailable(quant: str, device: torch.device) -> str | None:
    """Why a bitsandbytes base cannot load here, or None."""
    import importlib.util

    if device.type != "cuda":
        return f"{quant} quantisation needs CUDA (bitsandbytes); this run is on {device.type}"
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"{quant} quantisation needs bitsandbytes: pip install 'peftbench[quant]'"
    return None


def quantize(loaded: LoadedModel, quant: str, device: torch.device) -> LoadedModel:
    """The loaded model's weights reloaded through bitsandbytes (NF4 with bf16 compute, or int8),
    then prepared for adapter training (peft's ``prepare_model_for_kbit_training``)."""
    import tempfile

    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    if quant == "nf4":
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    with tempfile.TemporaryDirectory(prefix="peftbench-quant-") as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        model = _auto_class(loaded.family).from_pretrained(tmp, quantization_config=bnb, device_map={"": device})
    loaded.model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return loaded


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing of every block (transformers' own, non-reentrant: frozen inputs need
    no gradient hooks, which adapters on a frozen base would otherwise require)."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hf.config.use_cache = False


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable), counting tied weights once and a 4-bit weight (bitsandbytes packs two
    values a byte) by the shape it stands for."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        n = math.prod(shape) if shape is not None else p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable
