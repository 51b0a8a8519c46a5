"""The published completion methods against the reference's own outputs (the parity pack in
../shared/reference/forgetting_parity/, produced by AuCson/low-rank-forgetting run unchanged), and
the paper's pooled metrics against per-row averages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from remix_ds.configtools import ConfigError
from remix_ds.forgetting import published
from remix_ds.forgetting.metrics import pooled_metrics, row_metrics

PACK = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "forgetting_parity"
IN_DOMAIN = [6, 65, 18, 8, 60, 13, 37, 22, 30, 19, 64, 50, 25, 31, 32, 61, 16, 5, 53, 49]
SPLITS = {"in_domain": IN_DOMAIN, "tulu": list(range(66, 77)), "dolly": list(range(77, 85))}
TRAIN = [i for i in range(66) if i not in IN_DOMAIN]
KEYS = {"rmse": "rmse", "f1": "f1", "prec": "precision", "recall": "recall", "auc_roc": "auroc"}

needs_pack = pytest.mark.skipif(not (PACK / "synth_N1000.npz").is_file(), reason="no parity pack")


def _pack():
    d = np.load(PACK / "synth_N1000.npz")
    keep = np.load(PACK / "ref_keepmask_seed0.npy")
    return d["Z"], d["B"], keep, json.loads((PACK / "ref_metrics_seed0.json").read_text())


def test_reference_reveal_matches_pack():
    if not (PACK / "ref_keepmask_seed0.npy").is_file():
        pytest.skip("no parity pack")
    cols = published.reference_columns(1000, 30, 0)
    keep = np.load(PACK / "ref_keepmask_seed0.npy")
    assert np.array_equal(np.sort(cols), np.nonzero(~keep)[0])


@needs_pack
def test_baseline_methods_equal_reference():
    """additive and knn_baseline (one shared baseline fit) on one row of each split, to 1e-9."""
    Z, _, keep, _ = _pack()
    cases = [("in_domain", 0), ("tulu", 10), ("dolly", 3)]
    cols = np.nonzero(~keep)[0]
    pred = published.complete_all(["additive", "knn_baseline"], Z[TRAIN], Z[[SPLITS[s][r] for s, r in cases]], cols)
    for method, got in pred.items():
        for (split, row), g in zip(cases, got):
            ref = np.load(PACK / f"ref_pred_{split}_{method}_seed0.npy")[row]
            np.testing.assert_allclose(g, ref, atol=1e-9, rtol=0, err_msg=f"{split} {method}")


@needs_pack
@pytest.mark.parametrize("method", ["lgmf", "lgmf_additive"])
def test_logistic_methods_equal_reference(method):
    _, B, keep, _ = _pack()
    ref = np.load(PACK / f"ref_pred_bin_in_domain_{method}_seed0.npy")
    cols = np.nonzero(~keep)[0]
    pred = published.complete(method, B[TRAIN], B[[IN_DOMAIN[7]]], cols, seed=0)
    np.testing.assert_allclose(pred[0], ref[7], atol=1e-6, rtol=0)


@needs_pack
def test_pooled_metrics_of_reference_predictions_equal_reference():
    """The paper's metric code on the pack's predictions: every printed value, to 1e-9."""
    Z, B, keep, ref = _pack()
    for key, want in ref.items():
        split, method, _ = key.split("/")
        M = B if split.startswith("bin_") else Z
        rows = SPLITS[split.removeprefix("bin_")]
        pred = np.load(PACK / f"ref_pred_{split}_{method}_seed0.npy")
        got = pooled_metrics(pred[:, keep], M[rows][:, keep])
        for k, v in want.items():
            assert got[KEYS[k]] == pytest.approx(v, abs=1e-9), (key, k)


def test_pooled_metrics_differ_from_per_row_averages():
    """3 x 4 by hand: per-row AUROC 1, 3/4, 2/3 (mean 0.8056), pooled 25/35; F1 per row 0.8, 2/3,
    0 (mean 0.4889), pooled tp 4, fp 3, fn 1 -> 2/3."""
    true = np.array([[1, -1, 1, -1], [1, -1, 1, -1], [1, -1, -1, -1]], dtype=float)
    pred = np.array([[0.2, 0.1, 0.3, 0.0], [0.9, 0.8, 0.7, 0.6], [-0.5, -0.4, -0.9, -0.8]])
    rows = [row_metrics(p, t) for p, t in zip(pred, true)]
    assert [r["auroc"] for r in rows] == pytest.approx([1.0, 0.75, 2 / 3])
    assert np.mean([r["forgotten_f1"] for r in rows]) == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    pooled = pooled_metrics(pred, true)
    assert pooled["auroc"] == pytest.approx(25 / 35)
    assert (pooled["precision"], pooled["recall"], pooled["f1"]) == pytest.approx((4 / 7, 4 / 5, 2 / 3))
    assert pooled["rmse"] == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)))


def _surprise_sgd(train, row, cols, n_epochs, lr, reg, n_factors=0, init_std=0.1, seed=0):
    """surprise's SGD as written there (one rating at a time, rows in order, columns ascending):
    BaselineOnly's ``baseline_sgd`` (n_factors 0) or SVD's ``sgd``; the prediction of the last row."""
    t, c = train.shape
    ratings = [(u, j, train[u, j]) for u in range(t) for j in range(c)] + [(t, j, row[j]) for j in sorted(set(cols))]
    mu = np.mean([r for _, _, r in ratings])
    rs = np.random.RandomState(seed)
    pu, qi = rs.normal(0, init_std, (t + 1, n_factors)), rs.normal(0, init_std, (c, n_factors))
    bu, bi = np.zeros(t + 1), np.zeros(c)
    for _ in range(n_epochs):
        for u, i, r in ratings:
            err = r - (mu + bu[u] + bi[i] + sum(qi[i, f] * pu[u, f] for f in range(n_factors)))
            bu[u] += lr * (err - reg * bu[u])
            bi[i] += lr * (err - reg * bi[i])
            for f in range(n_factors):
                puf, qif = pu[u, f], qi[i, f]
                pu[u, f] += lr * (err * qif - reg * puf)
                qi[i, f] += lr * (err * puf - reg * qif)
    return mu + bu[t] + bi + qi @ pu[t]


def test_vectorized_sgd_equals_sequential_surprise_order():
    """The lfilter baseline pass and the wavefront SVD give surprise's one-rating-at-a-time result."""
    rng = np.random.default_rng(1)
    train, rows, cols = rng.normal(size=(4, 7)), rng.normal(size=(2, 7)), np.array([5, 1, 5, 3])
    got = published.additive(train, rows, cols, n_epochs=30)
    want = [_surprise_sgd(train, r, cols, 30, 0.005, 0.02) for r in rows]
    np.testing.assert_allclose(got, want, atol=1e-12)
    got = published.svd(train, rows, cols, n_epochs=30, n_factors=2, lr=0.05, reg=0.1, init_std=0.3, seed=3)
    want = [_surprise_sgd(train, r, cols, 30, 0.05, 0.1, n_factors=2, init_std=0.3, seed=3) for r in rows]
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.slow
@needs_pack
def test_svd_matches_reference_statistically():
    """svd's init is random in the reference (surprise's unseeded global RNG): per-row Pearson on the
    hidden entries >= 0.99 (seed 0 here: 0.9995-0.99999 on all 20 in-domain rows) and RMSE within 0.01."""
    Z, _, keep, _ = _pack()
    ref = np.load(PACK / "ref_pred_in_domain_svd_seed0.npy")
    rows = [0, 15]
    pred = published.complete("svd", Z[TRAIN], Z[[IN_DOMAIN[r] for r in rows]], np.nonzero(~keep)[0], seed=0)
    for r, p in zip(rows, pred):
        assert np.corrcoef(p[keep], ref[r][keep])[0, 1] >= 0.99
        truth = Z[IN_DOMAIN[r], keep]
        assert abs(np.sqrt(np.mean((p[keep] - truth) ** 2)) - np.sqrt(np.mean((ref[r][keep] - truth) ** 2))) < 0.01


def test_replay_predicted_arm_uses_published_svd_seed0_for_every_run():
    from types import SimpleNamespace

    from remix_ds.forgetting.config import load_forgetting_config
    from remix_ds.forgetting.replay import fit_replay_predictor, predicted_pool_scores

    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 1)) * rng.normal(size=(1, 16)) + 0.1 * rng.normal(size=(6, 16))
    mat = SimpleNamespace(z=z)
    pool = np.arange(0, 16, 2)
    cfg = load_forgetting_config(None, ["replay.method=svd", "replay.prediction_seed=0", "predict.revealed=5"])
    pred = fit_replay_predictor(cfg, mat, [0, 1, 2, 3, 4])
    a, cols_a = predicted_pool_scores(cfg, mat, 5, pool, 0, pred)
    b, cols_b = predicted_pool_scores(cfg, mat, 5, pool, 1, pred)
    cols = published.reference_columns(16, 5, 0)
    want = published.complete("svd", z[:5], z[[5]], cols, seed=0)[0][pool]
    assert np.array_equal(cols_a, cols) and np.array_equal(cols_b, cols)
    np.testing.assert_allclose(a, want, atol=1e-12)
    np.testing.assert_allclose(b, want, atol=1e-12)
    # Ours stays selectable, and reveals per run seed when prediction_seed = -1.
    cfg = load_forgetting_config(None, ["replay.method=mf", "predict.revealed=5"])
    pred = fit_replay_predictor(cfg, mat, [0, 1, 2, 3, 4])
    a, cols_a = predicted_pool_scores(cfg, mat, 5, pool, 0, pred)
    b, cols_b = predicted_pool_scores(cfg, mat, 5, pool, 1, pred)
    assert set(cols_a) <= set(pool) and not np.array_equal(cols_a, cols_b) and not np.allclose(a, b)


def test_online_phase_b_masks_phase_a_draw():
    from remix_ds.data.replay_rows import draw_without_replacement, softmax
    from remix_ds.forgetting.online import phase_b_probs

    z = np.linspace(1.0, 0.0, 12)  # the highest predictions are the first rows
    phase_a = np.array([0, 1, 5])
    probs = phase_b_probs(z, 0.1, phase_a)
    assert probs[phase_a].tolist() == [0.0, 0.0, 0.0]
    keep = np.setdiff1d(np.arange(12), phase_a)
    np.testing.assert_allclose(probs[keep], softmax(z[keep], 0.1))
    draw = draw_without_replacement(12, 6, probs, np.random.default_rng(0))
    assert not set(draw.tolist()) & set(phase_a.tolist())
    np.testing.assert_allclose(phase_b_probs(z, 0.1, None), softmax(z, 0.1))  # replay.online_mask=false


def test_instruction_token_spans_reference_and_ours(tmp_path, tiny_tokenizer):
    """A 1-turn and a 2-turn chat: ours counts the final reply + EOS of both; the reference's rule
    counts the reply without EOS and leaves the 2-turn chat out."""
    from remix_ds.forgetting.config import load_forgetting_config
    from remix_ds.forgetting.upstream import load_upstream

    def chat(*turns):
        return [{"role": r, "content": c} for r, c in zip(["user", "assistant"] * 2, turns)]

    rows = [{"id": "two", "messages": chat("Hi", "Hello!", "And?", "Bye now")},
            {"id": "one", "messages": chat("Hi", "Hello!")}, {"id": "one_b", "messages": chat("Q", "Fine")}]
    path = tmp_path / "up.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["upstream.kind=examples", f"upstream.source.dataset={path}"]
    eos = tiny_tokenizer.eos_token_id
    cfg = load_forgetting_config(None, base + ["upstream.num_examples=3"])
    up = load_upstream(cfg.upstream, tiny_tokenizer, cfg.finetune.data)
    ours = dict(zip(up.ids, up.items))
    assert tiny_tokenizer.decode(ours["two"].answer_ids[:-1]).strip() == "Bye now"
    assert [int(it.answer_ids[-1]) for it in up.items] == [eos] * 3
    cfg = load_forgetting_config(None, base + ["upstream.num_examples=2", "upstream.answer_tokens=reference"])
    up = load_upstream(cfg.upstream, tiny_tokenizer, cfg.finetune.data)
    ref = dict(zip(up.ids, up.items))
    assert set(ref) == {"one", "one_b"}  # the 2-turn chat is left out
    assert tiny_tokenizer.decode(ref["one"].answer_ids).strip() == "Hello!"
    assert all(eos not in it.answer_ids.tolist() for it in up.items)
    np.testing.assert_array_equal(ref["one"].answer_ids, ours["one"].answer_ids[:-1])
    cfg = load_forgetting_config(None, base + ["upstream.num_examples=3", "upstream.answer_tokens=reference"])
    with pytest.raises(ConfigError, match="at most one assistant turn"):
        load_upstream(cfg.upstream, tiny_tokenizer, cfg.finetune.data)


def test_additive_r2_is_the_papers_als_with_least_squares_beside():
    """baseline_als equals surprise's loop (items, then users, per epoch) on a matrix with a
    missing entry; its R^2 is below the exact least-squares one (regularized)."""
    from remix_ds.forgetting.complete import fit_additive, r2

    rng = np.random.default_rng(3)
    Z = rng.normal(size=(5, 8)) + rng.normal(size=(5, 1)) + rng.normal(size=(1, 8))
    Z[2, 3] = np.nan
    obs = [(u, i) for u in range(5) for i in range(8) if not np.isnan(Z[u, i])]
    mu = np.mean([Z[u, i] for u, i in obs])
    bu, bi = np.zeros(5), np.zeros(8)
    for _ in range(100):
        for i in range(8):
            us = [u for u, j in obs if j == i]
            bi[i] = sum(Z[u, i] - mu - bu[u] for u in us) / (10 + len(us))
        for u in range(5):
            its = [j for v, j in obs if v == u]
            bu[u] = sum(Z[u, j] - mu - bi[j] for j in its) / (15 + len(its))
    got = published.baseline_als(Z)
    assert got[0] == pytest.approx(mu)
    np.testing.assert_allclose(got[1], bu, atol=1e-12)
    np.testing.assert_allclose(got[2], bi, atol=1e-12)
    full = np.nan_to_num(Z)
    m, b, c = fit_additive(full)
    assert r2(full, published.additive_als_fit(full)) < r2(full, m + b[:, None] + c[None, :]) - 0.01
