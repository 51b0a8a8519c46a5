"""The forgetting paper's completion methods (Jin & Ren, `run_matrix_completion.py`), in numpy.

Each test row is completed by a fresh fit on the training rows plus that row's revealed entries
(the rest missing), the prediction read off the fit's last row; every test row of a call shares
the revealed columns (the reference draws them once per seed). The training rows must be complete.

- ``additive``: scikit-surprise ``BaselineOnly`` with SGD baselines: z ~ mu + b_u + b_i, mu the
  mean of all observed ratings, zero-initialized biases, ``n_epochs`` (1000) passes over the ratings
  in surprise's order (row by row, columns ascending), each rating updating
  ``b_u += lr (err - reg b_u); b_i += lr (err - reg b_i)`` with the error before either update
  (lr 0.005, reg 0.02: surprise's defaults).
- ``knn_baseline``: surprise ``KNNBaseline`` (user-based, MSD similarity, k 40, min_k 1) on those
  baselines: sim(u, v) = 1 / (1 + mean squared difference over the columns both observe);
  z_ui = b_ui + sum_v sim (z_vi - b_vi) / sum_v sim over the k most similar rows v observing i
  with sim > 0 (the row itself included where it observes i: sim 1).
- ``svd``: surprise's biased ``SVD`` (5 factors, lr 0.005, reg 0, init N(0, 0.001), 1000 epochs):
  z ~ mu + b_u + b_i + p_u . q_i, factors drawn as surprise does with ``random_state=seed``
  (``RandomState(seed).normal``: all p_u, then all q_i).
- ``lgmf`` / ``lgmf_additive`` (``post_process/my_mf.py``, binary matrices): logistic W . H
  without bias terms (rank 5, init N(0, 0.005) from ``default_rng(seed)`` / ``default_rng(seed +
  1)``), or logistic a_u + b_i (init N(0, 1)); full-batch gradient ascent on the masked
  log-likelihood, eta 1e-3, L2 nu 0.1, 5000 iterations, H then W. Predictions are logits
  (forgotten: > 0).

Exactness. ``additive``, ``knn_baseline``, ``lgmf`` and ``lgmf_additive`` compute what the
reference computes: a row's pass of the baseline SGD is a first-order linear recurrence in b_u,
run with ``scipy.signal.lfilter`` (all test rows of a call at once), and the column updates of the
pass follow from it in closed form; so the result equals surprise's up to floating-point rounding.
``svd``'s row state (b_u, p_u) follows a time-varying 6-dimensional recurrence with no such closed
form, so its updates run as a wavefront: rating (row u, column j) of epoch e at step e C + u + j,
one rating per row per step, all rows at once; a rating only depends on the previous rating of its
row and the previous rating of its column, both at earlier steps, so this is surprise's sequential
result (up to rounding) in C x epochs + rows numpy steps instead of rows x C x epochs Python ones.
Its init is random in the reference (surprise's global RNG, unseeded there), so it is matched
statistically (per-row Pearson and pooled metrics; tests/test_forgetting_published.py).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

PUBLISHED = ("additive", "knn_baseline", "svd")
PUBLISHED_BINARY = ("lgmf", "lgmf_additive")
RATING_SCALE = (-100.0, 100.0)


def reference_columns(n: int, k: int, seed: int) -> np.ndarray:
    """The reference's revealed columns (``create_masked_arr``): ``default_rng(seed).choice(n, k)``
    with replacement, so duplicates leave fewer than k distinct columns; the same for every test
    row of a seed. Returns the distinct columns, sorted."""
    return np.unique(np.random.default_rng(seed).choice(np.arange(n), k))


def _stack(train: np.ndarray, test: np.ndarray, cols: np.ndarray):
    """(train rows, the test rows' revealed values at the sorted unique ``cols``, those columns)."""
    train = np.asarray(train, dtype=np.float64)
    if np.isnan(train).any():
        raise ValueError("published completion: the training rows must be complete (no NaN)")
    cols = np.unique(np.asarray(cols, dtype=np.int64))
    return train, np.asarray(test, dtype=np.float64)[:, cols], cols


def baseline_sgd(train: np.ndarray, revealed: np.ndarray, cols: np.ndarray, n_epochs: int = 1000,
                 reg: float = 0.02, lr: float = 0.005):
    """Surprise's ``baseline_sgd`` on the ratings [train rows; one partial row], for B partial rows
    at once: ``revealed`` (B, k) at ``cols`` (k,). Returns (mu (B,), b_u (B, T + 1), b_i (B, C))."""
    t, c = train.shape
    nb = revealed.shape[0]
    n = t * c + len(cols)
    mu = (train.sum() + revealed.sum(1)) / n  # (B,)
    bu = np.zeros((nb, t + 1))
    bi = np.zeros((nb, c))
    a = 1.0 - lr * (1.0 + reg)
    den = [1.0, -a]
    num = [lr]
    for _ in range(n_epochs):
        for u in range(t + 1):
            if u < t:
                r, idx = train[u][None, :], slice(None)
            else:
                r, idx = revealed, cols
            old_bi = bi[:, idx]
            x = r - mu[:, None] - old_bi  # (B, n_u): lr * x is the input of the b_u recurrence
            # b_u before step s: lfilter gives b_u after each step; shift by one, starting at b_u's value.
            zi = (a * bu[:, u])[:, None]
            after, _ = lfilter(num, den, x, axis=1, zi=zi)
            before = np.concatenate([bu[:, u : u + 1], after[:, :-1]], axis=1)
            bu[:, u] = after[:, -1]
            err = x - before
            bi[:, idx] = old_bi + lr * (err - reg * old_bi)
    return mu, bu, bi


def baseline_als(Z: np.ndarray, n_epochs: int = 100, reg_u: float = 15.0, reg_i: float = 10.0):
    """Surprise's ``baseline_als`` on a matrix (NaN = missing): per epoch every column bias
    b_i = sum_u (r - mu - b_u) / (reg_i + |U_i|), then every row bias b_u = sum_i (r - mu - b_i) /
    (reg_u + |I_u|); the paper's additive goodness of fit (``fit_utils.examine_all_fit``: 100
    epochs, surprise's default reg_u 15, reg_i 10). Returns (mu, b_u, b_i)."""
    Z = np.asarray(Z, dtype=np.float64)
    mask = ~np.isnan(Z)
    R = np.where(mask, Z, 0.0)
    mu = R.sum() / mask.sum()
    bu, bi = np.zeros(Z.shape[0]), np.zeros(Z.shape[1])
    n_i, n_u = mask.sum(0), mask.sum(1)
    for _ in range(n_epochs):
        bi = (R - mask * (mu + bu[:, None])).sum(0) / (reg_i + n_i)
        bu = (R - mask * (mu + bi[None, :])).sum(1) / (reg_u + n_u)
    return float(mu), bu, bi


def additive_als_fit(Z: np.ndarray, **options) -> np.ndarray:
    """The fitted matrix of ``baseline_als`` (clipped to the rating scale, as surprise predicts)."""
    mu, bu, bi = baseline_als(Z, **options)
    return _clip(mu + bu[:, None] + bi[None, :])


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, *RATING_SCALE)


def additive(train: np.ndarray, test: np.ndarray, cols: np.ndarray, n_epochs: int = 1000, baselines=None,
             **_) -> np.ndarray:
    """(B, C) predictions of the test rows: BaselineOnly (SGD) refit per test row (``baselines``:
    a ``baseline_sgd`` result of the same inputs, to reuse)."""
    train, revealed, cols = _stack(train, test, cols)
    mu, bu, bi = baselines or baseline_sgd(train, revealed, cols, n_epochs)
    return _clip(mu[:, None] + bu[:, -1:] + bi)


def msd_similarity(train: np.ndarray, revealed: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(B, T) MSD similarity of each partial row to every training row over the revealed columns."""
    d = revealed[:, None, :] - train[None, :, cols]  # (B, T, k)
    return 1.0 / (np.mean(d * d, axis=2) + 1.0)


def knn_baseline(train: np.ndarray, test: np.ndarray, cols: np.ndarray, n_epochs: int = 1000, k: int = 40,
                 min_k: int = 1, baselines=None, **_) -> np.ndarray:
    """(B, C) predictions of the test rows: KNNBaseline (MSD, user-based) refit per test row."""
    train, revealed, cols = _stack(train, test, cols)
    t, c = train.shape
    mu, bu, bi = baselines or baseline_sgd(train, revealed, cols, n_epochs)
    base = mu[:, None] + bu[:, -1:] + bi  # (B, C)
    sim = msd_similarity(train, revealed, cols)  # (B, T)
    resid = train[None] - (mu[:, None, None] + bu[:, :t, None] + bi[:, None, :])  # (B, T, C)
    # Neighbours of a column: the training rows (all observe it), plus the row itself where revealed.
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # heapq.nlargest keeps the first of ties
    top_sim = np.take_along_axis(sim, order, 1)  # (B, k')
    keep = top_sim > 0
    w = np.where(keep, top_sim, 0.0)
    top_resid = np.take_along_axis(resid, order[:, :, None], 1)  # (B, k', C)
    num = np.einsum("bk,bkc->bc", w, top_resid)
    den = np.broadcast_to(w.sum(1)[:, None], num.shape).copy()
    cnt = np.broadcast_to(keep.sum(1)[:, None], num.shape).copy()
    # Revealed columns: the row itself (sim 1) joins, displacing the least similar of the k if full.
    self_resid = revealed - base[:, cols]
    last = np.where(cnt[:, cols] >= k, w[:, -1][:, None] * 1.0, 0.0) if order.shape[1] >= k else 0.0
    last_resid = top_resid[:, -1, :][:, cols] if order.shape[1] >= k else 0.0
    num[:, cols] = num[:, cols] - last * last_resid + self_resid
    den[:, cols] = den[:, cols] - last + 1.0
    cnt[:, cols] = np.minimum(cnt[:, cols] + 1, k)
    num = np.where(cnt >= min_k, num, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = base + np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return _clip(est)


def svd(train: np.ndarray, test: np.ndarray, cols: np.ndarray, n_epochs: int = 1000, n_factors: int = 5,
        lr: float = 0.005, reg: float = 0.0, init_std: float = 0.001, seed: int = 0, **_) -> np.ndarray:
    """(B, C) predictions of the test rows: biased SVD refit per test row, surprise's per-rating
    updates in surprise's order (see the module docstring: run as a wavefront)."""
    train, revealed, cols = _stack(train, test, cols)
    t, c = train.shape
    nb, k = revealed.shape
    u_n = t + 1
    if u_n > c:
        raise ValueError(f"published svd: more rows ({u_n}) than columns ({c})")
    mu = (train.sum() + revealed.sum(1)) / (t * c + k)  # (B,)
    rs = np.random.RandomState(seed)
    pu0 = rs.normal(0.0, init_std, size=(u_n, n_factors))
    qi0 = rs.normal(0.0, init_std, size=(c, n_factors))
    # Row state [b_u, 1, p_u] and column state [1, b_i, q_i] of every test row's fit, so that
    # b_u + b_i + p_u . q_i is one dot product; the masks keep the constant slots constant.
    P = np.concatenate([np.zeros((nb, u_n, 1)), np.ones((nb, u_n, 1)), np.repeat(pu0[None], nb, 0)], axis=2)
    Q = np.concatenate([np.ones((nb, c, 1)), np.zeros((nb, c, 1)), np.repeat(qi0[None], nb, 0)], axis=2)
    mask_p = np.ones(n_factors + 2)
    mask_p[1] = 0.0
    mask_q = np.ones(n_factors + 2)
    mask_q[0] = 0.0
    R = np.concatenate([np.repeat(train[None], nb, 0), np.zeros((nb, 1, c))], axis=1)  # (B, U, C)
    R[:, t, cols] = revealed
    obs = np.zeros((u_n, c))
    obs[:t] = 1.0
    obs[t, cols] = 1.0
    users = np.arange(u_n)
    # Rating (u, column j) of epoch e runs at step e * C + u + j: each step touches every row once
    # and distinct columns, and every rating runs after the ratings surprise runs before it that
    # share its row or its column, so the result is surprise's sequential one. Row u's column at
    # step s is (s - u) mod C; the partial row skips its unrevealed columns (weight 0).
    J = (np.arange(c)[:, None] - users[None, :]) % c  # (C, U)
    W = obs[users[None, :], J]  # (C, U)
    Y = np.ascontiguousarray(np.moveaxis(R[:, users[None, :], J], 0, 1) - mu[None, :, None])  # (C, B, U): r - mu
    last = n_epochs * c
    decay = lr * reg
    for step in range(last + u_n - 1):
        rho = step % c
        j, w = J[rho], W[rho]
        if step < u_n or step >= last:
            e = (step - users) // c
            w = w * ((e >= 0) & (e < n_epochs))
        q = Q[:, j]  # (B, U, K)
        err = (lr * w) * (Y[rho] - np.einsum("buk,buk->bu", P, q))  # lr x error, 0 where inactive
        err = err[..., None]
        dq = err * (P * mask_q)
        if decay:
            dq -= (decay * w)[None, :, None] * (q * mask_q)
            P -= (decay * w)[None, :, None] * (P * mask_p)
        P += err * (q * mask_p)
        Q[:, j] = q + dq
    est = mu[:, None] + P[:, t, 0][:, None] + Q[..., 1] + np.einsum("bf,bcf->bc", P[:, t, 2:], Q[..., 2:])
    return _clip(est)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def lgmf(train: np.ndarray, test: np.ndarray, cols: np.ndarray, rank: int = 5, eta: float = 1e-3, nu: float = 0.1,
         max_iter: int = 5000, seed: int = 0, init_std: float = 0.005, **_) -> np.ndarray:
    """(B, C) logits of the test rows: ``my_mf.LogisticMF`` (W . H) refit per test row."""
    train, revealed, cols = _stack(train, test, cols)
    out = []
    for r in revealed:
        Y, mask = _partial(train, r, cols)
        m, n = Y.shape
        W = np.random.default_rng(seed).normal(0, init_std, (m, rank))
        H = np.random.default_rng(seed + 1).normal(0, init_std, (rank, n))
        YM = Y * mask
        for _ in range(max_iter):
            H = H + eta * (np.dot(W.T, YM - mask * _sigmoid(np.dot(W, H))) - nu * H)
            W = W + eta * (np.dot(YM - mask * _sigmoid(np.dot(W, H)), H.T) - nu * W)
        out.append(np.dot(W[-1], H))
    return np.array(out)


def lgmf_additive(train: np.ndarray, test: np.ndarray, cols: np.ndarray, eta: float = 1e-3, nu: float = 0.1,
                  max_iter: int = 5000, seed: int = 0, **_) -> np.ndarray:
    """(B, C) logits of the test rows: ``my_mf.LogisticMFAdditive`` (a_u + b_i) refit per test row."""
    train, revealed, cols = _stack(train, test, cols)
    out = []
    for r in revealed:
        Y, mask = _partial(train, r, cols)
        m, n = Y.shape
        W = np.random.default_rng(seed).normal(0, 1, m)
        H = np.random.default_rng(seed + 1).normal(0, 1, n)
        YM = Y * mask
        for _ in range(max_iter):
            H = H + eta * (np.sum(YM - mask * _sigmoid(W[:, None] + H[None, :]), 0) - nu * H)
            W = W + eta * (np.sum(YM - mask * _sigmoid(W[:, None] + H[None, :]), 1) - nu * W)
        out.append(W[-1] + H)
    return np.array(out)


def _partial(train: np.ndarray, revealed: np.ndarray, cols: np.ndarray):
    row = np.zeros(train.shape[1])
    row[cols] = revealed
    mask = np.zeros(train.shape[1])
    mask[cols] = 1.0
    return np.vstack([train, row]), np.vstack([np.ones_like(train), mask])


class Refit:
    """A published method behind the fold-in interface (``fit(Z)``, ``fold_in(cols, values)``):
    each ``fold_in`` refits on the training rows plus the revealed row; ``cache`` is for callers
    that reuse a row's prediction (the replay experiment's seed-0 predictions)."""

    def __init__(self, method: str, seed: int = 0):
        if method not in METHODS:
            raise ValueError(f"unknown published method {method!r}; one of {', '.join(METHODS)}")
        self.name, self.seed, self.cache = method, seed, {}

    def fit(self, Z: np.ndarray) -> "Refit":
        self.Z = np.asarray(Z, dtype=np.float64)
        return self

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        row = np.zeros((1, self.Z.shape[1]))
        row[0, np.asarray(cols)] = values
        return complete(self.name, self.Z, row, cols, seed=self.seed)[0]


METHODS = {"additive": additive, "knn_baseline": knn_baseline, "svd": svd, "lgmf": lgmf, "lgmf_additive": lgmf_additive}
STOCHASTIC = ("svd",)


def complete_all(methods, train: np.ndarray, test: np.ndarray, cols: np.ndarray, seed: int = 0,
                 **options) -> dict[str, np.ndarray]:
    """``complete`` for several methods at once; additive and knn_baseline share one baseline fit."""
    out = {}
    shared = None
    for m in methods:
        if m in ("additive", "knn_baseline") and "n_epochs" not in options:
            if shared is None:
                tr, revealed, cc = _stack(train, np.atleast_2d(test), cols)
                shared = baseline_sgd(tr, revealed, cc)
            out[m] = METHODS[m](train, np.atleast_2d(test), cols, baselines=shared)
        else:
            out[m] = complete(m, train, test, cols, seed=seed, **options)
    return out


def complete(method: str, train: np.ndarray, test: np.ndarray, cols: np.ndarray, seed: int = 0, **options) -> np.ndarray:
    """(B, C) predictions of ``test`` (B, C; only ``cols`` are read) by the published ``method``,
    refit per test row on ``train`` plus that row's entries at ``cols``; ``seed``: svd's factor
    init, lgmf's W / H init."""
    if method not in METHODS:
        raise ValueError(f"unknown published method {method!r}; one of {', '.join(METHODS)}")
    return METHODS[method](train, np.atleast_2d(test), cols, seed=seed, **options)
