"""remix_ds.experiments.stats: hierarchical bootstrap CIs, the paired sign-flip test, Holm (hand-computed cases)."""

import numpy as np
import pytest

from remix_ds.experiments import stats


def test_ci_zero_width_when_all_values_equal():
    assert stats.bootstrap_ci([np.full(32, 0.75)] * 3) == (0.75, 0.75, 0.75)
    assert stats.bootstrap_ci([np.ones(5)]) == (1.0, 1.0, 1.0)


def test_ci_one_seed_is_the_item_bootstrap():
    # Replicates of mean of 2 draws from {0, 1}: 0, 0.5, 1 with probability 1/4, 1/2, 1/4 -> 95% CI [0, 1].
    est, lo, hi = stats.bootstrap_ci([np.array([0.0, 1.0])], n_boot=4000)
    assert (est, lo, hi) == (0.5, 0.0, 1.0)
    # A 0/1 sample of 50/50 over n = 100: the CI is about 0.5 -/+ 1.96 * 0.05.
    est, lo, hi = stats.bootstrap_ci([np.r_[np.ones(50), np.zeros(50)]])
    assert est == 0.5 and 0.38 <= lo <= 0.42 and 0.58 <= hi <= 0.62


def test_ci_resamples_seeds_too():
    # Items agree within each seed but seeds disagree: only seed resampling can move the mean.
    # Replicates: fraction of the 2 drawn seeds that are seed 1 -> 0, 0.5, 1 -> CI [0, 1].
    assert stats.bootstrap_ci([np.zeros(50), np.ones(50)], n_boot=4000) == (0.5, 0.0, 1.0)


def test_fast_path_matches_plain_loop():
    rng = np.random.default_rng(3)
    per_seed = [rng.integers(0, 2, 40).astype(float) for _ in range(3)]
    # Plain reference: the same draws (seed slots, then items), one replicate at a time.
    ref_rng = np.random.default_rng(7)
    drawn = ref_rng.integers(0, 3, size=(500, 3))
    items = ref_rng.integers(0, 40, size=(500, 3, 40))
    reps = [np.mean(np.concatenate([per_seed[k][items[b, j]] for j, k in enumerate(drawn[b])])) for b in range(500)]
    expected = (float(np.mean(np.concatenate(per_seed))), *np.quantile(reps, [0.025, 0.975]))
    assert stats.bootstrap_ci(per_seed, n_boot=500, seed=7) == pytest.approx(expected, abs=1e-12)
    # A stat without an axis argument takes the row-by-row path: same draws, same numbers.
    assert stats.bootstrap_ci(per_seed, stat=lambda x: float(x.mean()), n_boot=500, seed=7) == pytest.approx(expected, abs=1e-12)


def test_sign_flip_exact_hand_cases():
    assert stats.sign_flip_pvalue([1, 1, 1]) == 0.25  # 2 of 8 sign patterns reach |sum| = 3
    assert stats.sign_flip_pvalue([1, 1, 1, 1, 1, 0, 0]) == 2 / 32  # zeros do not count
    assert stats.sign_flip_pvalue([2, -1, 1]) == 0.75  # sums 2, 0, 4, 2, -2, -4, 0, -2: 6 of 8 reach |2|
    assert stats.sign_flip_pvalue([0, 0]) == 1.0


def test_paired_comparison_detects_a_known_difference():
    a = [np.r_[np.ones(18), np.zeros(2)] for _ in range(3)]
    b = [np.zeros(20) for _ in range(3)]
    r = stats.paired_comparison(a, b)
    assert r["diff"] == pytest.approx(0.9) and r["n_seeds"] == 3 and r["n_pairs"] == 60
    assert r["p"] < 0.05 and r["p"] == pytest.approx(1 / 10001)  # Monte Carlo (54 non-zero pairs): no flip reaches it
    assert 0.8 <= r["lo"] < 0.9 < r["hi"] <= 1.0


def test_paired_comparison_null_case():
    # The differences are +1 and -1 equally often: the observed mean is 0, every flip reaches it.
    a = [np.r_[np.ones(10), np.zeros(10)], np.r_[np.zeros(10), np.ones(10)]]
    b = [np.r_[np.zeros(10), np.ones(10)], np.r_[np.ones(10), np.zeros(10)]]
    r = stats.paired_comparison(a, b)
    assert r["diff"] == 0 and r["p"] > 0.2 and r["lo"] < 0 < r["hi"]
    # Same values on both sides: no difference, p = 1, zero-width CI.
    same = stats.paired_comparison(a, a)
    assert (same["diff"], same["lo"], same["hi"], same["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_paired_comparison_needs_pairs():
    with pytest.raises(ValueError, match="pair up"):
        stats.paired_comparison([np.ones(3)], [np.ones(4)])
    with pytest.raises(ValueError, match="no seeds"):
        stats.bootstrap_ci([])


def test_holm_known_vector():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_shared_items_draw_one_item_set_for_all_seeds():
    # Every seed scores the same 2 factoids identically: the crossed bootstrap sees 2 items, not 2 x 3.
    per_seed = [np.array([0.0, 1.0])] * 3
    assert stats.bootstrap_ci(per_seed, n_boot=4000, shared_items=True) == (0.5, 0.0, 1.0)
    est, lo, hi = stats.bootstrap_ci(per_seed, n_boot=4000)  # nested: 6 independent draws, narrower
    assert est == 0.5 and lo > 0.0 and hi < 1.0
    # Paired: differences (1, 1, 1) on one factoid in 3 seeds and (0, 0, 0) on another: one unit, p = 1 (2 of 2 flips).
    r = stats.paired_comparison([np.array([1.0, 0.0])] * 3, [np.zeros(2)] * 3, shared_items=True)
    assert r["p"] == 1.0 and r["n_pairs"] == 6 and r["diff"] == 0.5
    assert stats.paired_comparison([np.array([1.0, 0.0])] * 3, [np.zeros(2)] * 3)["p"] == 0.25  # 3 units: 2 of 8
    with pytest.raises(ValueError, match="same items"):
        stats.bootstrap_ci([np.ones(2), np.ones(3)], shared_items=True)
