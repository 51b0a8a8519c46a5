"""Forgetting-matrix maths on synthetic matrices whose structure is known by construction:
rank-k R^2, rank-1 / additive fits, matrix completion, the held-out protocol and its metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from remix_ds.forgetting.analyze import rank1_factors
from remix_ds.forgetting.complete import BiasedMF, fit_additive, make_predictor, r2, rank_r2
from remix_ds.forgetting.config import PredictConfig
from remix_ds.forgetting.predict import evaluate_predictors, folds_of, reveal, row_metrics


def orthonormal(rng, n, k):
    q, _ = np.linalg.qr(rng.normal(size=(n, k)))
    return q


def low_rank_plus_noise(m=80, n=1500, s=(30.0, 20.0, 12.0), sigma=0.05, seed=0):
    """Z = U diag(s) V' + noise with orthonormal U, V: signal energy per component is s_l^2."""
    rng = np.random.default_rng(seed)
    signal = (orthonormal(rng, m, len(s)) * np.array(s)) @ orthonormal(rng, n, len(s)).T
    return signal, signal + rng.normal(0, sigma, size=(m, n))


def test_rank_k_r2_matches_construction():
    s, sigma = (30.0, 20.0, 12.0), 0.05
    signal, Z = low_rank_plus_noise(s=s, sigma=sigma)
    m, n = Z.shape
    total = np.mean((Z - Z.mean()) ** 2)
    # Expected: rank k keeps the first k components' energy; beyond the true rank only noise is left.
    energy = np.cumsum(np.array(s) ** 2) / (m * n)
    expected = [e / total for e in energy]
    sv, r2k = rank_r2(Z, 6)
    assert len(r2k) == 6
    for k in range(3):
        assert r2k[k] == pytest.approx(expected[k], abs=0.01)
    noise_floor = 1 - sigma**2 / total
    assert r2k[2] == pytest.approx(noise_floor, abs=0.01)
    # Beyond the true rank, R^2 only creeps up by fitting noise (about (m + n) / (m n) of it per rank).
    assert 0 < r2k[5] - r2k[2] < 4 * 3 * (m + n) / (m * n) * sigma**2 / total + 1e-3
    # Noise adds about sigma^2 (m + n) to each signal component's squared singular value.
    assert sv[:3] == pytest.approx(np.sqrt(np.array(s) ** 2 + sigma**2 * (m + n)), rel=0.005)
    assert np.all(np.diff(r2k) >= -1e-12)


def test_rank1_multiplicative_and_additive_fits_recover_parameters():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 3.0, 20)
    b = rng.lognormal(0, 0.4, 300)
    Z = np.outer(a, b)
    fa, fb = rank1_factors(Z)
    assert r2(Z, np.outer(fa, fb)) == pytest.approx(1.0, abs=1e-12)
    assert np.sqrt(np.mean(fb**2)) == pytest.approx(1.0)
    scale = np.sqrt(np.mean(b**2))
    assert fb == pytest.approx(b / scale, rel=1e-8)  # susceptibility up to the unit-RMS normalization
    assert fa == pytest.approx(a * scale, rel=1e-8)

    mu, bi, bj = 0.3, rng.normal(0, 0.2, 20), rng.normal(0, 0.1, 300)
    Z = mu + bi[:, None] + bj[None, :]
    m_hat, bi_hat, bj_hat = fit_additive(Z)
    assert r2(Z, m_hat + bi_hat[:, None] + bj_hat[None, :]) == pytest.approx(1.0, abs=1e-12)
    assert bi_hat - bi_hat.mean() == pytest.approx(bi - bi.mean(), abs=1e-12)
    # Missing entries: lsqr recovers the same predictions from the observed ones.
    holes = Z.copy()
    holes[rng.random(Z.shape) < 0.3] = np.nan
    m2, bi2, bj2 = fit_additive(holes)
    assert m2 + bi2[:, None] + bj2[None, :] == pytest.approx(Z, abs=1e-6)


def test_reveal_never_repeats_and_is_reproducible():
    for seed in range(50):
        for task in range(5):
            cols = reveal(200, 30, seed, task)
            assert len(cols) == 30 and len(np.unique(cols)) == 30
            assert cols.min() >= 0 and cols.max() < 200
            assert np.array_equal(cols, reveal(200, 30, seed, task))
    assert not np.array_equal(reveal(200, 30, 0, 0), reveal(200, 30, 1, 0))
    cols = reveal(31, 30, 3, 2)  # nearly all columns: still distinct
    assert len(np.unique(cols)) == 30
    with pytest.raises(ValueError):
        reveal(30, 30, 0, 0)


def multiplicative_matrix(m=60, n=2000, rank=3, sigma=0.05, seed=0):
    """Forgetting-like: a bias, task strengths times example susceptibilities, plus noise."""
    rng = np.random.default_rng(seed)
    a = rng.lognormal(0, 0.5, (m, rank))
    b = rng.normal(0, 0.3, (n, rank))
    signal = 0.2 + 0.5 * a @ b.T + rng.normal(0, 0.1, (m, 1)) + rng.normal(0, 0.1, (1, n))
    return signal, signal + rng.normal(0, sigma, (m, n))


def heldout_rmse(Z, name, k=30, tasks=range(8), seeds=range(3), **kw):
    errs = []
    n = Z.shape[1]
    for i in tasks:
        p = make_predictor(name, **kw).fit(np.delete(Z, i, axis=0))
        for s in seeds:
            cols = reveal(n, k, s, i)
            hidden = np.setdiff1d(np.arange(n), cols)
            errs.append(np.sqrt(np.mean((p.fold_in(cols, Z[i, cols])[hidden] - Z[i, hidden]) ** 2)))
    return float(np.mean(errs))


def test_completion_reaches_noise_floor_and_beats_baselines():
    sigma = 0.05
    _, Z = multiplicative_matrix(sigma=sigma)
    rmse = {name: heldout_rmse(Z, name) for name in ("row_mean", "col_mean", "additive", "knn", "mf")}
    # The truth is rank 3 + biases (< rank 5 + biases): from 30 entries MF's fold-in estimates 6
    # parameters, so its error on hidden entries is about sigma * sqrt(1 + 6/30) ~ 1.1 sigma.
    assert sigma <= rmse["mf"] < 1.3 * sigma
    assert rmse["mf"] < 0.3 * rmse["row_mean"]  # a clear margin over the row-mean baseline
    assert rmse["mf"] < rmse["knn"] < rmse["additive"] < rmse["col_mean"]
    assert rmse["additive"] < rmse["row_mean"]


def test_completion_with_missing_training_entries():
    sigma = 0.05
    _, Z = multiplicative_matrix(m=40, n=800, sigma=sigma, seed=3)
    holes = Z.copy()
    holes[np.random.default_rng(0).random(Z.shape) < 0.2] = np.nan
    mf = BiasedMF(rank=5).fit(holes[1:])
    cols = reveal(800, 30, 0, 0)
    hidden = np.setdiff1d(np.arange(800), cols)
    err = np.sqrt(np.mean((mf.fold_in(cols, Z[0, cols])[hidden] - Z[0, hidden]) ** 2))
    assert err < 1.5 * sigma
    # The training fit reproduces observed and held-back entries alike (low rank, not memorization).
    fit = mf.predict_train()
    miss = np.isnan(holes[1:])
    assert np.sqrt(np.mean((fit[miss] - Z[1:][miss]) ** 2)) < 1.3 * sigma


def test_row_metrics_by_hand():
    true = np.array([0.5, 0.4, -0.1, 0.2, -0.3, 0.1, 0.0, -0.2, 0.3, -0.4])
    pred = np.array([0.3, -0.1, 0.2, 0.25, -0.2, 0.15, 0.05, -0.3, 0.1, -0.1])
    m = row_metrics(pred, true, top_fraction=0.2)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)))
    assert m["pearson"] == pytest.approx(np.corrcoef(pred, true)[0, 1])
    # forgotten: true > 0 at {0,1,3,5,8}; pred > 0 at {0,2,3,5,6,8}: TP = {0,3,5,8}
    assert m["forgotten_precision"] == pytest.approx(4 / 6)
    assert m["forgotten_recall"] == pytest.approx(4 / 5)
    assert m["forgotten_f1"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    # top-2: true {0, 1}; predicted {0, 3}
    assert m["topk_precision"] == pytest.approx(0.5) and m["topk_recall"] == pytest.approx(0.5)
    const = row_metrics(np.full(10, 0.1), true)
    assert np.isnan(const["pearson"])
    assert const["forgotten_recall"] == 1.0 and const["forgotten_precision"] == pytest.approx(0.5)


def test_protocol_offline_and_online():
    sigma = 0.05
    signal, Z = multiplicative_matrix(m=30, n=1000, sigma=sigma, seed=5)
    rng = np.random.default_rng(9)
    # Early forgetting: a per-example fraction of the final signal (plus its own noise).
    frac = rng.uniform(0.2, 0.4, 1000)
    early = signal * frac[None, :] + rng.normal(0, sigma / 2, Z.shape)
    cfg = PredictConfig(revealed=30, seeds=[0, 1, 2], folds=5)
    off = evaluate_predictors(Z, None, cfg)
    on = evaluate_predictors(Z, early, cfg)
    for res in (off, on):
        assert set(res) == {"row_mean", "col_mean", "additive", "knn", "mf"}
        for r in res.values():
            assert len(r["per_seed"]["rmse"]) == 3
            assert r["mean"]["rmse"] == pytest.approx(np.mean(r["per_seed"]["rmse"]))
            assert r["std"]["rmse"] == pytest.approx(np.std(r["per_seed"]["rmse"]))
    assert off["mf"]["mean"]["rmse"] < 1.3 * sigma
    assert off["mf"]["mean"]["pearson"] > 0.9
    assert off["mf"]["mean"]["forgotten_f1"] > 0.9
    # Online: the row mean of early entries underestimates final forgetting; MF learns the
    # early -> final map from the training tasks and stays far better than the row mean.
    assert on["mf"]["mean"]["rmse"] < 0.5 * on["row_mean"]["mean"]["rmse"]
    assert on["mf"]["mean"]["rmse"] < on["additive"]["mean"]["rmse"]
    assert np.isnan(off["row_mean"]["mean"]["pearson"])


def test_folds_cover_every_task_once():
    for m, f in [(10, 0), (10, 3), (7, 7), (5, 9)]:
        folds = folds_of(m, f)
        allidx = np.concatenate(folds)
        assert sorted(allidx.tolist()) == list(range(m))
        assert len(folds) == (m if f == 0 else min(f, m))


def test_predict_writes_reports_and_skips_online_without_intermediate(tmp_path):
    from remix_ds.forgetting.predict import predict
    from remix_ds.forgetting.store import Matrix

    _, Z = multiplicative_matrix(m=12, n=300, seed=2)
    mat = Matrix(z=Z, task_names=[f"t{i}" for i in range(12)], example_ids=[f"e{j}" for j in range(300)],
                 done=np.ones(12, dtype=bool), steps=100)
    cfg = PredictConfig(seeds=[0, 1], methods=["row_mean", "col_mean", "additive", "knn", "mf", "random"])
    res = predict(mat, cfg, tmp_path, log=lambda *a: None)
    assert res["variants"]["online"]["methods"] == {}
    off = res["variants"]["offline"]["methods"]
    assert off["mf"]["mean"]["rmse"] < off["row_mean"]["mean"]["rmse"]
    text = (tmp_path / "predict.md").read_text()
    assert "| mf |" in text and "skipped" in text
    assert "| published | additive |" in text and "| ours | mf |" in text and "Per-row averages" in text
    assert json.loads((tmp_path / "predict.json").read_text())["folds"] == 12
