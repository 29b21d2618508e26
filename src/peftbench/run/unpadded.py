"""A batch without padding says so to transformers' causal mask, which would otherwise ask the GPU.

Usage (by the training loop):
    with unpadded.masks():                       # the whole loop: transformers' "sdpa" mask function wrapped
        with unpadded.batch(batch.pop("unpadded")):   # each step: what the collate knew on the host
            loss = module(batch)

Before every forward, transformers decides whether SDPA needs a mask at all by reading the attention mask back
(``_ignore_causal_mask_sdpa``: is any token padded?). That read is a host-device synchronisation: once per step the
host waits for the GPU to finish the queued work (the last step's backward and optimizer), then the GPU waits while
the host queues the next forward. Dropping the all-ones mask only moves the read (transformers then checks the
position ids for packed sequences, with another read). The collate knows the answer on the host (no padding
slot in the batch), so for such a batch the mask function returns what transformers would return after its read —
no mask, SDPA's own causal attention — without reading anything.

The wrapper answers only where that is exactly transformers' answer: a batch marked unpadded, the plain causal mask
(not a sliding window, chunked, packed or bidirectional one), no cache (query and keys of one length, no offset)
and a causal skip allowed; everything else goes to transformers' own function unchanged. It is registered through
transformers' ``AttentionMaskInterface`` for the duration of training and restored after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_STATE = {"unpadded": False}


def _wrap(original):
    from transformers.masking_utils import causal_mask_function

    def mask(*args, **kw):
        if (
            _STATE["unpadded"]
            and not args
            and kw.get("mask_function") is causal_mask_function
            and kw.get("local_size") is None
            and kw.get("allow_is_causal_skip", True)
            and kw.get("q_length") == kw.get("kv_length")
            and not kw.get("q_offset")
            and not kw.get("kv_offset")
        ):
            return None  # what sdpa_mask returns for an all-ones padding mask, read on the host instead
        return original(*args, **kw)

    mask.peftbench_original = original
    return mask


@contextlib.contextmanager
def masks() -> Iterator[None]:
    """transformers' ``sdpa`` mask function wrapped (``_wrap``) while the block runs; restored after."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    original = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    if hasattr(original, "peftbench_original"):  # nested (a search's trials in one process): wrapped once
        yield
        return
    ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa", _wrap(original))
    try:
        yield
    finally:
        ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa", original)


@contextlib.contextmanager
def batch(is_unpadded: bool) -> Iterator[None]:
    """The forward inside runs on a batch with (``False``) or without (``True``) padding slots."""
    before = _STATE["unpadded"]
    _STATE["unpadded"] = bool(is_unpadded)
    try:
        yield
    finally:
        _STATE["unpadded"] = before
