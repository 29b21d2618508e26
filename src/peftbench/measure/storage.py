"""Storage: bytes on disk of what was actually written.

Usage:
    dir_bytes(Path("runs/demo/adapters/x"))   # sum of the sizes of every file below the folder (the tables' storage)
    weights_bytes(file_sizes(path))           # the weight files alone (peft's count)
    saved_bytes(model, scratch=Path("runs/demo/adapters"), cache=Path("~/.cache/peftbench/full-model-bytes.json"))
"""

from __future__ import annotations

from pathlib import Path


def dir_bytes(path: Path | str) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def file_sizes(path: Path | str) -> dict[str, int]:
    p = Path(path)
    return {str(f.relative_to(p)): f.stat().st_size for f in sorted(p.rglob("*")) if f.is_file()}


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_bytes(files: dict[str, int]) -> int:
    """The weight files' bytes among ``file_sizes``' (what peft counts: adapter_model.safetensors, not the config)."""
    return sum(size for name, size in files.items() if name.endswith(WEIGHT_SUFFIXES))


def storage_key(model, state_dict: dict | None = None) -> str:
    """What a checkpoint's bytes depend on: the class, its configuration and every tensor's name,
    shape and dtype (not the values: safetensors stores them at fixed width)."""
    import hashlib

    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string().encode())
    for name, t in (model.state_dict() if state_dict is None else state_dict).items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
    return h.hexdigest()[:32]


def cached_size(path: Path, key: str) -> int | None:
    import json

    try:
        value = json.loads(Path(path).read_text()).get(key)
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


def remember_size(path: Path, key: str, size: int) -> None:
    """Add ``key: size`` to the JSON cache at ``path`` (written whole, then renamed into place)."""
    import json
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[key] = size
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        json.dump(known, f, indent=0, sort_keys=True)
    os.replace(tmp, path)


def saved_bytes(model, *, scratch: Path, cache: Path, state_dict: dict | None = None) -> int:
    """Bytes of ``model`` as ``save_pretrained`` writes them (``state_dict``: these weights instead of
    the model's own), written once per architecture, config and dtype (``cache`` keeps them by
    ``storage_key``: a 7B base is 30 GB to write otherwise)."""
    import tempfile

    key = storage_key(model, state_dict)
    known = cached_size(cache, key)
    if known:
        return known
    with tempfile.TemporaryDirectory(prefix=".full-", dir=scratch) as target:
        model.save_pretrained(target, safe_serialization=True, state_dict=state_dict)
        size = dir_bytes(target)
    remember_size(cache, key, size)
    return size
