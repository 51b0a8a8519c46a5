"""Confidence intervals and paired comparisons over seeds and factoids (numpy only).

A grid with a seed axis gives, per cell and seed, one value per factoid (1/0 for exact match, or
the per-factoid forgetting EM_stage1 - EM_stage2 in {-1, 0, 1}). The two sources of noise are the
run (seed: data order, mixing draws, initialization of what is random) and the sample of factoids,
so intervals come from a *hierarchical* bootstrap: resample seeds with replacement, then the items
within each drawn seed (Davison & Hinkley 1997, sec. 3.8, "two-stage" resampling). With one seed
it is the ordinary bootstrap over items.

    bootstrap_ci(per_seed)                   -> (estimate, lo, hi)
    paired_comparison(a_per_seed, b_per_seed) -> {diff, lo, hi, p, n_seeds, n_pairs}
    holm(pvalues)                            -> Holm-Bonferroni adjusted p-values (eval.significance)

Everything is deterministic given `seed` (numpy `default_rng`, never the global RNG).
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np

from remix_ds.eval.significance import holm  # noqa: F401  (stats.holm: the report's and the frontier's)

EXACT_MAX_PAIRS = 16
"""The sign-flip test enumerates all 2^m sign patterns up to this many non-zero differences."""


def _as_seeds(per_seed: Sequence, what: str) -> list[np.ndarray]:
    seeds = [np.asarray(v, dtype=float).ravel() for v in per_seed]
    if not seeds:
        raise ValueError(f"{what}: no seeds")
    if any(v.size == 0 for v in seeds):
        raise ValueError(f"{what}: a seed has no items")
    return seeds


def _rows_stat(stat: Callable, matrix: np.ndarray) -> np.ndarray:
    """`stat` of every row of a (B, N) matrix (one call with axis=1 when stat takes it)."""
    try:
        out = np.asarray(stat(matrix, axis=1), dtype=float)
        if out.shape == (matrix.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([stat(row) for row in matrix], dtype=float)


def _replicates(seeds: list[np.ndarray], stat: Callable, n_boot: int, rng: np.random.Generator,
                shared_items: bool = False) -> np.ndarray:
    """n_boot hierarchical bootstrap replicates of stat: seeds with replacement, then items within each
    (shared_items: one draw of item indices per replicate, used by all its seeds)."""
    s = len(seeds)
    drawn = rng.integers(0, s, size=(n_boot, s))  # (B, S) which seed fills each slot
    sizes = {v.size for v in seeds}
    if shared_items and len(sizes) != 1:
        raise ValueError(f"shared_items: every seed must have the same items, got sizes {[v.size for v in seeds]}")
    if len(sizes) == 1:  # the common case (same number of factoids per seed): one (B, S*n) matrix
        n = sizes.pop()
        table = np.stack(seeds)  # (S, n)
        chunk = max(1, 2_000_000 // (s * n))  # replicates per block: at most ~2M drawn values at once
        out = []
        for start in range(0, n_boot, chunk):
            rows = drawn[start:start + chunk]  # (b, S)
            b = rows.shape[0]
            items = (np.broadcast_to(rng.integers(0, n, size=(b, 1, n)), (b, s, n)) if shared_items
                     else rng.integers(0, n, size=(b, s, n)))  # (b, S, n)
            out.append(_rows_stat(stat, table[rows[:, :, None], items].reshape(b, s * n)))
        return np.concatenate(out)
    out = np.empty(n_boot)
    for b in range(n_boot):
        parts = [seeds[k][rng.integers(0, seeds[k].size, size=seeds[k].size)] for k in drawn[b]]
        out[b] = stat(np.concatenate(parts))
    return out


def bootstrap_ci(per_seed: Sequence[np.ndarray], stat: Callable = np.mean, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0, *, shared_items: bool = False) -> tuple[float, float, float]:
    """(estimate, lo, hi): `stat` of all items pooled, and its (1 - alpha) percentile bootstrap interval.

    `per_seed[s]` holds seed s's per-item values (factoids; seeds may have different counts). Each
    replicate draws len(per_seed) seeds with replacement and, within each drawn seed, as many items
    as it has, with replacement; the replicate is `stat` of the drawn items pooled. One seed: items
    only. All values equal: every replicate equals the estimate, so the interval has zero width.

    `shared_items=True`: item i is the same factoid in every seed (a crossed design, e.g. a grid
    whose seeds vary training but not the facts). Drawing items independently per seed would then
    count each factoid's own difficulty S times as independent evidence and give too narrow an
    interval; instead each replicate draws one set of item indices and uses it in all its seeds
    (the two-way bootstrap over seeds and items; slightly conservative).
    """
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci: need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
    seeds = _as_seeds(per_seed, "bootstrap_ci")
    estimate = float(stat(np.concatenate(seeds)))
    reps = _replicates(seeds, stat, n_boot, np.random.default_rng(seed), shared_items)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return estimate, float(lo), float(hi)


def sign_flip_pvalue(diffs: np.ndarray, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test (Fisher-Pitman) for mean(diffs) = 0.

    Under the null each pair's two values are exchangeable, so each difference's sign is +/- with
    probability 1/2 independently; the statistic is |sum of differences|. Zero differences do not
    change under a flip and are left out of the enumeration. Exact (all 2^m patterns) for m <=
    EXACT_MAX_PAIRS non-zero differences, else Monte Carlo with `n_perm` draws from
    `default_rng(seed)` and the (1 + hits) / (1 + n_perm) estimate, which never gives 0.
    """
    d = np.asarray(diffs, dtype=float).ravel()
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-9 * max(1.0, observed)  # equal sums that differ only by rounding count as ties
    if d.size <= EXACT_MAX_PAIRS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))  # (2^m, m)
        return float(np.mean(np.abs(signs @ d) >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, 2000):  # chunks keep memory at 2000 x m
        signs = rng.choice((1.0, -1.0), size=(min(2000, n_perm - start), d.size))
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (1 + hits) / (1 + n_perm)


def paired_comparison(a_per_seed: Sequence[np.ndarray], b_per_seed: Sequence[np.ndarray], n_boot: int = 2000,
                      seed: int = 0, *, n_perm: int = 10000, shared_items: bool = False) -> dict:
    """Mean of a - b, paired over seeds and items: a[s][i] and b[s][i] are the same factoid in seed s.

    Returns {diff, lo, hi, p, n_seeds, n_pairs}: `diff` the mean paired difference over all pairs,
    [lo, hi] its 95% hierarchical bootstrap interval (:func:`bootstrap_ci` of the differences), `p`
    the two-sided p-value of the paired sign-flip permutation test (:func:`sign_flip_pvalue`:
    exact up to EXACT_MAX_PAIRS non-zero differences, else Monte Carlo, `n_perm` draws, fixed seed).
    The test treats each (seed, item) pair as its own unit; with `shared_items=True` (item i is the
    same factoid in every seed) the unit is the factoid: its differences are summed over seeds and
    flipped together, and the bootstrap is the two-way one (see :func:`bootstrap_ci`).
    """
    a = _as_seeds(a_per_seed, "paired_comparison a")
    b = _as_seeds(b_per_seed, "paired_comparison b")
    if len(a) != len(b) or any(x.size != y.size for x, y in zip(a, b)):
        raise ValueError(f"paired_comparison: a and b must pair up seed by seed and item by item, got sizes "
                         f"{[x.size for x in a]} and {[y.size for y in b]}")
    diffs = [x - y for x, y in zip(a, b)]
    diff, lo, hi = bootstrap_ci(diffs, np.mean, n_boot=n_boot, seed=seed, shared_items=shared_items)
    units = np.sum(diffs, axis=0) if shared_items else np.concatenate(diffs)
    p = sign_flip_pvalue(units, n_perm=n_perm, seed=seed)
    return {"diff": diff, "lo": lo, "hi": hi, "p": p, "n_seeds": len(diffs), "n_pairs": int(sum(d.size for d in diffs))}
