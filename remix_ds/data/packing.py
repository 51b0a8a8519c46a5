"""Packing: a micro-batch's tokenized examples -> one dict of (R, T) tensors (no attention mask).

Contract (docs/architecture.md, "Packed micro-batch"): examples are placed end to end in rows of
at most `max_seq_len` tokens by first-fit decreasing (with the row capacity tuned so rows come out
evenly full, see `balanced_bins`); `position_ids` restart at 0 at every example,
so transformers (with `use_cache=False`) and flash-attn varlen (`cu_seq_lens_*`) both see
block-diagonal causal attention. The tail of a row is padding that forms ONE extra sequence whose
position ids count up 0, 1, 2, ... (all-zero pad positions would look like thousands of one-token
sequences) and whose labels are -100. Rows are as long as the fullest row (rounded up to
`pad_to_multiple_of`), not max_seq_len, so padding stays small.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from remix_ds.data.tokenize import IGNORE, TokenizedExample


def first_fit_decreasing(lengths: Sequence[int], capacity: int, oversize: str = "raise") -> list[list[int]]:
    """Bins of example indices, each summing to <= capacity; longest examples placed first (ties
    in input order), each into the first bin with room, bins in the order they were opened.

    oversize: an example longer than ``capacity`` is an error (``raise``, training: filter
    before packing) or gets a bin of its own (``own_bin``, evaluation never drops or truncates).
    """
    if oversize not in ("raise", "own_bin"):
        raise ValueError(f"oversize={oversize!r}: expected 'raise' or 'own_bin'")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        if n > capacity and oversize == "raise":
            raise ValueError(f"example of {n} tokens does not fit a row of {capacity} (filter before packing)")
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def balanced_bins(lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """First-fit-decreasing bins minimizing rows x row length (the padded area), rows <= max_seq_len.

    Plain FFD into max_seq_len fills every row but the last, and the last row's empty tail is
    padding because all rows share the fullest row's length. Here, for each feasible row count R,
    the smallest capacity that still packs into R rows is found by bisection (FFD with a smaller
    capacity spreads tokens evenly across rows); the layout with the least padding wins.
    """
    total, longest = sum(lengths), max(lengths)
    best = first_fit_decreasing(lengths, max_seq_len)

    def area(bins):
        return len(bins) * max(sum(lengths[i] for i in b) for b in bins)

    best_area = area(best)
    r_min = -(-total // max_seq_len)
    # Up to one example per row: with long, similar lengths that beats rows holding two examples
    # next to rows holding one (all rows share the fullest row's length).
    for rows in range(r_min, len(lengths) + 1):
        lo, hi = max(longest, -(-total // rows)), max_seq_len
        if rows * lo >= best_area:  # no capacity can beat the best layout with this many rows
            break
        while lo < hi:  # smallest capacity whose FFD needs <= rows rows
            mid = (lo + hi) // 2
            if len(first_fit_decreasing(lengths, mid)) <= rows:
                hi = mid
            else:
                lo = mid + 1
        bins = first_fit_decreasing(lengths, lo)
        if len(bins) <= rows and area(bins) < best_area:
            best, best_area = bins, area(bins)
    return best


def _to_batch(ids, pos, labels, seg_lens: list[int], num_examples: int, num_tokens: int) -> dict:
    cu = np.zeros(len(seg_lens) + 1, dtype=np.int32)
    np.cumsum(seg_lens, out=cu[1:])
    max_len = int(max(seg_lens))
    # Positions whose logits predict a supervised token, as flat indices into (R * T): position
    # (r, t) predicts labels[r, t + 1]. Built here, on the host, so the loss gathers rows with
    # index_select instead of boolean-mask indexing (which syncs the device to learn M).
    R, T = labels.shape
    sup = labels[:, 1:] != IGNORE  # (R, T-1)
    rr, tt = np.nonzero(sup)
    loss_index = (rr * T + tt).astype(np.int64)
    return {
        "input_ids": torch.from_numpy(ids.astype(np.int64)),
        "position_ids": torch.from_numpy(pos.astype(np.int64)),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "cu_seq_lens_q": torch.from_numpy(cu),
        "cu_seq_lens_k": torch.from_numpy(cu.copy()),
        "max_length_q": max_len,
        "max_length_k": max_len,
        "loss_index": torch.from_numpy(loss_index),
        "loss_targets": torch.from_numpy(labels[:, 1:][sup].astype(np.int64)),
        "num_supervised": int((labels != IGNORE).sum()),
        "num_tokens": num_tokens,
        "num_examples": num_examples,
    }


def pack(examples: Sequence[TokenizedExample], max_seq_len: int, pad_id: int, pad_to_multiple_of: int = 1) -> dict:
    """Pack examples into rows of <= max_seq_len tokens (first-fit decreasing); see module docstring.

    An empty `examples` gives a one-row, one-token all-padding batch with num_supervised == 0, so
    every rank can run the same number of micro-batches.
    """
    if not examples:
        return empty_batch(pad_id)
    lengths = [len(ex) for ex in examples]
    bins = balanced_bins(lengths, max_seq_len)
    fill = max(sum(lengths[i] for i in b) for b in bins)
    T = min(-(-fill // pad_to_multiple_of) * pad_to_multiple_of, max(max_seq_len, fill))
    R = len(bins)
    ids = np.full((R, T), pad_id, dtype=np.int64)
    labels = np.full((R, T), IGNORE, dtype=np.int64)
    pos = np.zeros((R, T), dtype=np.int64)
    seg_lens: list[int] = []
    for r, b in enumerate(bins):
        col = 0
        for i in b:
            ex, n = examples[i], lengths[i]
            ids[r, col : col + n] = ex.input_ids
            labels[r, col : col + n] = ex.labels
            pos[r, col : col + n] = np.arange(n)
            seg_lens.append(n)
            col += n
        if col < T:  # the padding tail: one sequence counting up, no loss
            pos[r, col:] = np.arange(T - col)
            seg_lens.append(T - col)
    return _to_batch(ids, pos, labels, seg_lens, len(examples), int(sum(lengths)))


def pad_reference(examples: Sequence[TokenizedExample], seq_len: int, eos_id: int) -> dict:
    """The reference's layout (data.reference_compat): one example per row, padded to `seq_len`.

    Pads are the EOS id and their labels are EOS too: the reference pads with pad_token == eos and
    pads `labels` with the same id, so every pad position is trained to predict EOS. Positions keep
    counting through the pad (one sequence per row). Unlike the reference, pad keys are not masked
    out of attention (there is no attention mask); pads only follow the example, so the example's
    own tokens are unaffected.
    """
    if not examples:
        return empty_batch(eos_id)
    R = len(examples)
    ids = np.full((R, seq_len), eos_id, dtype=np.int64)
    labels = np.full((R, seq_len), eos_id, dtype=np.int64)
    for r, ex in enumerate(examples):
        n = len(ex)
        if n > seq_len:
            raise ValueError(f"example of {n} tokens is longer than the reference pad length {seq_len}")
        ids[r, :n] = ex.input_ids
        labels[r, :n] = ex.labels
    pos = np.broadcast_to(np.arange(seq_len), (R, seq_len)).copy()
    return _to_batch(ids, pos, labels, [seq_len] * R, R, int(sum(len(ex) for ex in examples)))


def empty_batch(pad_id: int) -> dict:
    """A one-token padding micro-batch with nothing to learn (num_supervised == num_examples == 0)."""
    ids = np.full((1, 1), pad_id, dtype=np.int64)
    return _to_batch(ids, np.zeros((1, 1), np.int64), np.full((1, 1), IGNORE, np.int64), [1], 0, 0)


def efficiency(batch: dict) -> float:
    """Non-pad fraction of the batch's (R, T) cells."""
    return batch["num_tokens"] / batch["input_ids"].numel()


def padded_efficiency(lengths: Sequence[int]) -> float:
    """Non-pad fraction if the same examples were padded to the longest one (one per row)."""
    return float(sum(lengths)) / (len(lengths) * max(lengths)) if lengths else 0.0
