"""The fast training path on CPU: the fused loss, packed batches and the switches give the numbers
the plain path gives (the GPU speed itself is shown by benchmarks/train_speed.py)."""

import copy
import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from peftbench.catalog import methods, models
from peftbench.catalog.batches import (
    IGNORE,
    LengthGroupedBatches,
    fill_rows,
    loss_positions,
    pack_batch,
    pack_seq2seq,
    pad_batch,
    segment_masks,
)
from peftbench.run.settings import for_loop
from peftbench.run.speed import (
    CUDA_GRAPHS,
    LossModule,
    chunked_linear_cross_entropy,
    packs_correctly,
    resolve,
    seq2seq_packs_correctly,
    split_head,
)
from peftbench.spec.config import TrainArgs


def _features(n=12, seed=0, vocab=200, answer_only=True):
    """Variable-length causal examples; the loss on the last 3 tokens (as classification's answer) or on all."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(3, vocab) for _ in range(rng.randrange(6, 40))]
        labels = [IGNORE] * (len(ids) - 3) + ids[-3:] if answer_only else list(ids)
        out.append({"input_ids": ids, "labels": labels})
    return out


@pytest.mark.parametrize("chunk", [7, 4096])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_chunked_cross_entropy_equals_torch_loss_and_gradients(chunk, weight_grad):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, generator=g, dtype=torch.float64, requires_grad=weight_grad)
    targets = torch.randint(0, 300, (50,), generator=g)
    ref = F.cross_entropy(hidden @ weight.T, targets)
    ref_grads = torch.autograd.grad(ref * 3.0, [hidden, weight] if weight_grad else [hidden])
    got = chunked_linear_cross_entropy(hidden, weight, targets, chunk=chunk)
    got_grads = torch.autograd.grad(got * 3.0, [hidden, weight] if weight_grad else [hidden])
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_loss_positions_are_the_shifted_labels():
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6], [IGNORE, 7, IGNORE, 8]])
    index, targets = loss_positions(labels)
    assert index.tolist() == [1, 2, 4, 6] and targets.tolist() == [5, 6, 7, 8]


def test_packed_row_has_no_padding_and_restarts_positions():
    feats = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [IGNORE, 5]}]
    b = pack_batch(feats, pad_id=0, multiple_of=4)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert b["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5, IGNORE, IGNORE, IGNORE]]


@pytest.mark.parametrize("shape", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("answer_only", [True, False])
def test_packed_and_fused_losses_equal_the_padded_model_loss(shape, answer_only):
    model = models.build_random(shape, seed=0).eval()
    assert packs_correctly(model)
    feats = _features(answer_only=answer_only)
    padded = pad_batch(feats, pad_id=0)
    with torch.no_grad():
        ref = model(**padded).loss
        packed = pack_batch(feats, pad_id=0, multiple_of=8)
        assert torch.allclose(model(**packed, use_cache=False).loss, ref, rtol=1e-5)
        fused = LossModule(model, fused_loss="chunked")
        for batch in (dict(padded), dict(packed)):
            batch["loss_index"], batch["loss_targets"] = loss_positions(batch["labels"])
            assert torch.allclose(fused(batch), ref, rtol=1e-5)


def _pairs(n=16, seed=0, vocab=300):
    rng = random.Random(seed)
    return [
        {
            "input_ids": [rng.randrange(3, vocab) for _ in range(rng.randint(5, 40))],
            "labels": [rng.randrange(3, vocab) for _ in range(rng.randint(2, 12))],
            "decoder": True,
        }
        for _ in range(n)
    ]


def test_seq2seq_packing_shifts_targets_per_example_and_masks_each_pair_apart():
    feats = [
        {"input_ids": [5, 6, 7], "labels": [8, 9], "decoder": True},
        {"input_ids": [10, 11], "labels": [12, 13, 14], "decoder": True},
    ]
    b = pack_seq2seq(feats, pad_id=0, start_id=2, max_padding=1.0)  # one row for two examples
    assert b["input_ids"].tolist() == [[5, 6, 7, 10, 11]]
    assert b["encoder_segments"].tolist() == [[1, 1, 1, 2, 2]]
    assert b["decoder_input_ids"].tolist() == [[2, 8, 2, 12, 13]]  # each target behind its own start token
    assert b["labels"].tolist() == [[8, 9, 12, 13, 14]]
    enc, dec, cross = (m[0, 0] == 0 for m in segment_masks(b["encoder_segments"], b["decoder_segments"]))
    assert enc.tolist()[0] == [True, True, True, False, False] and enc.tolist()[4] == [False, False, False, True, True]
    assert dec.tolist()[3] == [False, False, True, True, False]  # causal, within the second target
    assert cross.tolist()[1] == [True, True, True, False, False] and cross.tolist()[2] == [False] * 3 + [True] * 2


def test_seq2seq_packing_keeps_padding_under_five_percent_and_every_token_once():
    for seed in range(5):
        feats = _pairs(seed=seed)
        b = pack_seq2seq(feats, pad_id=0, start_id=0, multiple_of=8)
        real = sum(len(f["input_ids"]) + len(f["labels"]) for f in feats)
        assert 1 - real / (b["input_ids"].numel() + b["labels"].numel()) <= 0.05
        assert sorted(b["input_ids"][b["encoder_segments"] > 0].tolist()) == sorted(
            t for f in feats for t in f["input_ids"]
        )
        assert int((b["labels"] != IGNORE).sum()) == sum(len(f["labels"]) for f in feats)
    padded = pad_batch(feats, pad_id=0, multiple_of=8)
    assert 1 - real / (padded["input_ids"].numel() + padded["labels"].numel()) > 0.2  # what packing saves


def _summaries(n, seed=0):
    """Summarisation-shaped pairs, source and target lengths drawn independently (the hard case)."""
    rng = random.Random(seed)
    return [
        {"input_ids": [5] * rng.randint(128, 512), "labels": [6] * rng.randint(16, 128), "decoder": True}
        for _ in range(n)
    ]


def _padding(feats, batches):
    real = slots = 0
    for b in batches:
        rows = [feats[i] for i in b]
        real += sum(len(f["input_ids"]) + len(f["labels"]) for f in rows)
        slots += len(rows) * (max(len(f["input_ids"]) for f in rows) + max(len(f["labels"]) for f in rows))
    return 1 - real / slots


def test_length_grouped_batches_hold_every_example_once_with_little_padding():
    feats = _summaries(4000)
    sampler = LengthGroupedBatches(feats, batch_size=16, seed=3)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert sorted(i for b in epoch for i in b) == list(range(4000)) and len(epoch) == len(sampler) == 250
        assert all(len(b) == 16 for b in epoch)
        assert _padding(feats, epoch) < 0.05
    assert {tuple(b) for b in first} != {tuple(b) for b in second}  # other batches every epoch
    assert list(LengthGroupedBatches(feats, batch_size=16, seed=3)) == first  # seeded
    shuffled = torch.randperm(4000, generator=torch.Generator().manual_seed(0)).tolist()
    assert _padding(feats, [shuffled[i : i + 16] for i in range(0, 4000, 16)]) > 0.3  # what grouping saves


def test_grouped_loader_counts_every_token_and_its_padding():
    from peftbench.run.train import PLAIN, make_loader

    feats = [dict(f, input_ids=list(range(3, 3 + len(f["input_ids"])))) for f in _summaries(160, seed=1)]
    speed = {**PLAIN, "group_by_length": True}
    batches = list(make_loader(feats, batch_size=8, pad_id=0, seed=0, speed=speed))
    assert sum(b["num_examples"] for b in batches) == 160
    assert sum(b["num_tokens"] for b in batches) == sum(len(f["input_ids"]) + len(f["labels"]) for f in feats)
    grouped = 1 - sum(b["num_tokens"] for b in batches) / sum(b["num_slots"] for b in batches)
    plain = list(make_loader(feats, batch_size=8, pad_id=0, seed=0, speed=PLAIN))
    assert grouped < 1 - sum(b["num_tokens"] for b in plain) / sum(b["num_slots"] for b in plain) - 0.15


def test_encoder_decoders_train_padded_on_gpus_and_group_by_length_when_asked():
    t5, gpt2 = models.build_random("tiny-t5", seed=0), models.build_random("tiny-gpt2", seed=0)
    s = resolve(TrainArgs(), device_type="cuda", family="seq2seq", task="summarization", model=t5, varying=True)
    assert not s["packing"] and "padded" in s["reasons"]["packing"]
    assert not s["group_by_length"] and "host-bound" in s["reasons"]["group_by_length"]
    grouped = TrainArgs(group_by_length="on")
    s = resolve(grouped, device_type="cuda", family="seq2seq", task="summarization", model=t5, varying=True)
    assert s["group_by_length"] and not s["packing"]
    s = resolve(grouped, device_type="cuda", family="causal", task="classification", model=gpt2, varying=True)
    assert s["packing"] and not s["group_by_length"] and "packed" in s["reasons"]["group_by_length"]
    s = resolve(grouped, device_type="cpu", family="causal", task="classification", model=gpt2, varying=False)
    assert not s["group_by_length"] and "same length" in s["reasons"]["group_by_length"]
    s = resolve(TrainArgs(packing="on"), device_type="cuda", family="seq2seq", task="summarization", model=t5)
    assert s["packing"]  # asked for: packed


@pytest.mark.parametrize("method", ["full", "lora", "ia3"])
def test_packed_seq2seq_loss_and_gradients_equal_the_padded_ones(method):
    base = models.build_random("tiny-t5", seed=0)
    model = methods.apply(name=method, options={}, model=base, family="seq2seq").model.eval()
    assert seq2seq_packs_correctly(model)
    feats = _pairs()
    module = LossModule(model)
    padded = module.model(**pad_batch(feats, pad_id=0), use_cache=False).loss
    ref = torch.autograd.grad(padded, [p for p in model.parameters() if p.requires_grad])
    packed = module(pack_seq2seq(feats, pad_id=0, start_id=model.config.decoder_start_token_id))
    got = torch.autograd.grad(packed, [p for p in model.parameters() if p.requires_grad])
    assert torch.allclose(packed, padded, rtol=1e-5)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_split_head_refuses_what_is_not_head_of_body():
    base = models.build_random("tiny-gpt2", seed=0)
    assert split_head(base)[1] is base.lm_head
    lora = methods.apply(name="lora", options={}, model=copy.deepcopy(base), family="causal").model
    body, head = split_head(lora)
    assert head is lora.get_base_model().lm_head and body is lora.get_base_model().transformer
    on_head = methods.apply(
        name="lora", options={"target_modules": ["c_attn", "lm_head"]}, model=copy.deepcopy(base), family="causal"
    ).model
    assert split_head(on_head) is None
    assert split_head(models.build_random("tiny-t5", seed=0)) is None
    with pytest.raises(ValueError, match="head"):
        LossModule(on_head, fused_loss="chunked")


def test_cuda_graphs_only_for_a_compiled_run_of_one_shape_on_one_process():
    lm = {"family": "causal", "task": "language-modeling", "model": models.build_random("tiny-gpt2", seed=0)}

    def graphs(args=None, **kw):
        s = resolve(args or TrainArgs(compile="regions"), **{"device_type": "cuda", **lm, **kw})
        return s["cuda_graphs"], s["reasons"].get("cuda_graphs", "")

    assert graphs() == (True, "auto: on (" + CUDA_GRAPHS + ")")
    assert graphs(TrainArgs(compile="regions", cuda_graphs="off")) == (False, "")
    assert graphs(device_type="cpu") == (False, "auto: off on CPU")
    assert graphs(TrainArgs(compile="off", cuda_graphs="on"))[1].endswith("(the eager step is recorded: graph_step)")
    assert graphs(TrainArgs(compile="auto"), tokens=1e5)[1] == "auto: off: nothing is compiled"  # too short to compile
    assert "shapes vary" in graphs(varying=True)[1] and "several processes" in graphs(processes=2)[1]
    assert "checkpointed" in graphs(TrainArgs(compile="regions", gradient_checkpointing=True))[1]
    assert "accumulated" in graphs(TrainArgs(compile="regions", gradient_accumulation_steps=2))[1]
    assert graphs(TrainArgs(compile="model"))[1].startswith("auto: off for a whole-model graph")  # not measured
    assert graphs(TrainArgs(compile="model", cuda_graphs="on"))[0] is True


def test_cudnn_attention_off_with_cuda_where_shapes_vary_and_the_kernels_follow():
    from peftbench.run.speed import CUDNN_ATTENTION, attention_kernels

    lm = {"family": "causal", "task": "classification", "model": models.build_random("tiny-gpt2", seed=0)}

    def cudnn(args=None, **kw):
        s = resolve(args or TrainArgs(), **{"device_type": "cuda", **lm, **kw})
        return s["cudnn_attention"], s["reasons"].get("cudnn_attention", "")

    assert cudnn(varying=True) == (False, f"auto: off, batch shapes vary ({CUDNN_ATTENTION})")
    assert cudnn(varying=False) == (True, "")  # one shape: torch's own choice
    assert cudnn(device_type="cpu", varying=True) == (True, "")  # no cuDNN attention on CPU to avoid
    assert cudnn(TrainArgs(cudnn_attention="on"), varying=True)[0] is True
    assert cudnn(TrainArgs(cudnn_attention="off"), varying=False)[0] is False
    from peftbench.run.graphed import HOST_BOUND_FLOPS
    from peftbench.run.speed import CUDNN_RECORDED

    recorded = resolve(TrainArgs(), device_type="cuda", **lm, varying=True, step_flops=HOST_BOUND_FLOPS / 10)
    assert recorded["graph_step"] is True and recorded["cudnn_attention"] is True  # padded to one shape, recorded once
    assert recorded["reasons"]["cudnn_attention"] == f"auto: on, the recorded step has one shape ({CUDNN_RECORDED})"
    assert cudnn(TrainArgs(cudnn_attention="off"), varying=True, step_flops=HOST_BOUND_FLOPS / 10)[0] is False
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with attention_kernels({"cudnn_attention": False}, "cuda"):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after training
    with attention_kernels({"cudnn_attention": False}, "cpu"), attention_kernels({"cudnn_attention": True}, "cuda"):
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_switches_resolve_off_on_cpu_and_say_why_when_they_cannot_apply():
    causal = models.build_random("tiny-gpt2", seed=0)
    s = resolve(TrainArgs(), device_type="cpu", family="causal", task="classification", model=causal)
    assert (s["compile"], s["fused_optimizer"], s["fused_loss"], s["packing"], s["dataloader_workers"]) == (
        "off",
        False,
        "chunked",  # the one switch on by default on CPU (benchmarks/results/cpu_fused_loss_2core.md)
        False,
        0,
    )
    on = TrainArgs(compile="on")
    assert (
        resolve(on, device_type="cpu", family="causal", task="classification", model=causal, varying=True)["compile"]
        == "regions"
    )
    assert (
        resolve(on, device_type="cpu", family="causal", task="language-modeling", model=causal, varying=False)[
            "compile"
        ]
        == "model"
    )
    lm = {"family": "causal", "task": "language-modeling", "model": causal}
    sharded = resolve(TrainArgs(), device_type="cuda", sharded=True, **lm)  # FSDP: auto does not compile
    assert sharded["compile"] == "off" and "FSDP" in sharded["reasons"]["compile"]
    assert resolve(on, device_type="cuda", sharded=True, **lm)["compile"] == "model"  # on does
    forced = TrainArgs(packing="on", fused_loss="on", fused_optimizer="on")
    s = resolve(forced, device_type="cpu", family="causal", task="classification", model=causal)
    assert (s["fused_loss"], s["packing"], s["fused_optimizer"]) == ("chunked", True, True)
    s = resolve(forced, device_type="cpu", family="causal", task="language-modeling", model=causal)
    assert not s["packing"] and "no padding" in s["reasons"]["packing"]
    t5 = models.build_random("tiny-t5", seed=0)
    s = resolve(forced, device_type="cpu", family="seq2seq", task="summarization", model=t5)
    assert (s["fused_loss"], s["packing"]) == ("off", True)
    assert "seq2seq" in s["reasons"]["fused_loss"]
    prompt = methods.apply(name="prompt_tuning", options={}, model=t5, family="seq2seq").model
    s = resolve(forced, device_type="cpu", family="seq2seq", task="summarization", model=prompt)
    assert not s["packing"] and "encoder-decoder" in s["reasons"]["packing"]


def _run(speed, steps=12, method="lora", dropout=0.0, feats=None, clock=None, cpu=True, log_steps=None):
    from accelerate import Accelerator

    from peftbench.run.train import train

    base = models.build_random("tiny-gpt2", seed=0)
    for m in base.modules():  # dropout draws its masks per layout: packed rows would draw other ones
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
    model = methods.apply(
        name=method, options={"lora_dropout": 0.0} if method == "lora" else {}, model=base, family="causal"
    ).model
    args, acc, feats = (
        TrainArgs(max_steps=steps, batch_size=4, warmup_ratio=0.0, seed=3, log_steps=log_steps),
        Accelerator(cpu=cpu),
        feats or _features(40),
    )
    settings = for_loop(n_examples=len(feats), args=args, learning_rate=1e-2, accelerator=acc, speed=speed)
    return train(model, feats, args=args, settings=settings, accelerator=acc, pad_id=0, clock=clock)


def test_the_captured_step_resolves_only_where_nothing_compiles_on_one_cuda_process_and_pads_to_one_shape():
    lm = {"family": "causal", "task": "classification", "model": models.build_random("tiny-gpt2", seed=0)}

    def step(args, **kw):
        s = resolve(args, **{"device_type": "cuda", "varying": True, **lm, **kw})
        return s["graph_step"], s["reasons"].get("graph_step", ""), s

    on = TrainArgs(compile="off", cuda_graphs="on")
    ok, why, s = step(on)
    assert ok and why.startswith("on: the eager step recorded as one CUDA graph")
    assert not s["packing"] and s["reasons"]["packing"] == "off: the captured step pads every batch to one shape"
    off, why, _ = step(TrainArgs(compile="off"))
    assert off is False and why.startswith("auto: off (the step's size is unknown")
    assert step(on, device_type="cpu")[:2] == (False, "")
    assert step(TrainArgs(compile="regions", cuda_graphs="on"))[0] is False  # compiled: torch's own CUDA graphs
    assert "several processes" in step(on, processes=2)[1] and "several processes" in step(on, sharded=True)[1]
    assert "accumulated" in step(TrainArgs(compile="off", cuda_graphs="on", gradient_accumulation_steps=2))[1]
    assert "checkpointed" in step(TrainArgs(compile="off", cuda_graphs="on", gradient_checkpointing=True))[1]


def test_auto_records_a_host_bound_step_instead_of_compiling_and_leaves_a_compute_bound_one_to_compilation():
    from peftbench.run.graphed import HOST_BOUND_FLOPS, step_flops

    model = models.build_random("tiny-gpt2", seed=0)
    feats = [{"input_ids": [1] * n, "labels": [1] * n} for n in (5, 9, 7)]
    params = sum(p.numel() for p in model.parameters())
    assert step_flops(model, feats, rows=4) == 6.0 * params * 4 * 9  # padded to the longest example
    t5 = models.build_random("tiny-t5", seed=0)
    pairs = [{"input_ids": [1] * 6, "labels": [1] * 3, "decoder": True}, {"input_ids": [1] * 4, "labels": [1] * 5}]
    assert step_flops(t5, pairs, rows=2) == 6.0 * sum(p.numel() for p in t5.parameters()) * 2 * (6 + 5)
    lm = {"device_type": "cuda", "family": "causal", "task": "classification", "model": model, "varying": True}

    def speed(args=None, **kw):
        s = resolve(args or TrainArgs(), **{**lm, **kw})
        return s["compile"], s["graph_step"], s["reasons"]

    small, big = HOST_BOUND_FLOPS / 10, HOST_BOUND_FLOPS * 2
    mode, graph, why = speed(step_flops=small, tokens=1e9)  # long enough to repay compiling: recorded instead
    assert (mode, graph) == ("off", True) and why["compile"].startswith("auto: off, the eager step is recorded")
    assert why["graph_step"].startswith("auto: on, the eager step recorded") and "1.00 TFLOP" in why["graph_step"]
    assert why["packing"] == "off: the captured step pads every batch to one shape"
    assert speed(step_flops=big, tokens=1e9)[:2] == ("regions", False)  # compute-bound and long: compiled
    mode, graph, why = speed(step_flops=big, tokens=1e5)  # compute-bound and short: eager, not recorded
    assert (mode, graph) == ("off", False) and "20.00 TFLOP a padded step, over the 10.0" in why["graph_step"]
    assert speed(step_flops=HOST_BOUND_FLOPS * 0.75, sms=66)[1] is False  # half the multiprocessors: half the limit
    assert speed(step_flops=HOST_BOUND_FLOPS * 0.75, sms=132)[1] is True
    assert speed(TrainArgs(compile="regions"), step_flops=small)[:2] == ("regions", False)  # a forced compile stays
    assert speed(TrainArgs(cuda_graphs="off"), step_flops=small, tokens=1e9)[:2] == ("regions", False)
    mode, graph, why = speed(step_flops=small, tokens=1e9, processes=2)  # DDP: not recordable, compiled as before
    assert (mode, graph) == ("regions", False)
    assert speed(TrainArgs(gradient_accumulation_steps=2), step_flops=small, tokens=1e5)[2]["graph_step"] == (
        "auto: off, gradients accumulated over micro-batches"
    )
    assert speed(step_flops=small, device_type="cpu")[:2] == ("off", False)


def test_a_recorded_step_takes_the_chunked_loss_where_liger_would_read_back_to_the_host(monkeypatch):
    from peftbench.run import speed as speed_mod
    from peftbench.run.graphed import HOST_BOUND_FLOPS

    monkeypatch.setattr(speed_mod, "liger_available", lambda: True)
    model = models.build_random("tiny-gpt2", seed=0)  # a vocabulary of 384: aligned, so auto would take Liger
    lm = {"device_type": "cuda", "family": "causal", "task": "classification", "model": model, "varying": True}
    big = resolve(TrainArgs(), **lm, step_flops=HOST_BOUND_FLOPS * 2)
    assert (big["fused_loss"], big["graph_step"]) == ("liger", False)  # not recorded: Liger's loss as before
    small = resolve(TrainArgs(), **lm, step_flops=HOST_BOUND_FLOPS / 10)
    assert (small["fused_loss"], small["graph_step"]) == ("chunked", True)
    assert small["reasons"]["fused_loss"].startswith("auto: chunked, the step is recorded (Liger's fused linear")
    forced = resolve(TrainArgs(fused_loss="liger"), **lm, step_flops=HOST_BOUND_FLOPS / 10)
    assert (forced["fused_loss"], forced["graph_step"], forced["packing"]) == ("liger", False, True)
    assert forced["compile"] == "regions"  # not recorded, so compiled as before
    short = resolve(TrainArgs(fused_loss="liger"), **lm, step_flops=HOST_BOUND_FLOPS / 10, tokens=1e5)
    assert (short["compile"], short["graph_step"]) == ("off", False)  # too short to compile: eager, and says why
    assert short["reasons"]["graph_step"].startswith("off: fused_loss is liger (Liger's fused linear")
    on = resolve(TrainArgs(fused_loss="liger", compile="off", cuda_graphs="on"), **lm)
    assert (on["fused_loss"], on["graph_step"]) == ("liger", False)
    t5 = {**lm, "family": "seq2seq", "task": "summarization", "model": models.build_random("tiny-t5", seed=0)}
    seq = resolve(TrainArgs(fused_loss="liger"), **t5, step_flops=HOST_BOUND_FLOPS / 10)  # no loss to fuse here
    assert (seq["fused_loss"], seq["compile"], seq["graph_step"]) == ("off", "off", True)  # so recorded as auto's


def test_a_fixed_shape_pads_every_batch_and_the_loss_positions_to_one_shape_and_keeps_the_loss_curve():
    """The captured step's batches (``run.graphed.fixed_shape``): every batch of the longest example's length and
    the fused loss's positions of one count, the padding counted in no loss: the dynamic padding's loss curve."""
    from peftbench.run.graphed import fixed_shape
    from peftbench.run.train import make_loader

    feats = _features(40)
    fixed = fixed_shape(feats, batch_size=4, multiple_of=8)
    longest = max(len(f["input_ids"]) for f in feats)
    assert fixed == {"length": -(-longest // 8) * 8, "rows": 4, "loss_positions": 16}  # 4 rows x 3 answer tokens
    speed = {"fused_loss": "chunked", "fixed_shape": fixed}
    shapes = {
        (tuple(b["input_ids"].shape), tuple(b["labels"].shape), tuple(b["loss_index"].shape))
        for b in make_loader(feats, batch_size=4, pad_id=0, seed=0, speed=speed)
    }
    assert shapes == {((4, fixed["length"]), (4, fixed["length"]), (fixed["loss_positions"],))}
    dynamic, padded = _run({"fused_loss": "chunked"}), _run(speed)
    a, b = [p["loss"] for p in dynamic.loss_curve], [p["loss"] for p in padded.loss_curve]
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-5
    assert padded.tokens == dynamic.tokens and padded.padding_fraction > dynamic.padding_fraction


def test_a_captured_step_asked_for_off_a_cuda_device_trains_eagerly_and_says_why():
    """Recorded on the CPU, a graph would hold no kernels and replay nothing: the loop steps eagerly instead."""
    from peftbench.run.graphed import fixed_shape

    feats = _features(42)
    base = {"fused_loss": "chunked", "fused_optimizer": False}
    eager = _run({**base, "fixed_shape": fixed_shape(feats, batch_size=4, multiple_of=1)}, feats=feats, log_steps=1)
    asked = {**base, "graph_step": True, "reasons": {}}  # as resolve gives it: the reasons land in the result's
    cpu = _run(asked, feats=feats, log_steps=1)
    assert asked["reasons"]["graph_step"] == "off: the model is on cpu, not a CUDA device"
    assert asked["graph_step"] is False  # the settings' own switch (the result's `resolved.speed`), not a copy's
    assert cpu.speed["graph_step"] is False and "graph_replays" not in cpu.speed
    a, b = [p["loss"] for p in eager.loss_curve], [p["loss"] for p in cpu.loss_curve]
    assert len(a) == 12 and a == b and len(set(b)) == 12  # the same eager steps, every loss its own


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_captured_step_keeps_the_eager_loss_curve_and_fills_the_epochs_last_batch(method):
    """The eager step recorded as one CUDA graph (``train.cuda_graphs: on``, nothing compiled) trains as the same
    step run eagerly over the same padded batches: 42 examples in batches of 4 end each epoch in a batch of 2, grown
    by filler rows; two eager warm-up steps, then the recording's replay and one replay per step."""
    from peftbench.run.graphed import fixed_shape

    feats = _features(42)
    fixed = fixed_shape(feats, batch_size=4, multiple_of=8)
    base = {"fused_loss": "chunked", "fused_optimizer": True}
    eager = _run({**base, "fixed_shape": fixed}, method=method, feats=feats, cpu=False, log_steps=1)
    graphed = _run({**base, "graph_step": True}, method=method, feats=feats, cpu=False, log_steps=1)
    a, b = [p["loss"] for p in eager.loss_curve], [p["loss"] for p in graphed.loss_curve]
    assert len(a) == len(b) == 12 and max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-4
    assert (graphed.speed["graph_replays"], graphed.speed["graph_eager_steps"], graphed.speed["graph_failed"]) == (
        10,
        0,
        None,
    )
    assert graphed.speed["filled_batches"] == 1 and graphed.tokens == eager.tokens
    assert [bool(lap.get("warmup")) for lap in graphed.laps][:4] == [True, True, True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_recording_that_fails_leaves_dropout_working_for_the_eager_steps_after_it():
    """A step a graph cannot hold (a host read of the loss) fails its recording; the generator, which a failed
    capture leaves marked as capturing, is given its state back, so the eager steps after it draw dropout masks."""
    from peftbench.run.graphed import GraphedStep

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)

    def step(batch):
        loss = model(batch["x"]).pow(2).mean()
        if loss.item() < 0:  # a host read: cannot be captured
            raise AssertionError
        loss.backward()
        opt.step()
        return loss

    stepper = GraphedStep(step, opt, warmup=1)
    batch = {"x": torch.randn(4, 8, device="cuda")}
    stream = torch.cuda.current_stream()
    assert stepper(batch) is not None and stepper(batch) is None and stepper.graph is None
    assert torch.cuda.current_stream() == stream  # not the failed capture's stream
    assert "capturing" in stepper.failed and "test_speed.py" in stepper.failed  # the error and where it was raised
    masks = [torch.nn.functional.dropout(torch.ones(64, device="cuda"), 0.5) for _ in range(2)]
    assert not torch.equal(masks[0], masks[1])
    opt.zero_grad()
    step(batch)  # the run's eager step after the failed recording


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fast_path_keeps_the_loss_curve_and_drops_the_padding(method):
    plain = _run({}, method=method)
    fast = _run({"fused_loss": "chunked", "packing": True, "fused_optimizer": True}, method=method)
    a = [p["loss"] for p in plain.loss_curve]
    b = [p["loss"] for p in fast.loss_curve]
    assert len(a) == len(b) == 12
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-4  # the same sums in another order
    assert plain.tokens == fast.tokens
    assert plain.padding_fraction > 0.2 and fast.padding_fraction == 0.0
    assert fast.speed["packing"] and fast.speed["fused_loss"] == "chunked"


def test_warmup_steps_are_laps_of_their_own_and_left_out_of_the_steady_rate():
    r = _run({}, steps=8)
    assert [lap["step"] for lap in r.laps] == list(range(1, 9))
    assert [bool(lap.get("warmup")) for lap in r.laps] == [True, True] + [False] * 6
    steady = r.laps[2:]
    rate = sum(lap["tokens"] for lap in steady) / sum(lap["seconds"] for lap in steady)
    assert r.steady_tokens_per_second == pytest.approx(rate, rel=1e-3)
    assert r.warmup_seconds >= 0


def test_every_lap_carries_the_gpu_clock_and_the_run_its_steady_range():
    """A GPU that slows under sustained load shows in its laps: the SM clock read at each lap (a clock the test
    sets), summarised over the steady laps only (the warm-up laps' clocks are left out, as their rates are)."""
    readings = iter([1980, 1965, 1800, 1755, 1500, 1980, 1620, 1700])
    r = _run({}, steps=8, clock=lambda: next(readings))
    assert [lap["sm_clock_mhz"] for lap in r.laps] == [1980, 1965, 1800, 1755, 1500, 1980, 1620, 1700]
    assert r.gpu_clock_mhz == {"min": 1500, "median": 1755, "max": 1980}  # steps 3-8
    plain = _run({}, steps=4)  # on CPU: no clock, no key
    assert plain.gpu_clock_mhz is None and all("sm_clock_mhz" not in lap for lap in plain.laps)


def test_compiled_regions_keep_the_loss_curve_and_hand_back_an_uncompiled_model():
    from accelerate import Accelerator

    from peftbench.run.train import train

    plain = _run({})
    model = methods.apply(
        name="lora", options={"lora_dropout": 0.0}, model=models.build_random("tiny-gpt2", seed=0), family="causal"
    ).model
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    from torch._dynamo.utils import counters

    counters.clear()
    args, acc, feats = (
        TrainArgs(max_steps=12, batch_size=4, warmup_ratio=0.0, seed=3),
        Accelerator(cpu=True),
        _features(40),
    )
    speed = {"compile": "regions", "fused_loss": "chunked", "packing": True}
    settings = for_loop(n_examples=len(feats), args=args, learning_rate=1e-2, accelerator=acc, speed=speed)
    fast = train(model, feats, args=args, settings=settings, accelerator=acc, pad_id=0)
    a, b = [p["loss"] for p in plain.loss_curve], [p["loss"] for p in fast.loss_curve]
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-4
    assert counters["stats"]["unique_graphs"] == 1  # one graph serves every block, the first too (its input needs grad)
    blocks = model.get_base_model().transformer.h
    assert len(blocks) == 2 and all(getattr(b, "_compiled_call_impl", None) is None for b in blocks)
    assert not model.get_base_model().get_input_embeddings()._forward_hooks  # the input-gradient hook removed


@pytest.mark.parametrize("compile_", ["regions", "model"])
def test_a_compiled_run_of_fixed_length_blocks_fills_the_epochs_last_smaller_batch(compile_):
    """10 blocks in batches of 4: every epoch ends in a batch of 2. It is grown to 4 rows by filler rows that
    count no loss (no second graph, no dynamic one, no eager step) and the loss curve is the eager run's."""
    from torch._dynamo.utils import counters

    rng = random.Random(1)
    blocks = [
        {"input_ids": ids, "labels": list(ids)}
        for ids in ([rng.randrange(3, 200) for _ in range(8)] for _ in range(10))
    ]
    plain = _run({}, steps=9, feats=blocks)
    counters.clear()
    fast = _run({"compile": compile_}, steps=9, feats=blocks)
    assert (fast.speed["filled_batches"], fast.speed["eager_batches"]) == (3, 0)  # steps 3, 6 and 9
    assert "eager_batches" not in plain.speed and "filled_batches" not in plain.speed
    assert fast.padding_fraction == pytest.approx(3 * 2 * 8 / (9 * 4 * 8), abs=1e-6)  # the filler rows' slots
    a, b = [p["loss"] for p in plain.loss_curve], [p["loss"] for p in fast.loss_curve]
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-4
    assert 1 <= counters["stats"]["unique_graphs"] <= 2  # the batch of 4's graph(s) only
    spent = fast.speed["compile_seconds"]  # the warm-up's compilation, from torch's own clock
    assert spent["frames"] >= counters["stats"]["unique_graphs"] and spent["seconds"] > spent["backward"] >= 0
    assert plain.speed["compile_seconds"] is None  # nothing compiled, nothing to say
    slowest = spent["slowest"]  # which code took the time: the blocks' forward (regions) or the model's
    assert slowest and all(f["frame"] and f["seconds"] >= 0 for f in slowest)
    assert [f["seconds"] for f in slowest] == sorted((f["seconds"] for f in slowest), reverse=True)
    stages = spent["stages"]  # where it went: its parts add up to the clock's total (torch's two records of it)
    assert set(stages) == {"tracing", "autograd", "inductor", "kernels"} and min(stages.values()) >= 0
    assert sum(stages.values()) == pytest.approx(spent["seconds"], rel=0.1, abs=0.05)
    # no Triton kernel on a CPU (the inductor writes C++ there, and waits on it), no compile workers started early
    kernels = spent["kernels"]
    assert set(kernels) == {"compiled_here", "compiled_here_seconds", "waited_seconds"}
    assert (kernels["compiled_here"], kernels["compiled_here_seconds"]) == (0, 0.0)
    assert 0 <= kernels["waited_seconds"] <= stages["kernels"] + 0.001  # the waits are in the stage's clock


def test_the_kernels_record_says_where_they_compiled_and_when_the_workers_were_ready(monkeypatch):
    """``compile_seconds.kernels`` reads torch's clock of kernels compiled in the run's process (workers not ready)
    and of the waits on the workers, and the early workers' start, readiness and the first frame's compilation."""
    import types

    import torch._dynamo.utils as dynamo_utils

    from peftbench.run import compiletime

    monkeypatch.setattr(dynamo_utils, "compilation_time_metrics", {compiletime.HERE: [0.5]})
    before = compiletime.snapshot()
    dynamo_utils.compilation_time_metrics[compiletime.HERE] += [0.25, 0.75]  # two more, in this run
    dynamo_utils.compilation_time_metrics[compiletime.WAIT] = [1.5, 0.5]
    monkeypatch.setattr(compiletime, "_workers", {"started": 1000.0, "ready": 1003.25, "start": "fork"})
    records = [types.SimpleNamespace(start_time_us=1_002_500_000), types.SimpleNamespace(start_time_us=1_001_750_000)]
    out = compiletime._kernels(compiletime.snapshot()["clock"], before["clock"], records)
    assert out == {
        "compiled_here": 2,
        "compiled_here_seconds": 1.0,
        "waited_seconds": 2.0,
        "workers_start": "fork",
        "workers_ready_after_seconds": 3.25,
        "first_compile_after_seconds": 1.75,
    }
    monkeypatch.setattr(compiletime, "_workers", {"started": 1000.0})  # started, never ready
    assert (
        compiletime._kernels(compiletime.snapshot()["clock"], before["clock"], [])["workers_ready_after_seconds"]
        is None
    )


def test_fused_loss_is_off_for_a_method_that_trains_beside_the_body():
    """peft's shadow trains a side network on the output path: a fused head(body(x)) loss would skip it
    (and train nothing); LoRA's parameters are inside the body, so the fused loss stays."""
    forced = TrainArgs(fused_loss="chunked")
    lora = methods.apply(name="lora", options={}, model=models.build_random("tiny-gpt2", seed=0), family="causal")
    assert (
        resolve(forced, device_type="cpu", family="causal", task="classification", model=lora.model)["fused_loss"]
        == "chunked"
    )
    shadow = methods.apply(name="shadow", options={}, model=models.build_random("tiny-gpt2", seed=0), family="causal")
    s = resolve(forced, device_type="cpu", family="causal", task="classification", model=shadow.model)
    assert s["fused_loss"] == "off" and "outside the body" in s["reasons"]["fused_loss"]


def test_compiled_graphs_go_to_peftbench_cache_unless_the_user_chose_a_folder(monkeypatch, tmp_path):
    """Importing peft makes torch set TORCHINDUCTOR_CACHE_DIR to its temporary default; peftbench
    replaces that (so the next run's process finds the graphs), but not a folder the user chose."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from peftbench.catalog import sources

    ours = str(Path(os.environ["PEFTBENCH_CACHE"]) / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert sources.use_inductor_cache() == ours == os.environ["TORCHINDUCTOR_CACHE_DIR"]
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))  # a later run with another cache follows it
    assert sources.use_inductor_cache() == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert sources.use_inductor_cache() == str(tmp_path / "mine")


def test_compile_auto_compiles_regions_only_where_the_run_repays_it():
    from peftbench.run.speed import REPAYS_TOKENS, _compile_mode, is_warm, mark_warm, warm_key

    def pick(value="auto", cuda=True, varying=False, tokens=None, warm=False):
        reasons = {}
        return _compile_mode(value, cuda=cuda, varying=varying, reasons=reasons, tokens=tokens, warm=warm), reasons

    mode, why = pick(tokens=80 * 8192)  # issue 26's 80 steps of 16 x 512: 0.66 M tokens, under the cold 1.8 M
    assert mode == "off" and "0.66 M tokens to train, under the 1.80 M a cold compilation repays" in why["compile"]
    assert pick(tokens=80 * 8192, warm=True)[0] == "regions"  # warm graphs repay from 0.6 M
    assert pick(tokens=50 * 8192, warm=True)[0] == "off"  # 50 steps: 0.41 M, too few even for warm graphs
    assert pick(tokens=REPAYS_TOKENS["cold"])[0] == "regions" and pick(tokens=None)[0] == "regions"
    assert pick(varying=True, tokens=1e7)[0] == "regions"  # no whole-model graph from auto, fixed shapes or not
    assert pick("on")[0] == "model" and pick("on", varying=True)[0] == "regions"  # `on` keeps its meaning
    assert pick(cuda=False, tokens=1e9) == ("off", {"compile": "auto: off on CPU"})
    key = warm_key("random:gpt2", "lora", {"r": 8}, "bf16", False)
    assert key != warm_key("random:gpt2", "ia3", {}, "bf16", False) and not is_warm(key)
    mark_warm(key)
    assert is_warm(key) and not is_warm(warm_key("random:gpt2", "lora", {"r": 16}, "bf16", False))


def test_fused_loss_auto_is_chunked_on_cpu_and_trains_the_same_losses(data_dir):
    """benchmarks/results/cpu_fused_loss_2core.md: on CPU the chunked loss was never slower and the same loss;
    auto takes it for causal LMs whose logits are head(body(x)) and leaves encoder-decoders alone."""
    from peftbench.run.speed import resolve
    from peftbench.spec.config import TrainArgs

    causal = models.build_random("tiny-gpt2", seed=0)
    s = resolve(TrainArgs(), device_type="cpu", family="causal", task="classification", model=causal)
    assert s["fused_loss"] == "chunked" and "auto: chunked on CPU" in s["reasons"]["fused_loss"]
    t5 = models.build_random("tiny-t5", seed=0)
    assert (
        resolve(TrainArgs(), device_type="cpu", family="seq2seq", task="summarization", model=t5)["fused_loss"] == "off"
    )


# ---------------------------------------------------------------- no device read per step (run.unpadded)


def _lm_batch(ids: torch.Tensor, mask: torch.Tensor) -> dict:
    labels = torch.where(mask.bool(), ids, IGNORE)
    index, targets = loss_positions(torch.where(mask.bool(), torch.full_like(ids, 5), IGNORE))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "loss_index": index, "loss_targets": targets}


@pytest.mark.parametrize("shape", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("fused", ["chunked", "off"])
def test_an_unpadded_batch_trains_without_reading_a_value_back_from_the_device(shape, fused):
    """On the meta device every read of a tensor's value raises: transformers' causal mask reads the attention mask
    back once per forward (is any token padded?), a host-device synchronisation per step on a GPU. Marked unpadded,
    the forward and backward complete without one read."""
    from peftbench.run import unpadded

    with torch.device("meta"):
        model = models.build_random(shape, seed=0)
    batch = _lm_batch(torch.randint(3, 100, (4, 16)), torch.ones(4, 16, dtype=torch.long))
    batch = {k: v.to("meta") for k, v in batch.items()}
    module = LossModule(model, fused_loss=fused)
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        module(dict(batch)).backward()  # transformers' own check reads the mask
    with unpadded.masks(), unpadded.batch(True):
        module(dict(batch)).backward()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())


def _sliding_window_model():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=4, max_position_embeddings=64, attn_implementation="sdpa",
    )  # fmt: skip
    return MistralForCausalLM(cfg).eval()


@pytest.mark.parametrize("shape", ["tiny-gpt2", "tiny-llama", "sliding-window"])
def test_the_host_side_answer_is_transformers_own(shape):
    """The wrapped mask function returns what transformers returns: the same loss, bit for bit, on an unpadded
    batch marked so, on a padded batch (not marked: transformers' mask), and for a sliding-window model, whose
    mask is not the plain causal one (passed through even when marked)."""
    from peftbench.run import unpadded

    model = _sliding_window_model() if shape == "sliding-window" else models.build_random(shape, seed=0).eval()
    ids = torch.randint(3, 100, (3, 12), generator=torch.Generator().manual_seed(1))
    full = _lm_batch(ids, torch.ones_like(ids))
    padded = _lm_batch(ids, torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 10 + [0] * 2]))
    module = LossModule(model, fused_loss="off")
    with torch.no_grad():
        want = [module(dict(b)) for b in (full, padded)]
        with unpadded.masks():
            with unpadded.batch(True):
                got_full = module(dict(full))
            with unpadded.batch(False):
                got_padded = module(dict(padded))
    assert torch.equal(got_full, want[0]) and torch.equal(got_padded, want[1])
    assert not torch.equal(want[0], want[1])  # the padding mattered: the comparison could fail


def test_the_mask_function_is_restored_after_training_and_the_collate_knows_the_padding():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    from peftbench.run import unpadded
    from peftbench.run.train import PLAIN, make_loader

    before = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    with unpadded.masks():
        assert ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] is not before
        with unpadded.masks():  # nested: wrapped once
            assert ALL_MASK_ATTENTION_FUNCTIONS["sdpa"].peftbench_original is before
    assert ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] is before
    fixed = [{"input_ids": [5] * 8, "labels": [5] * 8} for _ in range(6)]
    assert [b["unpadded"] for b in make_loader(fixed, batch_size=4, pad_id=0, seed=0, speed=PLAIN)] == [True, True]
    mixed = fixed[:3] + [{"input_ids": [5] * 3, "labels": [5] * 3}]
    (b,) = make_loader(mixed, batch_size=4, pad_id=0, seed=0, speed=PLAIN)
    assert b["unpadded"] is False and int(b["attention_mask"].sum()) == 27
    (b,) = make_loader(mixed, batch_size=4, pad_id=0, seed=0, speed={**PLAIN, "packing": True})
    assert b["unpadded"] is False  # packed rows keep their own masks


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_the_compilers_chunk_body_equals_the_eager_one(masked, weight_grad):
    """The body a compiled run compiles (no in-place writes) gives the eager body's loss and gradients, padded
    vocabulary columns and ignored targets included."""
    from peftbench.run.chunked import _chunk, _fusable_chunk

    g = torch.Generator().manual_seed(2)
    h = torch.randn(30, 16, generator=g, dtype=torch.float64)
    w = torch.cat([torch.randn(250, 16, generator=g, dtype=torch.float64), torch.zeros(6, 16, dtype=torch.float64)])
    t = torch.randint(0, 250, (30,), generator=g)
    t[::4] = IGNORE if masked else t[::4]
    count = (t >= 0).sum().to(torch.float64) if masked else torch.tensor(30.0, dtype=torch.float64)
    a = _chunk(h, w, t, 250, count, weight_grad, masked)
    b = _fusable_chunk(h, w, t, 250, count, weight_grad, masked)
    assert (a[2] is None) == (b[2] is None) == (not weight_grad)
    for x, y in zip(a, b):
        assert x is None or torch.allclose(x, y, rtol=1e-12, atol=1e-12)
    assert bool((b[1][t < 0] == 0).all()) if masked else True  # an ignored target's row gets no gradient


def test_the_compiled_chunked_loss_equals_the_eager_one():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(90, 16, generator=g, requires_grad=True)
    weight = torch.randn(300, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 300, (90,), generator=g)
    out = {}
    for compiled in (False, True):
        loss = chunked_linear_cross_entropy(hidden, weight, targets, chunk=40, compiled=compiled)
        out[compiled] = (loss, *torch.autograd.grad(loss * 2.0, [hidden, weight]))
    for a, b in zip(out[False], out[True]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    ref = F.cross_entropy(hidden @ weight.T, targets)
    assert torch.allclose(out[True][0], ref, rtol=1e-5)


@pytest.mark.parametrize("fused_loss", ["off", "chunked"])
def test_filler_rows_leave_the_loss_and_every_gradient_as_they_were(fused_loss):
    """A batch of 3 grown to 5 rows (the epoch's last batch of a compiled run): the same loss and gradients,
    with the model's own loss (labels IGNORE) and with the masked chunked loss (targets IGNORE)."""
    from peftbench.run.train import PLAIN, make_loader

    rng = random.Random(4)
    feats = [{"input_ids": (ids := [rng.randrange(3, 200) for _ in range(8)]), "labels": list(ids)} for _ in range(3)]
    (batch,) = make_loader(feats, batch_size=3, pad_id=0, seed=0, speed={**PLAIN, "fused_loss": fused_loss})
    assert batch["unpadded"] is True
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    filled = fill_rows(batch, 5, pad_id=0, loss_positions_len=5 * 7)
    assert filled["input_ids"].shape == (5, 8) and bool((filled["labels"][3:] == IGNORE).all())
    assert filled.get("loss_index", torch.zeros(35)).numel() == 35
    model = models.build_random("tiny-gpt2", seed=0).eval()  # no dropout: the two forwards comparable
    module = LossModule(model, fused_loss=fused_loss, masked=True)
    out = []
    for b in (batch, filled):
        model.zero_grad()
        loss = module(b)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-6)
    for a, b in zip(out[0][1], out[1][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match=r"no filler value for \['token_type_ids'\]"):
        fill_rows({**batch, "token_type_ids": torch.zeros(3, 8, dtype=torch.long)}, 5, pad_id=0)


def test_the_masked_chunked_loss_counts_only_the_targets_it_keeps():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(50, 16, generator=g, requires_grad=True)
    weight = torch.randn(300, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 300, (50,), generator=g)
    targets[::3] = IGNORE
    keep = targets >= 0
    for compiled in (False, True):
        loss = chunked_linear_cross_entropy(hidden, weight, targets, chunk=20, compiled=compiled, masked=True)
        gh, gw = torch.autograd.grad(loss, [hidden, weight])
        ref = F.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE)
        rh, rw = torch.autograd.grad(ref, [hidden, weight])
        assert torch.allclose(loss, ref, rtol=1e-5) and bool((gh[~keep] == 0).all())
        assert torch.allclose(gh, rh, rtol=1e-4, atol=1e-6) and torch.allclose(gw, rw, rtol=1e-4, atol=1e-6)


def test_compile_workers_start_early_only_for_a_cuda_run_that_may_compile(monkeypatch):
    """Started early for a CUDA run that may compile, forked from the run's process unless the user's
    TORCHINDUCTOR_WORKER_START says how; not on a CPU, nor for a run too short to compile."""
    from torch._inductor import config as inductor_config

    from peftbench.run.compiletime import WORKER_START, stop_compile_workers, warm_compile_workers
    from peftbench.spec.config import DataArgs

    monkeypatch.delenv(WORKER_START, raising=False)
    monkeypatch.setattr(inductor_config, "worker_start_method", "subprocess")  # torch's default, restored after
    data = DataArgs(max_source_length=512, max_target_length=64)
    assert warm_compile_workers("cpu", TrainArgs(max_steps=1000), data) is False
    assert inductor_config.worker_start_method == "subprocess"  # not started: torch's choice untouched
    assert warm_compile_workers("cuda", TrainArgs(max_steps=1000), data) is True
    assert inductor_config.worker_start_method == "fork"
    monkeypatch.setenv(WORKER_START, "spawn")
    monkeypatch.setattr(inductor_config, "worker_start_method", "spawn")  # what torch read from it
    assert warm_compile_workers("cuda", TrainArgs(max_steps=1000), data) is True
    assert inductor_config.worker_start_method == "spawn"
    assert warm_compile_workers("cuda", TrainArgs(max_steps=1000, compile="off"), data) is False
    short = TrainArgs(max_steps=50, batch_size=8)  # at most 50 x 8 x 576 = 0.23 M tokens: auto cannot compile it
    assert warm_compile_workers("cuda", short, data) is False
    assert warm_compile_workers("cuda", short, data, processes=8) is True  # 1.8 M tokens over eight processes
    assert warm_compile_workers("cuda", TrainArgs(max_steps=50, batch_size=8, compile="regions"), data) is True
    assert warm_compile_workers("cuda", TrainArgs(max_steps=-1, epochs=1.0), data) is True  # epochs: unknown length
    lm, blocks = TrainArgs(max_steps=80, batch_size=16), DataArgs(max_source_length=512, max_target_length=0)
    assert warm_compile_workers("cuda", lm, blocks) is False  # 0.66 M tokens: a cold cache's auto trains eagerly
    assert warm_compile_workers("cuda", lm, blocks, warm=True) is True  # compiled here before: auto may compile
    speed = {"compile": "regions"}
    assert stop_compile_workers(True, speed) is speed and stop_compile_workers(False, {"compile": "off"})


def test_data_loader_workers_only_where_batches_are_padded_or_packed_on_cuda():
    """Fixed-length blocks are only stacked: no worker processes (their start cost a 50-step run 1.0 s); examples
    of varying length keep two beside the GPU; a given number is kept; none on CPU."""
    from peftbench.run.speed import WORKERS

    lm = {"family": "causal", "task": "language-modeling", "model": models.build_random("tiny-gpt2", seed=0)}

    def workers(args=None, **kw):
        s = resolve(args or TrainArgs(), **{"device_type": "cuda", **lm, **kw})
        return s["dataloader_workers"], s["reasons"].get("dataloader_workers")

    assert workers(varying=False) == (0, f"auto: 0, fixed-length examples are only stacked ({WORKERS})")
    assert workers(varying=True) == (2, None)
    assert workers(TrainArgs(dataloader_workers=3), varying=False) == (3, None)
    assert workers(device_type="cpu", varying=True) == (0, None)
