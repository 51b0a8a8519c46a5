"""Matrix completion for forgetting matrices: fit on the training tasks' rows, then fold in a
held-out task from a few revealed entries and predict the rest of its row.

Every predictor has ``fit(Z)`` (Z: (T, C) training rows, NaN = missing) and
``fold_in(cols, values) -> (C,)`` (the held-out row predicted from ``values`` observed at
``cols``). A held-out row never changes the fitted column parameters (the standard fold-in of a
new user in collaborative filtering); with T training rows observing every column, one row of
k << C entries would barely move them anyway.

- ``row_mean``: the mean of the revealed entries, for every column.
- ``col_mean``: each column's mean over the training rows.
- ``additive``: z_ij ~ mu + b_i + b_j, least squares (closed form on a complete matrix, else
  ``scipy.sparse.linalg.lsqr``); fold-in b_i = mean revealed residual.
- ``knn``: additive + the residual of the K training tasks whose residuals are most similar
  (cosine on the revealed columns), similarity-weighted and rescaled by the least-squares factor
  on the revealed entries (forgetting is close to multiplicative, so neighbour residuals have the
  right shape but another strength).
- ``mf``: biased matrix factorization z_ij ~ mu + b_i + c_j + u_i . v_j (rank r), fitted by
  alternating ridge least squares: each half-step solves every column's (or row's) normal
  equations in closed form, batched with ``np.linalg.solve``; initialized from the truncated SVD
  of the additive residual. Fold-in is the posterior mean of (b_i, u_i) under a Gaussian prior
  fitted to the training rows (their mean and covariance) and the training residual variance,
  solved with ``np.linalg.lstsq``; so 30 entries give a well-posed estimate whatever the scale of
  the factors.
- ``mf_refit``: the published procedure: a fresh biased MF fitted on the training rows plus the
  partial test row, per test row (reported next to ``mf``'s fold-in).
- ``random``: draws from the revealed values (the chance baseline).
- ``lmf`` / ``lmf_additive``: logistic MF / logistic additive for binary (EM-drop) matrices.
- ``SimilarityPredictor``: a task-example similarity (embedding cosine, representation dot
  product, gradient similarity) calibrated on the training rows (forgetting/similarity.py).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import lsqr


def _observed(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = ~np.isnan(Z)
    return mask, np.where(mask, Z, 0.0)


def fit_additive(Z: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares mu, row biases (T,), column biases (C,) of z_ij ~ mu + b_i + b_j.

    The model is unidentified up to constants moved between mu and the biases; we return the
    solution with zero-mean biases over the observed rows/columns (complete matrix) or lsqr's
    minimum-norm one (missing entries); predictions are the same.
    """
    mask, _ = _observed(Z)
    t, c = Z.shape
    if mask.all():
        mu = float(Z.mean())
        return mu, Z.mean(1) - mu, Z.mean(0) - mu
    rows, cols = np.nonzero(mask)
    n = len(rows)
    if n == 0:
        raise ValueError("fit_additive: no observed entry")
    # Design: [1 | one-hot row | one-hot column] for every observed entry.
    data = np.ones(3 * n)
    r_idx = np.concatenate([np.arange(n)] * 3)
    c_idx = np.concatenate([np.zeros(n, dtype=np.int64), 1 + rows, 1 + t + cols])
    A = coo_matrix((data, (r_idx, c_idx)), shape=(n, 1 + t + c)).tocsr()
    y = Z[rows, cols]
    mu0 = float(y.mean())
    sol = lsqr(A, y - mu0, atol=1e-10, btol=1e-10, iter_lim=10 * (1 + t + c))[0]
    return mu0 + float(sol[0]), sol[1 : 1 + t], sol[1 + t :]


class RowMean:
    name = "row_mean"

    def fit(self, Z: np.ndarray) -> "RowMean":
        self.n_cols = Z.shape[1]
        return self

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.full(self.n_cols, float(np.mean(values)))


class ColMean:
    name = "col_mean"

    def fit(self, Z: np.ndarray) -> "ColMean":
        mask, filled = _observed(Z)
        count = mask.sum(0)
        glob = filled.sum() / max(mask.sum(), 1)
        self.col = np.where(count > 0, filled.sum(0) / np.maximum(count, 1), glob)
        return self

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        return self.col.copy()


class Additive:
    name = "additive"

    def fit(self, Z: np.ndarray) -> "Additive":
        self.mu, self.row_b, self.col_b = fit_additive(Z)
        return self

    def row_bias(self, cols: np.ndarray, values: np.ndarray) -> float:
        return float(np.mean(values - self.mu - self.col_b[cols]))

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        return self.mu + self.row_bias(cols, values) + self.col_b


class TaskKNN(Additive):
    name = "knn"

    def __init__(self, k: int = 5, max_scale: float = 10.0):
        self.k, self.max_scale = k, max_scale

    def fit(self, Z: np.ndarray) -> "TaskKNN":
        super().fit(Z)
        resid = Z - (self.mu + self.row_b[:, None] + self.col_b[None, :])
        self.resid = np.where(np.isnan(resid), 0.0, resid)  # (T, C); missing residual = additive guess
        return self

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        b_i = self.row_bias(cols, values)
        base = self.mu + b_i + self.col_b
        r = values - base[cols]  # (k,) revealed residual of the held-out task
        nb = self.resid[:, cols]  # (T, k)
        denom = np.linalg.norm(nb, axis=1) * np.linalg.norm(r)
        sim = np.where(denom > 0, nb @ r / np.where(denom > 0, denom, 1.0), 0.0)
        top = np.argsort(-sim)[: self.k]
        top = top[sim[top] > 0]
        if len(top) == 0:
            return base
        shape = sim[top] @ self.resid[top] / sim[top].sum()  # (C,)
        s = shape[cols]
        scale = float(np.clip(s @ r / (s @ s), 0.0, self.max_scale)) if s @ s > 0 else 0.0
        return base + scale * shape


class BiasedMF:
    """z_ij ~ mu + b_i + c_j + u_i . v_j, fitted by alternating ridge least squares."""

    name = "mf"

    def __init__(self, rank: int = 5, reg: float = 1.0, iters: int = 20, bias_reg_ratio: float = 0.01):
        self.rank, self.reg, self.iters, self.bias_reg = rank, reg, iters, reg * bias_reg_ratio

    @staticmethod
    def _solve_side(mask: np.ndarray, Y: np.ndarray, X: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """Ridge solutions theta_j = argmin sum_{i obs} (Y_ij - X_i . theta)^2 + theta' diag(lam) theta
        for every column j of Y at once: (C, p). mask, Y: (T, C); X: (T, p)."""
        p = X.shape[1]
        outer = (X[:, :, None] * X[:, None, :]).reshape(len(X), p * p)  # (T, p*p)
        A = (mask.T.astype(np.float64) @ outer).reshape(-1, p, p) + np.diag(lam)  # (C, p, p)
        rhs = Y.T @ X  # (C, p); Y is 0 where missing
        return np.linalg.solve(A, rhs[..., None])[..., 0]

    def fit(self, Z: np.ndarray) -> "BiasedMF":
        mask, _ = _observed(Z)
        t, c = Z.shape
        r = min(self.rank, t, c)
        mu, b, cb = fit_additive(Z)
        resid = np.where(mask, Z - mu - b[:, None] - cb[None, :], 0.0)
        u_s, s, vt = np.linalg.svd(resid, full_matrices=False)
        root = np.sqrt(s[:r])
        U, V = u_s[:, :r] * root, vt[:r].T * root  # (T, r), (C, r)
        lam = np.array([self.bias_reg] + [self.reg] * r)
        for _ in range(self.iters):
            Y = np.where(mask, Z - mu - b[:, None], 0.0)
            sol = self._solve_side(mask, Y, np.hstack([np.ones((t, 1)), U]), lam)  # columns: (c_j, v_j)
            cb, V = sol[:, 0], sol[:, 1:]
            Y = np.where(mask, Z - mu - cb[None, :], 0.0).T
            sol = self._solve_side(mask.T, Y, np.hstack([np.ones((c, 1)), V]), lam)  # rows: (b_i, u_i)
            b, U = sol[:, 0], sol[:, 1:]
        self.mu, self.row_b, self.col_b, self.U, self.V = mu, b, cb, U, V
        fit = mu + b[:, None] + cb[None, :] + U @ V.T
        self.noise_var = float(np.mean((Z[mask] - fit[mask]) ** 2)) + 1e-12
        # Prior of a new row's (b_i, u_i): the training rows' mean and covariance (+ a small ridge).
        theta = np.hstack([b[:, None], U])
        self.prior_mean = theta.mean(0)
        cov = np.cov(theta, rowvar=False) if t > 1 else np.eye(r + 1)
        cov = np.atleast_2d(cov)
        self.prior_cov = cov + 1e-6 * (np.trace(cov) / (r + 1) + 1e-12) * np.eye(r + 1)
        return self

    def predict_train(self) -> np.ndarray:
        return self.mu + self.row_b[:, None] + self.col_b[None, :] + self.U @ self.V.T

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        X = np.hstack([np.ones((len(cols), 1)), self.V[cols]])  # (k, r+1)
        y = values - self.mu - self.col_b[cols]
        # Posterior mean = least squares on the whitened data stacked on the whitened prior.
        L = np.linalg.cholesky(np.linalg.inv(self.prior_cov))  # prior precision = L L'
        sigma = np.sqrt(self.noise_var)
        A = np.vstack([X / sigma, L.T])
        rhs = np.concatenate([y / sigma, L.T @ self.prior_mean])
        theta = np.linalg.lstsq(A, rhs, rcond=None)[0]
        return self.mu + theta[0] + self.col_b + self.V @ theta[1:]


class RandomPredictor:
    """The chance baseline: every entry is a draw (with replacement) from the revealed values, so
    it has the row's scale and rate of forgetting but no information on which entry is which."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng([seed, 0xDA7E])

    def fit(self, Z: np.ndarray) -> "RandomPredictor":
        self.n_cols = Z.shape[1]
        return self

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        return self.rng.choice(np.asarray(values, dtype=np.float64), size=self.n_cols, replace=True)


class RefitMF:
    """The published procedure: for every test row, fit a fresh biased MF on the training rows plus
    the partial row (its revealed entries; the rest missing) and read the row off the fit.
    Same model and settings as ``BiasedMF``; the cost is one full fit per (test row, seed)."""

    name = "mf_refit"

    def __init__(self, rank: int = 5, reg: float = 1.0, iters: int = 20):
        self.rank, self.reg, self.iters = rank, reg, iters

    def fit(self, Z: np.ndarray) -> "RefitMF":
        self.Z = np.asarray(Z, dtype=np.float64)
        return self

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        row = np.full((1, self.Z.shape[1]), np.nan)
        row[0, cols] = values
        mf = BiasedMF(self.rank, self.reg, self.iters).fit(np.vstack([self.Z, row]))
        return mf.predict_train()[-1]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


class LogisticMF:
    """Binary matrices (1 = forgotten): P(z_ij = 1) = sigmoid(mu + b_i + c_j + u_i . v_j) (rank r;
    rank 0 is the logistic additive model), fitted by maximum likelihood with an L2 penalty ``reg``
    on the factors (``reg * bias_reg_ratio`` on the biases) using ``scipy.optimize`` L-BFGS with the
    analytic gradient. Fold-in: the MAP (b_i, u_i) of the revealed entries under a Gaussian prior
    fitted to the training rows (Newton's method). ``fold_in`` returns probabilities."""

    def __init__(self, rank: int = 5, reg: float = 0.1, iters: int = 500, bias_reg_ratio: float = 0.01, seed: int = 0):
        self.rank, self.reg, self.iters, self.bias_reg, self.seed = rank, reg, iters, reg * bias_reg_ratio, seed
        self.name = "lmf" if rank > 0 else "lmf_additive"

    def fit(self, Z: np.ndarray) -> "LogisticMF":
        from scipy.optimize import minimize

        mask, Y = _observed(Z)
        t, c = Z.shape
        r = min(self.rank, t, c)
        w = mask.astype(np.float64)
        rate = float(np.clip(Y[mask].mean(), 1e-3, 1 - 1e-3)) if mask.any() else 0.5
        rng = np.random.default_rng([self.seed, 0x10F])
        x0 = np.concatenate([[np.log(rate / (1 - rate))], np.zeros(t + c), rng.normal(0, 0.1, (t + c) * r)])

        def unpack(x):
            return x[0], x[1 : 1 + t], x[1 + t : 1 + t + c], x[1 + t + c :].reshape(t + c, r)

        def objective(x):
            mu, b, cb, F = unpack(x)
            U, V = F[:t], F[t:]
            logit = mu + b[:, None] + cb[None, :] + U @ V.T  # (T, C)
            nll = np.sum(w * (np.logaddexp(0.0, logit) - Y * logit))
            G = w * (_sigmoid(logit) - Y)  # d nll / d logit
            pen = 0.5 * self.reg * np.sum(F**2) + 0.5 * self.bias_reg * (b @ b + cb @ cb)
            grad = np.concatenate([[G.sum()], G.sum(1) + self.bias_reg * b, G.sum(0) + self.bias_reg * cb,
                                   (np.vstack([G @ V, G.T @ U]) + self.reg * F).ravel()])
            return nll + pen, grad

        res = minimize(objective, x0, jac=True, method="L-BFGS-B", options={"maxiter": self.iters})
        mu, b, cb, F = unpack(res.x)
        self.mu, self.row_b, self.col_b, self.U, self.V = float(mu), b, cb, F[:t], F[t:]
        theta = np.hstack([b[:, None], self.U])  # (T, r+1)
        self.prior_mean = theta.mean(0)
        cov = np.atleast_2d(np.cov(theta, rowvar=False)) if t > 1 else np.eye(r + 1)
        cov = cov + 1e-3 * (np.trace(cov) / (r + 1) + 1e-6) * np.eye(r + 1)
        self.prior_prec = np.linalg.inv(cov)
        return self

    def predict_train(self) -> np.ndarray:
        return _sigmoid(self.mu + self.row_b[:, None] + self.col_b[None, :] + self.U @ self.V.T)

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        X = np.hstack([np.ones((len(cols), 1)), self.V[cols]])  # (k, r+1)
        off = self.mu + self.col_b[cols]
        y = np.asarray(values, dtype=np.float64)
        theta = self.prior_mean.copy()
        for _ in range(50):  # Newton on the log posterior (concave: one optimum)
            p = _sigmoid(off + X @ theta)
            grad = X.T @ (p - y) + self.prior_prec @ (theta - self.prior_mean)
            hess = (X * (p * (1 - p))[:, None]).T @ X + self.prior_prec
            step = np.linalg.solve(hess, grad)
            theta -= step
            if np.max(np.abs(step)) < 1e-10:
                break
        return _sigmoid(self.mu + theta[0] + self.col_b + self.V @ theta[1:])


class SimilarityPredictor:
    """A task-example similarity score S (M, C) as a predictor (embedding cosine, representation dot
    product, gradient similarity): z_ij ~ alpha + beta s_ij + b_i, with (alpha, beta) least squares
    over the training rows' observed entries and the test row's offset b_i the mean revealed
    residual (the same fold-in as ``additive``). The ranking within a row is the similarity's
    (reversed when beta < 0), so its AUROC is that of the similarity itself.

    ``fit(Z, rows)``: Z the training rows, ``rows`` their indices into S; ``fold_in(cols, values,
    task)``: ``task`` the test row's index into S."""

    needs_task = True

    def __init__(self, name: str, S: np.ndarray):
        self.name, self.S = name, np.asarray(S, dtype=np.float64)

    def fit(self, Z: np.ndarray, rows: np.ndarray) -> "SimilarityPredictor":
        mask = ~np.isnan(Z)
        s, z = self.S[rows][mask], Z[mask]
        A = np.stack([np.ones_like(s), s], 1)
        self.alpha, self.beta = np.linalg.lstsq(A, z, rcond=None)[0]
        return self

    def fold_in(self, cols: np.ndarray, values: np.ndarray, task: int) -> np.ndarray:
        base = self.alpha + self.beta * self.S[task]
        return base + float(np.mean(values - base[cols]))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) cosines of the rows of a and b."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def make_predictor(name: str, rank: int = 5, reg: float = 1.0, iters: int = 20, knn: int = 5, seed: int = 0):
    """A completion predictor by name (``fit(Z)``, ``fold_in(cols, values)``). Binary matrices:
    ``lmf`` / ``lmf_additive`` (``reg`` and ``iters`` are then the logistic fit's)."""
    if name == "random":
        return RandomPredictor(seed)
    if name == "mf_refit":
        return RefitMF(rank, reg, iters)
    if name == "lmf":
        return LogisticMF(rank, reg, iters, seed=seed)
    if name == "lmf_additive":
        return LogisticMF(0, reg, iters, seed=seed)
    if name == "row_mean":
        return RowMean()
    if name == "col_mean":
        return ColMean()
    if name == "additive":
        return Additive()
    if name == "knn":
        return TaskKNN(knn)
    if name == "mf":
        return BiasedMF(rank, reg, iters)
    raise ValueError(f"unknown predictor {name!r}")


def low_rank(Z: np.ndarray, k: int) -> np.ndarray:
    """Best rank-k approximation (truncated SVD) of a complete matrix."""
    u, s, vt = np.linalg.svd(Z, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def r2(Z: np.ndarray, fit: np.ndarray) -> float:
    """R^2 = 1 - mean((Z - fit)^2) / mean((Z - mean Z)^2)."""
    total = float(np.mean((Z - Z.mean()) ** 2))
    return 1.0 - float(np.mean((Z - fit) ** 2)) / total if total > 0 else float("nan")


def rank_r2(Z: np.ndarray, max_rank: int = 10) -> tuple[np.ndarray, list[float]]:
    """(singular values, [R^2 of the rank-k truncated SVD for k = 1..min(max_rank, M, N)])."""
    u, s, vt = np.linalg.svd(Z, full_matrices=False)
    out = []
    approx = np.zeros_like(Z)
    for k in range(min(max_rank, len(s))):
        approx += s[k] * np.outer(u[:, k], vt[k])
        out.append(r2(Z, approx))
    return s, out
