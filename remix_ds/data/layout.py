"""The stage stream's layout: which kind of row (and which row of that kind) stands at each position
of an epoch, as pure functions of the counts, the replay selection and the seed.

Kinds: 0 = stage dataset, 1 = generic, 2 = random words, 3 + k = replay pool k. A layout is
(kinds, index) per position; the index is the row within the kind (a slot for generic / random
rows, a pool row for replay). Three placements:

- `pooled` (the reference): one permutation of all the epoch's rows from
  `np.random.default_rng(seed + key)` (key: the epoch, or 0 with `reference_compat`).
- `stratified`: the epoch is cut into optimizer steps of `block` rows and every step holds each kind
  in the epoch's proportions, floor or ceil of block * count / rows (`stratified_plan`; the remainders
  are spread deterministically), each non-replay kind's rows in a per-epoch permutation, each step's
  rows shuffled; still one pass over every row per epoch.
- `interleave` (published replay, Jin & Ren): the non-replay rows are permuted by
  `default_rng(seed + key)` and replay slot j is inserted after min((j + 1) x every, n) of them
  (`interleave_positions`).

A *switch* (the online replay variant) replaces, from position (epoch, row) on, replay slot j of
pool k by ``after[k][j]``; non-replay rows keep their places.
"""

from __future__ import annotations

import numpy as np

_STRATIFIED_TAG = 0x57A7


def stratified_plan(counts: list[int], block: int) -> np.ndarray:
    """Rows of each kind in each step of `block` rows: (steps, kinds) int64, rows summing to the
    step sizes (the last may be short) and columns to `counts`.

    Every entry is floor or ceil of the step's exact share (step rows * count / total): each step
    takes the floors, and the steps' leftover rows go to the kinds furthest behind their exact
    cumulative share (ties: lower kind index), so the running totals never drift by a whole row.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    steps = -(-total // block) if total else 0
    plan = np.zeros((steps, len(counts)), dtype=np.int64)
    err = np.zeros(len(counts), dtype=np.int64)  # (taken - exact share) * total, per kind
    for b in range(steps):
        g = min(block, total - b * block)
        share = g * counts  # exact share * total
        x, frac = share // total, share % total
        extra = g - int(x.sum())
        if extra:
            behind = [k for k in np.lexsort((np.arange(len(counts)), err - frac)).tolist() if frac[k]]
            x[behind[:extra]] += 1
        plan[b] = x
        err += x * total - share
    if steps and (plan.sum(axis=0) != counts).any():  # cannot happen (running error stays within one row)
        raise AssertionError(f"stratified_plan: columns {plan.sum(axis=0).tolist()} != counts {counts.tolist()}")
    return plan


def interleave_positions(n_task: int, count: int, every: int) -> np.ndarray:
    """(count,) positions of the replay slots in an epoch of n_task + count rows: slot j follows
    the first min((j + 1) x every, n_task) task rows (surplus slots go to the end, in order)."""
    j = np.arange(count, dtype=np.int64)
    return np.minimum((j + 1) * every, n_task) + j


def _slots(counts) -> tuple[np.ndarray, np.ndarray]:
    kinds = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    slots = np.concatenate([np.arange(c, dtype=np.int64) for c in counts] or [np.zeros(0, np.int64)])
    return kinds, slots


def _pooled(counts, seed: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    kinds, slots = _slots(counts)
    perm = np.random.default_rng(seed + key).permutation(len(kinds))
    return kinds[perm], slots[perm]


def _interleaved(counts, seed: int, key: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    kinds, slots = _slots(counts[:3])
    perm = np.random.default_rng(seed + key).permutation(len(kinds))
    kinds, slots = kinds[perm], slots[perm]
    r_kinds = np.repeat(3 + np.arange(len(counts) - 3, dtype=np.int64), counts[3:])
    r_slots = np.concatenate([np.arange(c, dtype=np.int64) for c in counts[3:]] or [np.zeros(0, np.int64)])
    total = len(kinds) + len(r_kinds)
    is_replay = np.zeros(total, dtype=bool)
    is_replay[interleave_positions(len(kinds), len(r_kinds), every)] = True
    k_out, s_out = np.empty(total, np.int64), np.empty(total, np.int64)
    k_out[is_replay], s_out[is_replay] = r_kinds, r_slots
    k_out[~is_replay], s_out[~is_replay] = kinds, slots
    return k_out, s_out


def _stratified(counts, seed: int, key: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, key, _STRATIFIED_TAG])
    slots_of = [np.arange(c, dtype=np.int64) for c in counts]
    slots_of = [rng.permutation(a) if k < 3 else a for k, a in enumerate(slots_of)]  # replay draws are random already
    total = int(sum(counts))
    k_out, s_out = np.empty(total, np.int64), np.empty(total, np.int64)
    taken, pos = np.zeros(len(counts), np.int64), 0
    for row in stratified_plan(counts, block):
        k_b = np.repeat(np.arange(len(counts), dtype=np.int64), row)
        s_b = np.concatenate([slots_of[k][taken[k]:taken[k] + n] for k, n in enumerate(row)])
        p = rng.permutation(len(k_b))  # mix the kinds within the step (ranks take contiguous slices)
        k_out[pos:pos + len(p)], s_out[pos:pos + len(p)] = k_b[p], s_b[p]
        taken += row
        pos += len(p)
    return k_out, s_out


def epoch_layout(counts: list[int], draws: list[np.ndarray], *, placement: str, seed: int, key: int, block: int,
                 every: int = 1, epoch: int = 0, switch: tuple[int, int] | None = None,
                 after: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kind, index within the kind) of every row of an epoch in training order: (rows,) int64 each.

    `counts`: rows per kind (dataset, generic, random, each replay pool); `draws[k]`: the pool rows of
    replay pool k's slots (the selection); `placement`: `pooled`, `stratified` or `interleave` (module
    docstring); `key`: the epoch's shuffle key; `block`: rows per optimizer step (stratified);
    `every`: task rows per replay row (interleave); `switch` = (epoch, row) with `after`: the online
    switch, applied to positions of `epoch` from the row on (and every later epoch)."""
    if placement == "pooled":
        kinds, slots = _pooled(counts, seed, key)
    elif placement == "stratified":
        kinds, slots = _stratified(counts, seed, key, block)
    elif placement == "interleave":
        kinds, slots = _interleaved(counts, seed, key, every)
    else:
        raise ValueError(f"unknown placement {placement!r}")
    idx = slots.copy()
    positions = np.arange(len(idx))
    for k, draw in enumerate(draws):
        mine = kinds == 3 + k
        if not mine.any():
            continue
        idx[mine] = draw[slots[mine]]
        if switch is not None:
            e, r = switch
            late = mine & ((epoch > e) | ((epoch == e) & (positions >= r)))
            idx[late] = after[k][slots[late]]
    return kinds, idx
