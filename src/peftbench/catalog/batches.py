"""Batches for training and scoring: padded to the longest example, or packed into one row.

Usage:
    batch = pad_batch(features, pad_id=0)               # input_ids, attention_mask, labels (-100 padded)
    batch = pack_batch(features, pad_id=0)              # one row, position ids restart per example
    sampler = LengthGroupedBatches(features, batch_size=16, seed=0)   # DataLoader(batch_sampler=...)
    index, targets = loss_positions(batch["labels"])    # where the loss is counted, computed on the host

A feature is ``{"input_ids": [...], "labels": [...]}`` (and ``"decoder": True`` for encoder-decoders,
whose labels have their own length); labels are -100 (``IGNORE``) where no loss is counted.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

IGNORE = -100


def pad_batch(
    features: Sequence[dict],
    *,
    pad_id: int,
    side: str = "right",
    multiple_of: int = 1,
    length: int = 0,
    label_length: int = 0,
) -> dict:
    """Pad to the longest in the batch (dynamic padding), or to ``length`` where longer (one shape for every
    batch; an encoder-decoder's labels to ``label_length``); labels are padded with -100."""
    longest = max(len(f["input_ids"]) for f in features)
    longest = max(-(-longest // multiple_of) * multiple_of, length)
    out: dict[str, list] = {"input_ids": [], "attention_mask": []}
    has_labels = "labels" in features[0]
    label_len = 0
    if has_labels:
        label_len = max(len(f["labels"]) for f in features)
        if "decoder" in features[0]:  # seq2seq: labels have their own length
            label_len = max(-(-label_len // multiple_of) * multiple_of, label_length)
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


def group_by_length(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices split into batches of ``batch_size`` (the last may be short) whose examples have
    close lengths, so padding to the longest wastes little. ``sizes`` are (source, target) lengths
    (target 0 for causal LMs): the set is halved along the dimension whose lengths spread most,
    recursively, down to single batches (a k-d split; one dimension: a sort). Ties keep the order
    given, so a shuffled order gives other batches each epoch."""

    def split(idx: list[int]) -> list[list[int]]:
        if len(idx) <= batch_size:
            return [idx]
        spread = [max(sizes[i][d] for i in idx) - min(sizes[i][d] for i in idx) for d in (0, 1)]
        dim = 0 if spread[0] >= spread[1] else 1
        idx = sorted(idx, key=lambda i: sizes[i][dim])
        cut = (-(-len(idx) // batch_size) // 2) * batch_size  # whole batches on the left
        return split(idx[:cut]) + split(idx[cut:])

    return split(list(range(len(sizes))))


class LengthGroupedBatches(torch.utils.data.Sampler):
    """A batch sampler (``transformers``' ``group_by_length``, over the whole epoch as fairseq does):
    every epoch the examples are shuffled, grouped into batches of close lengths
    (``group_by_length``), and the batches are shuffled, all seeded by ``seed`` and the epoch. Padded
    batches then carry a few per cent of padding instead of a third, with rows no longer than the
    examples (packing lengthens rows, which attention pays for quadratically)."""

    def __init__(self, features: Sequence[dict], *, batch_size: int, seed: int):
        self.sizes = [(len(f["input_ids"]), len(f["labels"]) if "decoder" in f else 0) for f in features]
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def __len__(self) -> int:
        return -(-len(self.sizes) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = list(range(len(self.sizes)))
        rng.shuffle(order)
        batches = [[order[i] for i in b] for b in group_by_length([self.sizes[i] for i in order], self.batch_size)]
        rng.shuffle(batches)
        yield from batches


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


MAX_PACKED_PADDING = 0.05  # pack_seq2seq uses the most rows whose padding stays under this share
EXAMPLES_PER_ROW = 4  # ... starting from this many examples per row


def pack_seq2seq(
    features: Sequence[dict],
    *,
    pad_id: int,
    start_id: int,
    multiple_of: int = 1,
    max_padding: float = MAX_PACKED_PADDING,
) -> dict:
    """Encoder-decoder features packed into a few rows: each row holds several examples' sources
    (encoder) and, in the same order, their targets (decoder). ``encoder_segments`` and
    ``decoder_segments`` number the examples of a row from 1 (0: padding); ``segment_masks`` turns
    them into block-diagonal self-attention, causal within a target, and cross-attention from each
    target to its own source only. Relative position biases (T5) only see distances, so offsets
    within a row change nothing.

    Rows trade padding against attention work (longer rows: more of it), so the examples are spread
    over the most rows (from ``len/EXAMPLES_PER_ROW`` down to one) whose padding stays under
    ``max_padding``. The decoder inputs are each target shifted right behind ``start_id``, built
    per example, so no target sees the one before it."""
    sizes = [(len(f["input_ids"]), len(f["labels"])) for f in features]
    real = sum(a + b for a, b in sizes)
    for n_rows in range(max(1, -(-len(features) // EXAMPLES_PER_ROW)), 0, -1):
        rows = _balance(sizes, n_rows)
        src_len = _round(max(sum(sizes[i][0] for i in r) for r in rows), multiple_of)
        tgt_len = _round(max(sum(sizes[i][1] for i in r) for r in rows), multiple_of)
        if 1 - real / (n_rows * (src_len + tgt_len)) <= max_padding:
            break
    out: dict[str, list] = {
        k: [] for k in ("input_ids", "encoder_segments", "decoder_input_ids", "labels", "decoder_segments")
    }
    for r in rows:
        ids, eseg, dec, lab, dseg = [], [], [], [], []
        for k, i in enumerate(r, 1):
            f = features[i]
            target = list(f["labels"])
            ids += f["input_ids"]
            eseg += [k] * len(f["input_ids"])
            dec += [start_id] + [pad_id if t == IGNORE else t for t in target[:-1]]
            lab += target
            dseg += [k] * len(target)
        out["input_ids"].append(ids + [pad_id] * (src_len - len(ids)))
        out["encoder_segments"].append(eseg + [0] * (src_len - len(eseg)))
        out["decoder_input_ids"].append(dec + [pad_id] * (tgt_len - len(dec)))
        out["labels"].append(lab + [IGNORE] * (tgt_len - len(lab)))
        out["decoder_segments"].append(dseg + [0] * (tgt_len - len(dseg)))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def _round(n: int, multiple_of: int) -> int:
    return -(-n // multiple_of) * multiple_of


def _balance(sizes: list[tuple[int, int]], n_rows: int) -> list[list[int]]:
    """Examples spread over ``n_rows`` so that the longest source row and the longest target row
    stay short: largest first, each to the row it lengthens least (relative to the totals)."""
    src_total = sum(a for a, _ in sizes) or 1
    tgt_total = sum(b for _, b in sizes) or 1
    loads = [[0, 0] for _ in range(n_rows)]
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    order = sorted(range(len(sizes)), key=lambda i: -(sizes[i][0] / src_total + sizes[i][1] / tgt_total))
    for i in order:
        a, b = sizes[i]
        best = min(range(n_rows), key=lambda r: max((loads[r][0] + a) / src_total, (loads[r][1] + b) / tgt_total))
        loads[best][0] += a
        loads[best][1] += b
        rows[best].append(i)
    for r in rows:
        r.sort()  # the data order within a row
    return [r for r in rows if r]


def segment_masks(
    encoder_segments: torch.Tensor, decoder_segments: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """Additive 4D masks (rows, 1, queries, keys) for a ``pack_seq2seq`` batch: encoder
    self-attention, decoder self-attention (causal) and decoder-to-encoder cross-attention, each
    within one example. Padding attends to itself, so no row of a softmax is empty."""
    blocked = torch.finfo(dtype).min

    def additive(allowed: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.full((), blocked, dtype=dtype, device=allowed.device))[:, None]

    e, d = encoder_segments, decoder_segments
    eye_e = torch.eye(e.shape[1], dtype=torch.bool, device=e.device)
    eye_d = torch.eye(d.shape[1], dtype=torch.bool, device=d.device)
    enc = ((e[:, :, None] == e[:, None, :]) & (e[:, None, :] > 0)) | eye_e
    causal = torch.ones(d.shape[1], d.shape[1], dtype=torch.bool, device=d.device).tril()
    dec = ((d[:, :, None] == d[:, None, :]) & (d[:, None, :] > 0) & causal) | eye_d
    cross = (d[:, :, None] == e[:, None, :]) & (e[:, None, :] > 0)
    return additive(enc), additive(dec), additive(cross)


def loss_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the positions that predict a label, and those labels (the causal shift),
    computed on the host so the device never has to answer how many there are."""
    nxt = labels[:, 1:]
    rows, cols = (nxt != IGNORE).nonzero(as_tuple=True)
    return rows * labels.shape[1] + cols, nxt[rows, cols]


FILLED = {"input_ids": None, "attention_mask": 1, "labels": IGNORE}  # a filler row's values (None: the pad id)
LOSS_KEYS = ("loss_index", "loss_targets")  # the fused loss's positions and targets: one entry per counted label


def fill_rows(batch: dict, rows: int, *, pad_id: int, loss_positions_len: int | None = None) -> dict:
    """An unpadded causal batch grown to ``rows`` rows by filler rows that count no loss: their tokens are
    ``pad_id`` (attended to only within their own row: causal rows do not see each other), their labels
    ``IGNORE``; ``loss_index``/``loss_targets`` (the fused loss's) grown to ``loss_positions_len`` with targets
    ``IGNORE`` (the chunked loss masks them, Liger ignores them). The loss and its gradients are those of the
    batch as it was (every loss is a mean over the counted labels); the shape is that of a full batch, so the
    epoch's last, smaller batch runs the full batch's compiled graphs. Works on the batch's device: no host read."""
    n = batch["input_ids"].shape[0]
    if n >= rows:
        return batch
    out = dict(batch)
    for key, fill in FILLED.items():
        if key in batch:
            x = batch[key]
            extra = x.new_full((rows - n, *x.shape[1:]), pad_id if fill is None else fill)
            out[key] = torch.cat([x, extra])
    rowwise = {k for k, v in batch.items() if torch.is_tensor(v) and v.dim() and v.shape[0] == n}
    unknown = rowwise - {*FILLED, *LOSS_KEYS}
    if unknown:
        raise ValueError(f"fill_rows: no filler value for {sorted(unknown)}")
    return grow_loss_positions(out, loss_positions_len) if loss_positions_len else out


def grow_loss_positions(batch: dict, count: int) -> dict:
    """The fused loss's ``loss_index``/``loss_targets`` grown to ``count`` entries whose targets are ``IGNORE``
    (the chunked loss masks them, Liger ignores them): the loss and gradients unchanged, their shape fixed."""
    if "loss_index" not in batch or batch["loss_index"].numel() >= count:
        return batch
    k = count - batch["loss_index"].numel()
    out = dict(batch)
    out["loss_index"] = torch.cat([batch["loss_index"], batch["loss_index"].new_zeros(k)])
    out["loss_targets"] = torch.cat([batch["loss_targets"], batch["loss_targets"].new_full((k,), IGNORE)])
    return out
