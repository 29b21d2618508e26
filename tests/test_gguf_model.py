"""A ``.gguf`` file as a model spec (issue 28): converted by the project's converter into the cache (once, keyed by
the file's hash), loaded as a transformers model whose logits equal those of the model the file was written from,
trained with LoRA, and a missing or broken file is a one-line error."""

import json

import numpy as np
import pytest
import torch

from peftbench import cli
from peftbench.catalog import models
from peftbench.spec.config import ModelArgs


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: the 256 byte tokens of a byte-level BPE vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's layout of q and k rows (transformers undoes it when it reads the file)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, seed=0):
    """A tiny Llama written as GGUF the way llama.cpp's converter lays it out; returns the source model."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = _byte_tokens() + ["th", "the", "<|endoftext|>"]  # two merges (a file without any names none)
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=258, eos_token_id=258)  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_block_count(2)
    w.add_feed_forward_length(64)
    w.add_rope_dimension_count(8)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else 10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * 258 + [3])
    w.add_token_merges(["t h", "th e"])
    w.add_bos_token_id(258)
    w.add_eos_token_id(258)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for i in range(2):
        for hf, cpp in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            t = _permute(t, 4) if cpp == "attn_q" else _permute(t, 2) if cpp == "attn_k" else t
            w.add_tensor(f"blk.{i}.{cpp}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


def test_a_gguf_file_loads_as_the_model_it_was_written_from(tiny_gguf):
    path, source = tiny_gguf
    assert models.check_spec(str(path)) == []
    folder = models.local_path(str(path))
    assert folder.parent.name == "gguf" and (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"  # every tensor of the file is F32
    loaded = models.load(ModelArgs(spec=str(path)))
    assert loaded.family == "causal" and loaded.pretrained
    ids = loaded.tokenizer("the GGUF file", return_tensors="pt")["input_ids"]
    assert ids[0].tolist()[:1] == [257] and ids.shape[1] == len(b" GGUF file") + 1  # "the": one merged token
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, source(ids).logits, atol=1e-5)
    mtime = (folder / "config.json").stat().st_mtime_ns
    assert models.local_path(str(path)) == folder and (folder / "config.json").stat().st_mtime_ns == mtime  # cached


def test_a_missing_or_broken_gguf_file_is_a_one_line_error(tmp_path, capsys):
    assert models.check_spec(str(tmp_path / "none.gguf")) == [
        f"model.spec: GGUF file {str(tmp_path / 'none.gguf')!r} not found"
    ]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    (problem,) = models.check_spec(str(bad))
    assert problem.startswith(f"model.spec: {bad}: not a GGUF model transformers can convert")
    assert not list((tmp_path.parent / "gguf").glob("bad-*")) if (tmp_path.parent / "gguf").is_dir() else True
    code = cli.main(["run", "--model", str(bad), "--method", "lora", "--task", "classification",
                     "--dataset", "builtin:spam-assassin", "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a GGUF model" in err[0]


def test_a_gguf_model_trains_with_lora_and_its_adapter_loads_on_the_converted_base(tiny_gguf, data_dir, tmp_path):
    import yaml
    from conftest import FAST_MEASURE
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path, _ = tiny_gguf
    suite = {
        "name": "gguf",
        "defaults": {
            "train": {"max_steps": 2, "batch_size": 4},
            "data": {"max_train_samples": 16, "max_eval_samples": 8, "max_source_length": 32},
            "measure": {**FAST_MEASURE, "stage": "off"},
        },
        "experiments": [
            {
                "id": "lora",
                "model": {"spec": str(path)},
                "method": {"name": "lora", "options": {"r": 4}},
                "data": {"spec": f"file:{data_dir}/cls.jsonl", "task": "classification"},
            }  # fmt: skip
        ],
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "s.yaml"), "--out", str(out), "--device", "cpu", "--in-process"]) == 0
    r = json.loads((out / "results" / "lora.json").read_text())
    assert r["status"] == "success" and r["config"]["model"]["spec"] == str(path)
    assert r["params"]["trainable"] == 2 * (4 * (32 + 32) + 4 * (32 + 16))  # 2 layers, r=4 on q (32->32), v (32->16)
    base = AutoModelForCausalLM.from_pretrained(models.local_path(str(path)))
    peft = PeftModel.from_pretrained(base, out / "adapters" / "lora")
    assert sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n) == r["params"]["trainable"]
