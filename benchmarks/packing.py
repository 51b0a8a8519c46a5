"""Packing rivals: the packer before the O(n log n) rewrite (a quadratic FFD scan and a capacity
bisection for every row count; the reference tests/test_data_packing.py checks the packer against),
and Hugging Face ``group_by_length`` + pad."""

from __future__ import annotations

import numpy as np


def old_first_fit_decreasing(lengths, capacity, oversize="raise"):
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        if n > capacity and oversize == "raise":
            raise ValueError("does not fit")
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def old_balanced_bins(lengths, max_seq_len):
    total, longest = sum(lengths), max(lengths)
    best = old_first_fit_decreasing(lengths, max_seq_len)

    def area(bins):
        return len(bins) * max(sum(lengths[i] for i in b) for b in bins)

    best_area = area(best)
    for rows in range(-(-total // max_seq_len), len(lengths) + 1):
        lo, hi = max(longest, -(-total // rows)), max_seq_len
        if rows * lo >= best_area:
            break
        while lo < hi:
            mid = (lo + hi) // 2
            if len(old_first_fit_decreasing(lengths, mid)) <= rows:
                hi = mid
            else:
                lo = mid + 1
        bins = old_first_fit_decreasing(lengths, lo)
        if len(bins) <= rows and area(bins) < best_area:
            best, best_area = bins, area(bins)
    return best


def group_by_length_batches(lengths, batch_size: int) -> list[list[int]]:
    """HF ``group_by_length`` at its strongest: the whole epoch sorted by length (HF sorts within
    mega-batches of 50 batches, which pads at least as much), then ``batch_size`` examples per batch."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def padded_batches(examples, batch_size: int, pad_id: int = 0):
    """`group_by_length` + pad to each batch's longest: the (B, T_max) id arrays and the efficiency."""
    lengths = [len(x) for x in examples]
    out, cells = [], 0
    for g in group_by_length_batches(lengths, batch_size):
        t = max(lengths[i] for i in g)
        ids = np.full((len(g), t), pad_id, dtype=np.int64)
        for r, i in enumerate(g):
            ids[r, : lengths[i]] = examples[i].input_ids
        out.append(ids)
        cells += ids.size
    return out, sum(lengths) / max(1, cells)
