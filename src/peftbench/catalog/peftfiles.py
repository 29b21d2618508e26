"""peft's own files as peftbench methods: ``method: {peft_config: path/to/adapter_config.json}``.

Usage (by the plan, before a suite's checks):
    problems, dropped = expand(exp.method)    # exp.method's name and options from the file, in place

The file's ``peft_type`` names the method (``LORA`` -> lora, ``IA3`` -> ia3, ...); its other keys become the
method's options, under the options given beside it. peft's bookkeeping (base model, task type, version,
inference mode) is dropped silently, and so is a key the installed peft's config class lacks, with a warning (peft
itself warns and ignores such keys; peftbench refuses them in options written by hand, where they are typos).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from peftbench.catalog import methods

log = logging.getLogger("peftbench")
BOOKKEEPING = methods.INTERNAL_FIELDS | {"inference_mode", "peft_version"}


def expand(method_args) -> tuple[list[str], list[str]]:
    """(problems, keys dropped); fills ``method_args.name`` and ``.options`` and clears ``.peft_config``."""
    path = Path(method_args.peft_config).expanduser()
    where = f"method.peft_config: {method_args.peft_config}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{where}: not found"], []
    except (OSError, ValueError) as e:
        return [f"{where}: not a readable JSON file ({type(e).__name__})"], []
    kind = doc.get("peft_type") if isinstance(doc, dict) else None
    method = methods.lookup(kind.lower()) if isinstance(kind, str) else None
    if method is None or method.peft_type is None:
        return [f"{where}: peft_type {kind!r} is not a peft method this peft has"], []
    if method_args.name and methods.lookup(method_args.name).name != method.name:
        return [f"{where}: the file is {method.name}, but method.name says {method_args.name}"], []
    fields = {f.name for f in dataclasses.fields(methods.config_class(method))}
    dropped = sorted(k for k in doc if k not in fields and k not in BOOKKEEPING)
    if dropped:
        log.warning("%s: keys the installed peft's %s lacks, dropped: %s", where, method.name, ", ".join(dropped))
    options = {k: v for k, v in doc.items() if k in fields and k not in BOOKKEEPING}
    method_args.name = method.name
    method_args.options = {**options, **method_args.options}  # the options written beside the file win
    method_args.peft_config = ""
    return [], dropped
