"""Metrics of one predicted forgetting row on its hidden entries.

- ``rmse``: sqrt(mean((pred - true)^2)).
- ``pearson``: NaN for a constant prediction or truth.
- ``auroc``: P(score of a forgotten entry > score of a kept one), ties counting 1/2; "forgotten"
  is true > threshold. The rank (Mann-Whitney) formula: with average ranks R over all entries,
  AUROC = (sum of R over the positives - P (P + 1) / 2) / (P x Nn); NaN when one class is empty.
- ``forgotten_precision / recall / f1``: of "forgotten" (pred > threshold vs true > threshold).
- ``topk_*``: the k = top_fraction x hidden entries with the largest truth among those forgotten
  (true set) against the k largest predictions (predicted set).

``threshold`` is 0 for NLL-change matrices (z > 0 is forgotten) and 0.5 for binary ones (the
predictors return probabilities of "forgotten").

``pooled_metrics``: the paper's (``run_matrix_completion.py`` ``compute_rmse`` /
``compute_bin_metrics``): one RMSE, F1 / precision / recall of "forgotten" and AUROC over the
hidden entries of every test row of a seed together, not averaged per row (AUROC and F1 move by
up to 0.1 between the two on the same predictions).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

METRICS = ("rmse", "pearson", "auroc", "forgotten_precision", "forgotten_recall", "forgotten_f1",
           "topk_precision", "topk_recall", "topk_f1")


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the boolean labels ``positive`` (rank formula)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64))  # average ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def prf(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    """(precision, recall, F1) of boolean predictions; 0 where undefined."""
    tp = float(np.sum(pred & true))
    p = tp / pred.sum() if pred.sum() else 0.0
    r = tp / true.sum() if true.sum() else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


POOLED = ("rmse", "f1", "precision", "recall", "auroc")


def pooled_metrics(pred: np.ndarray, true: np.ndarray, threshold: float = 0.0,
                   pred_threshold: float | None = None) -> dict[str, float]:
    """The paper's metrics over all entries of ``pred`` / ``true`` (any shapes, e.g. (test rows,
    hidden entries) or a list of rows): forgotten = true > threshold, predicted forgotten = pred >
    pred_threshold (default: threshold)."""
    pred = np.concatenate([np.ravel(np.asarray(p, dtype=np.float64)) for p in pred])
    true = np.concatenate([np.ravel(np.asarray(t, dtype=np.float64)) for t in true])
    pt = threshold if pred_threshold is None else pred_threshold
    positive = true > threshold
    p, r, f = prf(pred > pt, positive)
    return {"rmse": float(np.sqrt(np.mean((pred - true) ** 2))), "f1": float(f), "precision": float(p), "recall": float(r),
            "auroc": auroc(pred, positive)}


def row_metrics(pred: np.ndarray, true: np.ndarray, top_fraction: float = 0.1, threshold: float = 0.0) -> dict[str, float]:
    """Metrics of one predicted row on its hidden entries (see the module docstring)."""
    err = pred - true
    out = {"rmse": float(np.sqrt(np.mean(err**2)))}
    constant = np.all(pred == pred[0]) or np.all(true == true[0])
    out["pearson"] = float("nan") if constant else float(np.corrcoef(pred, true)[0, 1])
    out["auroc"] = auroc(pred, true > threshold)
    out["forgotten_precision"], out["forgotten_recall"], out["forgotten_f1"] = prf(pred > threshold, true > threshold)
    k = max(1, int(round(top_fraction * len(true))))
    true_top = np.zeros(len(true), dtype=bool)
    order = np.argsort(-true, kind="stable")[:k]
    true_top[order[true[order] > threshold]] = True
    pred_top = np.zeros(len(true), dtype=bool)
    pred_top[np.argsort(-pred, kind="stable")[:k]] = True
    out["topk_precision"], out["topk_recall"], out["topk_f1"] = prf(pred_top, true_top)
    return {k: out[k] for k in METRICS}
