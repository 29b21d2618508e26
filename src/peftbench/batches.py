"""Batches for training and scoring: padded to the longest example, or packed into one row.

Usage:
    batch = pad_batch(features, pad_id=0)               # input_ids, attention_mask, labels (-100 padded)
    batch = pack_batch(features, pad_id=0)              # one row, position ids restart per example
    index, targets = loss_positions(batch["labels"])    # where the loss is counted, computed on the host

A feature is ``{"input_ids": [...], "labels": [...]}`` (and ``"decoder": True`` for encoder-decoders,
whose labels have their own length); labels are -100 (``IGNORE``) where no loss is counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE = -100


def pad_batch(features: Sequence[dict], *, pad_id: int, side: str = "right", multiple_of: int = 1) -> dict:
    """Pad to the longest in the batch (dynamic padding); labels are padded with -100."""
    longest = max(len(f["input_ids"]) for f in features)
    longest = -(-longest // multiple_of) * multiple_of
    out: dict[str, list] = {"input_ids": [], "attention_mask": []}
    has_labels = "labels" in features[0]
    label_len = 0
    if has_labels:
        label_len = max(len(f["labels"]) for f in features)
        if "decoder" in features[0]:  # seq2seq: labels have their own length
            label_len = -(-label_len // multiple_of) * multiple_of
        else:
            label_len = longest
        out["labels"] = []
    for f in features:
        n = len(f["input_ids"])
        pad = [pad_id] * (longest - n)
        mask = [1] * n
        if side == "left":
            out["input_ids"].append(pad + list(f["input_ids"]))
            out["attention_mask"].append([0] * len(pad) + mask)
        else:
            out["input_ids"].append(list(f["input_ids"]) + pad)
            out["attention_mask"].append(mask + [0] * len(pad))
        if has_labels:
            lab = list(f["labels"])
            lpad = [IGNORE] * (label_len - len(lab))
            out["labels"].append(lpad + lab if side == "left" and "decoder" not in f else lab + lpad)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


# ---------------------------------------------------------------- summarisation


def pack_batch(features: Sequence[dict], *, pad_id: int, multiple_of: int = 1) -> dict:
    """Causal features concatenated into one row: position ids restart at every example, so the
    attention (transformers' packed-sequence masks) keeps examples apart; no padding but the
    few tokens that round the row up to ``multiple_of``. Each example's first label is ignored, so
    no loss crosses a boundary (the same tokens count as in the padded batch)."""
    ids: list[int] = []
    pos: list[int] = []
    labels: list[int] = []
    for f in features:
        n = len(f["input_ids"])
        ids += f["input_ids"]
        pos += range(n)
        labels += [IGNORE, *list(f["labels"])[1:]]
    extra = -len(ids) % multiple_of
    ids += [pad_id] * extra
    pos += range(extra)
    labels += [IGNORE] * extra
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "labels": torch.tensor([labels])}


def loss_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the positions that predict a label, and those labels (the causal shift),
    computed on the host so the device never has to answer how many there are."""
    nxt = labels[:, 1:]
    rows, cols = (nxt != IGNORE).nonzero(as_tuple=True)
    return rows * labels.shape[1] + cols, nxt[rows, cols]
