"""Shared fixtures: tiny data files the tests write, an isolated cache, no network."""

import json
import os
import random
import sys

import pytest
import torch

torch.set_num_threads(2)

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron".split()


def pytest_collection_modifyitems(config, items):
    # registry tests download real packages: run them in CI or when asked, skip elsewhere
    if os.environ.get("CI") or os.environ.get("PEFTBENCH_REGISTRY_TESTS"):
        return
    skip = pytest.mark.skip(reason="needs the package registries: set PEFTBENCH_REGISTRY_TESTS=1 (CI sets CI)")
    for item in items:
        if "registry" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test's Accelerator starts afresh: accelerate keeps its first state (device included) for the process, so
    a CUDA test's ``Accelerator(cpu=False)`` after a CPU test's ran its model on the CPU (one process per run in
    peftbench; one process for all tests here)."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    if "registry" in request.keywords:
        return  # real fetches use the real cache, so CI and later runs reuse the downloads
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # compiled graphs: this test's cache too


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    summ = []
    for _ in range(40):
        src = " ".join(rng.choice(WORDS) for _ in range(30))
        summ.append({"article": src, "highlights": " ".join(src.split()[:4])})
    _write_jsonl(d / "summ.jsonl", summ)
    cls = []
    for _ in range(40):
        lab = rng.choice(["good", "bad"])
        cls.append({"text": f"this is {lab}: " + " ".join(rng.choice(WORDS) for _ in range(8)), "label": lab})
    _write_jsonl(d / "cls.jsonl", cls)
    lm = [{"text": " ".join(rng.choice(WORDS) for _ in range(60))} for _ in range(30)]
    _write_jsonl(d / "lm.jsonl", lm)
    return d


def save_tiny(tmp_path_factory, shape: str):
    """A tiny random model and the byte tokenizer saved to a folder: it loads like a pretrained model,
    so quality is scored."""
    from peftbench.catalog import models

    d = tmp_path_factory.mktemp(shape)
    models.build_random(shape, seed=0).save_pretrained(d)
    models.load_tokenizer("bytes").save_pretrained(d)
    return d


def single(command: str, model: str, method: str, task: str, dataset: str) -> list[str]:
    """The argv of a one-experiment command: ``peftbench COMMAND --model M --method X --task T --dataset D``."""
    return [command, "--model", model, "--method", method, "--task", task, "--dataset", dataset]


# measurement settings small enough for tests (every timed scenario still runs, with two iterations)
# forgetting: off unless a test measures it (its default corpus is an offline source fetched from a registry)
FAST_MEASURE = {
    "warmup": 0,
    "iterations": 2,
    "min_seconds": 0.0,
    "large_batch_size": 0,
    "seq_len": 16,
    "new_tokens": 3,
    "forgetting": None,
}
