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
import logging

from peftbench.catalog import methods
from peftbench.spec.config import peft_type_method, read_peft_file

log = logging.getLogger("peftbench")
BOOKKEEPING = methods.INTERNAL_FIELDS | {"inference_mode", "peft_version"}


def expand(method_args) -> tuple[list[str], list[str]]:
    """(problems, keys dropped); fills ``method_args.name`` and ``.options`` and clears ``.peft_config``."""
    where = f"method.peft_config: {str(method_args.peft_config)!r}"  # quoted: a path's control characters stay one line
    try:
        doc = read_peft_file(method_args.peft_config)
    except FileNotFoundError:
        return [f"{where}: not found"], []
    except (OSError, ValueError) as e:
        return [f"{where}: not a readable JSON file ({type(e).__name__})"], []
    name = peft_type_method(doc)
    method = methods.lookup(name) if name else None
    if method is None or method.peft_type is None:
        return [f"{where}: peft_type {doc.get('peft_type')!r} is not a peft method this peft has"], []
    given = methods.lookup(method_args.name) if method_args.name else None
    if method_args.name and (given is None or given.name != method.name):
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
