"""The published shapes peftbench knows without the hub (``random:NAME``) and the built-in models and
tokenizers: torch-free, so plans, the CLI's help and the report can read them.

Usage:
    RANDOM_CONFIGS["llama-3.2-1b"]   # transformers config kwargs, with model_type
    RANDOM_TOKENIZERS.get(name, "bytes")
"""

from __future__ import annotations

from typing import Any

# Published configurations, so that random: models have the real shapes without the hub.
GPT2_BASE = dict(
    model_type="gpt2",
    vocab_size=50257,
    n_positions=1024,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    bos_token_id=50256,
    eos_token_id=50256,
)
T5_BASE = dict(
    model_type="t5",
    vocab_size=32128,
    relative_attention_num_buckets=32,
    dropout_rate=0.1,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
    is_encoder_decoder=True,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    layer_norm_epsilon=1e-6,
)
LLAMA3 = dict(
    model_type="llama",
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
    hidden_act="silu",
)
BYTES_VOCAB = 384  # ByT5's byte tokenizer: 3 specials + 256 bytes + 125 extra ids

RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {**GPT2_BASE, "n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium": {**GPT2_BASE, "n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {**GPT2_BASE, "n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {**GPT2_BASE, "n_embd": 1600, "n_layer": 48, "n_head": 25},
    "t5-large": {**T5_BASE, "d_model": 1024, "d_kv": 64, "d_ff": 4096, "num_layers": 24, "num_heads": 16},
    "t5-3b": {**T5_BASE, "d_model": 1024, "d_kv": 128, "d_ff": 16384, "num_layers": 24, "num_heads": 32},
    "t5-small": {**T5_BASE, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8},
    "t5-base": {**T5_BASE, "d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12},
    "smollm2-135m": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
    ),
    # decoders fine-tuned today, with their real vocabularies (Llama 3's 128,256, Qwen2.5's 152,064)
    "llama-3.2-1b": {
        **LLAMA3,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
    },
    "llama-3.2-3b": {
        **LLAMA3,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
    },
    "qwen2.5-7b": dict(
        model_type="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=151643,
        eos_token_id=151643,
        hidden_act="silu",
    ),
    # tiny shapes for tests and smoke runs (byte tokenizer, so no files are needed)
    "tiny-gpt2": {
        **GPT2_BASE,
        "vocab_size": BYTES_VOCAB,
        "n_positions": 512,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "bos_token_id": 1,
        "eos_token_id": 1,
    },
    "tiny-t5": {
        **T5_BASE,
        "vocab_size": BYTES_VOCAB,
        "d_model": 64,
        "d_kv": 16,
        "d_ff": 128,
        "num_layers": 2,
        "num_heads": 4,
    },
    "tiny-llama": dict(
        model_type="llama",
        vocab_size=BYTES_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=1,
    ),
}
# The tokenizer a random: model gets: GPT-2's real BPE where it is GPT-2-shaped, else bytes.
RANDOM_TOKENIZERS = {
    "gpt2": "builtin:gpt2-tokenizer",
    "gpt2-medium": "builtin:gpt2-tokenizer",
    "gpt2-large": "builtin:gpt2-tokenizer",
    "gpt2-xl": "builtin:gpt2-tokenizer",
    "smollm2-135m": "builtin:smollm2-135m",
}
BUILTIN_MODELS = ("smollm2-135m",)
BUILTIN_TOKENIZERS = ("gpt2-tokenizer", "smollm2-135m")
