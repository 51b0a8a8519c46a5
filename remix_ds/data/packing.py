"""Packing: a micro-batch's tokenized examples -> one dict of (R, T) tensors (no attention mask).

Contract (docs/architecture.md, "Packed micro-batch"): examples are placed end to end in rows of
at most `max_seq_len` tokens by first-fit decreasing (with the row capacity tuned so rows come out
evenly full, see `balanced_bins`);
`position_ids` restart at 0 at every example,
so transformers (with `use_cache=False`) and flash-attn varlen (`cu_seq_lens_*`) both see
block-diagonal causal attention. The tail of a row is padding that forms ONE extra sequence whose
position ids count up 0, 1, 2, ... (all-zero pad positions would look like thousands of one-token
sequences) and whose labels are -100. Rows are as long as the fullest row (rounded up to
`pad_to_multiple_of`), not max_seq_len, so padding stays small.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Sequence

import numpy as np
import torch

from remix_ds.data.tokenize import IGNORE, TokenizedExample

# `balanced_bins` stops after this many row counts in a row without a better layout.
_STALE_ROWS = 4
# `plan_micro_batches` stops after this many row counts in a row without a better plan.
_PLAN_STALE_ROWS = 2
# `balanced_rows` exchanges pairs of examples between rows of at most this many examples.
_PAIR_ROWS = 12
_TRIPLE_ROWS = 8
# `balanced_rows` stops after this many sweeps over all pairs of rows.
_SWEEPS = 3
# `plan_micro_batches` also tries rows of budget / k tokens for this many row counts k per micro-batch.
_BUDGET_WIDTHS = 8
# A layout at least this full (non-pad cells / cells) ends the search for a better one.
_GOOD_ENOUGH = 0.999


def _descending(lengths: Sequence[int]) -> list[int]:
    """Indices by length, longest first, ties in input order."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()


def first_fit_decreasing(lengths: Sequence[int], capacity: int, oversize: str = "raise") -> list[list[int]]:
    """Bins of example indices, each summing to <= capacity; longest examples placed first (ties
    in input order), each into the first bin with room, bins in the order they were opened.

    oversize: an example longer than ``capacity`` is an error (``raise``, training: filter
    before packing) or gets a bin of its own (``own_bin``, evaluation never drops or truncates).

    O(n log n): a max segment tree over the bins' free room finds the first bin with room in
    O(log n) (unopened bins have the full capacity, so "no open bin fits" lands on the next new
    one). Same bins as the plain scan over open bins (``tests/test_data_packing.py`` keeps it).
    """
    if oversize not in ("raise", "own_bin"):
        raise ValueError(f"oversize={oversize!r}: expected 'raise' or 'own_bin'")
    n_items = len(lengths)
    if n_items == 0:
        return []
    order = _descending(lengths)
    if lengths[order[0]] > capacity and oversize == "raise":
        raise ValueError(f"example of {lengths[order[0]]} tokens does not fit a row of {capacity} (filter before packing)")
    size = 1 << max(0, (n_items - 1).bit_length())
    tree = [capacity] * (2 * size)  # tree[size + b] = free room of bin b; inner nodes = max of children
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > tree[1]:  # oversize (own_bin): a new bin that nothing else joins
            node = size + len(bins)
        else:
            node = 1
            while node < size:
                node = 2 * node if tree[2 * node] >= n else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([i])
        else:
            bins[b].append(i)
        tree[node] -= n
        node >>= 1
        while node:
            m = max(tree[2 * node], tree[2 * node + 1])
            if tree[node] == m:
                break
            tree[node] = m
            node >>= 1
    return bins


def _ffd_rows(asc: list[int], asc_lens: list[int], capacity: int, max_rows: int) -> list[list[int]] | None:
    """First-fit decreasing at ``capacity`` (no oversize examples), row by row; None once it needs
    more than ``max_rows`` rows (the bisection below only asks "does it fit in R rows?").

    FFD filled row by row is the same layout: row k takes, in order, every remaining example that
    still fits when its turn comes, i.e. repeatedly the largest remaining one <= the room left
    (ties: the earliest). ``asc`` lists example indices by (length, -index) (``asc_lens``: their
    lengths), so that example is the last one at or below the room: a bisect, and C-level list
    pops (a memmove of pointers).
    """
    idx, lens = list(asc), list(asc_lens)
    rows: list[list[int]] = []
    while idx:
        if len(rows) == max_rows:
            return None
        room, row, hi = capacity, [], len(idx)
        while hi:
            pos = bisect.bisect_right(lens, room, 0, hi) - 1
            if pos < 0:
                break
            room -= lens.pop(pos)
            row.append(idx.pop(pos))
            hi = pos  # everything above pos is longer than the old room, so than the new one
        rows.append(row)
    return rows


def balanced_bins(lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """First-fit-decreasing bins minimizing rows x row length (the padded area), rows <= max_seq_len.

    Plain FFD into max_seq_len fills every row but the last, and the last row's empty tail is
    padding because all rows share the fullest row's length. Here, for row counts R from the
    lower bound up, the smallest capacity that still packs into R rows is found by bisection (FFD
    with a smaller capacity spreads tokens evenly across rows); the layout with the least padding
    wins. O(n log n) per FFD; the search stays small: a capacity c only helps if R x c beats the
    best area so far, so the bisection runs over [max(longest, total / R), best / R), which
    shrinks to nothing once a near-full layout is found, and the row counts stop after
    `_STALE_ROWS` without a better layout (the old search tried every row count up to the bound).
    """
    n_items, total, longest = len(lengths), sum(lengths), max(lengths)
    asc = _descending(lengths)[::-1]
    asc_lens = [lengths[i] for i in asc]
    best = _ffd_rows(asc, asc_lens, max_seq_len, n_items)
    best_area = len(best) * max(sum(lengths[i] for i in b) for b in best)
    # Up to one example per row: with long, similar lengths that beats rows holding two examples
    # next to rows holding one (all rows share the fullest row's length).
    if n_items * longest < best_area:
        best, best_area = [[i] for i in asc[::-1]], n_items * longest
    stale = 0  # row counts tried since the last improvement
    for rows in range(-(-total // max_seq_len), n_items + 1):
        if rows * max(longest, -(-total // rows)) >= best_area or stale > _STALE_ROWS:
            break
        stale += 1
        lo, hi = max(longest, -(-total // rows)), min(max_seq_len, (best_area - 1) // rows)
        bins = _ffd_rows(asc, asc_lens, hi, rows) if lo <= hi else None  # lo > hi: R x c cannot win
        if bins is None:
            continue
        while lo < hi:  # smallest capacity whose FFD needs <= rows rows
            mid = (lo + hi) // 2
            got = _ffd_rows(asc, asc_lens, mid, rows)
            if got is None:
                lo = mid + 1
            else:
                hi, bins = mid, got
        area = len(bins) * max(sum(lengths[i] for i in b) for b in bins)
        if area < best_area:
            best, best_area, stale = bins, area, 0
    return best


def _bundles(row: list[int], lengths: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """Total length -> positions in ``row`` of one way to take it: nothing, one example, or two
    (pairs only for rows of at most `_PAIR_ROWS` examples); the first way found in position order."""
    out: dict[int, tuple[int, ...]] = {0: ()}
    for p, i in enumerate(row):
        out.setdefault(lengths[i], (p,))
    if len(row) <= _PAIR_ROWS:
        for p in range(len(row)):
            for q in range(p + 1, len(row)):
                out.setdefault(lengths[row[p]] + lengths[row[q]], (p, q))
    if len(row) <= _TRIPLE_ROWS:
        for p in range(len(row)):
            for q in range(p + 1, len(row)):
                for t in range(q + 1, len(row)):
                    out.setdefault(lengths[row[p]] + lengths[row[q]] + lengths[row[t]], (p, q, t))
    return out


def _lpt(lengths: Sequence[int], rows: int) -> list[list[int]]:
    """Longest examples first, each onto the emptiest row (ties: the lowest row)."""
    bins: list[list[int]] = [[] for _ in range(rows)]
    heap = [(0, r) for r in range(rows)]
    for i in _descending(lengths):
        load, r = heapq.heappop(heap)
        bins[r].append(i)
        heapq.heappush(heap, (load + lengths[i], r))
    return bins


def _differencing(lengths: Sequence[int], rows: int) -> list[list[int]]:
    """Karmarkar-Karp largest differencing into ``rows`` rows: partial partitions (each example
    alone, to begin with) are merged two at a time, the two with the largest spread first, the
    fullest rows of one joined with the emptiest of the other. Ties by a running counter."""
    heap = []
    for n, i in enumerate(_descending(lengths)):
        part = [(lengths[i], [i])] + [(0, []) for _ in range(rows - 1)]
        heap.append((-lengths[i], n, part))
    heapq.heapify(heap)
    count = len(heap)
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        merged = sorted(((x[0] + y[0], x[1] + y[1]) for x, y in zip(a, b[::-1])), key=lambda t: -t[0])
        heapq.heappush(heap, (-(merged[0][0] - merged[-1][0]), count, merged))
        count += 1
    return [r for _, r in heap[0][2]]


def balanced_rows(lengths: Sequence[int], rows: int, max_seq_len: int) -> list[list[int]] | None:
    """Examples split into exactly ``rows`` rows with the fullest row as short as the search finds
    (multiway number partitioning), or None when the fullest row still exceeds ``max_seq_len``.

    The better start (lower fullest row) of `_lpt` and `_differencing`; then up to `_SWEEPS`
    sweeps over every pair of rows (a fuller than b), each making the exchange that brings the two
    loads closest: a moves one or two of its examples to b and takes back none, one or two (pairs
    within rows of at most `_PAIR_ROWS` examples). Every exchange lowers the sum of squared loads.
    Deterministic: rows and examples are scanned in index order and lengths are ints.
    """
    bins = min(_lpt(lengths, rows), _differencing(lengths, rows),
               key=lambda b: max(sum(lengths[i] for i in r) for r in b))
    loads = [sum(lengths[i] for i in r) for r in bins]
    cache: list[tuple[list[int], dict] | None] = [None] * rows  # per row: sorted bundle totals, bundles

    def bundles(r: int) -> tuple[list[int], dict]:
        if cache[r] is None:
            got = _bundles(bins[r], lengths)
            cache[r] = (sorted(got), got)
        return cache[r]

    changed, sweeps = True, 0
    while changed and sweeps < _SWEEPS:  # each exchange lowers the sum of squared loads
        changed, sweeps = False, sweeps + 1
        for a in range(rows):
            for b in range(rows):
                gap = loads[a] - loads[b]
                if gap <= 1:
                    continue
                # the exchange moving d = x - y tokens from a to b, 0 < d < gap, d closest to gap / 2
                best = (gap, (), ())  # (|gap - 2d| after the exchange, positions leaving a, positions leaving b)
                mine, theirs = bundles(a), bundles(b)
                ys = theirs[0]
                for x in mine[0]:
                    if x == 0:
                        continue
                    j = bisect.bisect_left(ys, x - gap / 2)
                    for y in ys[max(0, j - 1):j + 1]:
                        d = x - y
                        if 0 < d < gap and abs(gap - 2 * d) < best[0]:
                            best = (abs(gap - 2 * d), mine[1][x], theirs[1][y])
                if not best[1]:
                    continue
                _, p, q = best
                out_a = [bins[a][t] for t in p]
                out_b = [bins[b][t] for t in q]
                bins[a] = [i for t, i in enumerate(bins[a]) if t not in p] + out_b
                bins[b] = [i for t, i in enumerate(bins[b]) if t not in q] + out_a
                moved = sum(lengths[i] for i in out_a) - sum(lengths[i] for i in out_b)
                loads[a] -= moved
                loads[b] += moved
                cache[a] = cache[b] = None
                changed = True
    if max(loads) > max_seq_len:
        return None
    return [b for b in bins if b]


def subset_sum_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of at most ``capacity`` tokens, filled one at a time, each with the largest total any
    subset of the examples left reaches (an exact subset sum, reachable sums as bits of a Python int);
    among subsets of that total, the one the backtrack finds, which keeps the shortest examples for
    later rows. Examples must fit ``capacity``. Deterministic."""
    left = _descending(lengths)
    mask = (1 << (capacity + 1)) - 1
    rows: list[list[int]] = []
    while left:
        reach = [1]
        for i in left:
            reach.append((reach[-1] | (reach[-1] << lengths[i])) & mask)
        t = reach[-1].bit_length() - 1  # the largest reachable total
        row, keep = [], []
        for pos in range(len(left), 0, -1):
            i = left[pos - 1]
            if (reach[pos - 1] >> t) & 1:
                keep.append(i)
            else:
                row.append(i)
                t -= lengths[i]
        if not row:  # only empty examples left (never from a tokenizer): one row holds them
            row, keep = keep, []
        rows.append(row[::-1])
        left = keep[::-1]
    return rows


def _width(fill: int, max_seq_len: int, pad_to_multiple_of: int) -> int:
    """The row length `pack` gives a micro-batch whose fullest row holds ``fill`` tokens."""
    return min(-(-fill // pad_to_multiple_of) * pad_to_multiple_of, max(max_seq_len, fill))


def _area(lengths: Sequence[int], bins: list[list[int]], max_seq_len: int, pad_to_multiple_of: int) -> int:
    return len(bins) * _width(max(sum(lengths[i] for i in b) for b in bins), max_seq_len, pad_to_multiple_of)


def _group_rows(lengths, bins, max_seq_len, budget, pad_to_multiple_of) -> list[list[list[int]]]:
    """Rows fullest first; a micro-batch takes as many as fit the budget at its first row's width."""
    fills = [sum(lengths[i] for i in b) for b in bins]
    bins = [bins[r] for r in sorted(range(len(bins)), key=lambda r: (-fills[r], r))]
    groups: list[list[list[int]]] = []
    r = 0
    while r < len(bins):
        k = max(1, budget // _width(sum(lengths[i] for i in bins[r]), max_seq_len, pad_to_multiple_of))
        groups.append(bins[r:r + k])
        r += k
    return groups


def plan_micro_batches(lengths: Sequence[int], max_seq_len: int, budget: int,
                       pad_to_multiple_of: int = 1) -> list[list[list[int]]]:
    """A token-budget step: micro-batches, each a list of rows (lists of example indices) whose
    padded area (rows x the fullest row, rounded up to ``pad_to_multiple_of``) is at most ``budget``.

    Minimizes the number of micro-batches first, then the padded cells, over all the step's examples
    (not in arrival order). The plan to beat is first fit: first-fit decreasing into rows of
    max_seq_len, ``budget // max_seq_len`` rows a micro-batch, each re-packed by `balanced_bins`
    (the result is never worse than it). Other candidate row layouts: for row counts R from
    ``ceil(tokens / max_seq_len)`` up, the examples spread evenly over R rows (`balanced_rows`) and
    rows filled by exact subset sums up to ``ceil(tokens / R)`` (`subset_sum_rows`); then rows
    filled by subset sums up to ``budget // k`` for k rows a micro-batch (rows that fill the budget
    exactly). Rows are taken fullest first; a micro-batch takes as many as fit the budget at the
    width of its first (fullest) row, and keeps the layout with the fewest cells among these rows,
    `balanced_bins` and `balanced_rows` of its own examples (the last micro-batch while candidates
    are compared, every one in the chosen plan). Row counts stop after `_PLAN_STALE_ROWS` without a
    better plan, or once the plan has the fewest micro-batches possible and is `_GOOD_ENOUGH` full.
    A pure function of the lengths: every rank computes the same plan for every rank.
    """
    if not lengths:
        return []
    if budget < max_seq_len:
        raise ValueError(f"budget {budget} is smaller than one row of {max_seq_len}")
    n_items, total = len(lengths), sum(lengths)
    if max(lengths) > max_seq_len:
        raise ValueError(f"example of {max(lengths)} tokens does not fit a row of {max_seq_len} (filter before packing)")

    def evaluate(bins):  # the last, partly filled micro-batch re-packed (the full ones: once a plan is chosen)
        groups = _group_rows(lengths, bins, max_seq_len, budget, pad_to_multiple_of)
        full = sum(_area(lengths, g, max_seq_len, pad_to_multiple_of) for g in groups[:-1])
        if (len(groups), full + sum(lengths[i] for r in groups[-1] for i in r)) >= best:
            return best, None  # cannot win, even with a last micro-batch without padding
        groups[-1] = _improve(lengths, groups[-1], max_seq_len, pad_to_multiple_of)
        return (len(groups), full + _area(lengths, groups[-1], max_seq_len, pad_to_multiple_of)), groups

    def good(cost):  # the fewest micro-batches possible, (almost) no padding: stop searching
        return cost[0] == -(-total // budget) and cost[1] * _GOOD_ENOUGH <= total

    # First fit into rows of max_seq_len, budget // max_seq_len rows a micro-batch, each re-packed
    # by `balanced_bins` (as `pack` would): the plan to beat, and often good enough.
    ffd, k = first_fit_decreasing(lengths, max_seq_len), budget // max_seq_len
    plan = []
    for j in range(0, len(ffd), k):
        items = [i for b in ffd[j:j + k] for i in b]
        alt = [[items[i] for i in b] for b in balanced_bins([lengths[i] for i in items], max_seq_len)]
        plan.append(min((ffd[j:j + k], alt), key=lambda g: _area(lengths, g, max_seq_len, pad_to_multiple_of)))
    best = (len(plan), sum(_area(lengths, g, max_seq_len, pad_to_multiple_of) for g in plan))
    stale = 0
    for rows in range(-(-total // max_seq_len), n_items + 1):
        if stale > _PLAN_STALE_ROWS or good(best):
            break
        stale += 1
        # Skip row counts whose rows, at the average fill, would need more micro-batches than the best plan.
        per = budget // _width(-(-total // rows), max_seq_len, pad_to_multiple_of)
        if per < 1 or -(-rows // per) > best[0]:
            continue
        for bins in (balanced_rows(lengths, rows, max_seq_len),
                     subset_sum_rows(lengths, min(max_seq_len, max(max(lengths), -(-total // rows))))):
            if bins is None:
                continue
            cost, groups = evaluate(bins)
            if groups is not None and cost < best:
                best, plan, stale = cost, groups, 0
    longest, k0 = max(lengths), -(-budget // max_seq_len)
    for k in range(k0, k0 + _BUDGET_WIDTHS):  # rows exactly as wide as k of them fill the budget
        width = min(max_seq_len, budget // k)
        if width < longest or good(best):
            break
        cost, groups = evaluate(subset_sum_rows(lengths, width))
        if groups is not None and cost < best:
            best, plan = cost, groups
    return [_improve(lengths, g, max_seq_len, pad_to_multiple_of) if len(g) > 1 else g for g in plan]


def _improve(lengths, group, max_seq_len, pad_to_multiple_of) -> list[list[int]]:
    """The micro-batch's rows, or `balanced_bins` / `balanced_rows` of its examples where they pad less."""
    items = [i for row in group for i in row]
    sub = [lengths[i] for i in items]
    best, best_area = group, _area(lengths, group, max_seq_len, pad_to_multiple_of)
    if best_area * _GOOD_ENOUGH <= sum(sub):
        return group
    for alt in (balanced_bins(sub, max_seq_len), balanced_rows(sub, len(group), max_seq_len)):
        if alt is None:
            continue
        alt = [[items[i] for i in b] for b in alt]
        area = _area(lengths, alt, max_seq_len, pad_to_multiple_of)
        if area < best_area:
            best, best_area = alt, area
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
    return pack_rows(examples, balanced_bins([len(ex) for ex in examples], max_seq_len), max_seq_len, pad_id,
                     pad_to_multiple_of)


def pack_rows(examples: Sequence[TokenizedExample], bins: list[list[int]], max_seq_len: int, pad_id: int,
              pad_to_multiple_of: int = 1) -> dict:
    """`pack` with the rows given: ``bins[r]`` lists the indices of the examples of row r, in order."""
    lengths = [len(ex) for ex in examples]
    fill = max(sum(lengths[i] for i in b) for b in bins)
    T = _width(fill, max_seq_len, pad_to_multiple_of)
    R = len(bins)
    # Vectorized fill: every example's tokens go, in row order, to one flat run of destinations.
    flat = [i for b in bins for i in b]
    lens = np.array([lengths[i] for i in flat], dtype=np.int64)
    row_fill = np.array([sum(lengths[i] for i in b) for b in bins], dtype=np.int64)
    row_of = np.repeat(np.arange(R), [len(b) for b in bins])
    src_start = np.cumsum(lens) - lens  # each example's start in the concatenation
    col = src_start - (np.cumsum(row_fill) - row_fill)[row_of]  # its start column in its row
    within = np.arange(int(lens.sum())) - np.repeat(src_start, lens)  # position inside its example
    dest = np.repeat(row_of * T + col, lens) + within
    ids = np.full((R, T), pad_id, dtype=np.int64)
    labels = np.full((R, T), IGNORE, dtype=np.int64)
    pos = np.arange(T)[None, :] - row_fill[:, None]  # the padding tail counts up from 0
    ids.reshape(-1)[dest] = np.concatenate([examples[i].input_ids for i in flat])
    labels.reshape(-1)[dest] = np.concatenate([examples[i].labels for i in flat])
    pos.reshape(-1)[dest] = within
    seg_lens: list[int] = []
    for b, fill_r in zip(bins, row_fill.tolist()):
        seg_lens += [lengths[i] for i in b]
        if fill_r < T:  # the padding tail: one sequence counting up, no loss
            seg_lens.append(T - fill_r)
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
