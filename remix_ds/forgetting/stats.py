"""Paired comparisons of methods over (task, seed) pairs, Holm-corrected across the family.

``holm(p)``: Holm's step-down adjusted p-values: sort ascending p_(1) <= ... <= p_(m); adjusted
p_(i) = max_{l <= i} min(1, (m - l + 1) p_(l)); a difference is significant at level alpha when
its adjusted p <= alpha (controls the family-wise error rate; NaN p-values are left out of the
family and stay NaN).

``compare(values, reference, alpha, lower_is_better)``: for every other method, the paired
differences (method - reference) over the (task, seed) pairs both have, the two-sided Wilcoxon
signed-rank p (``scipy.stats.wilcoxon``) and paired t-test p (``scipy.stats.ttest_rel``), and
the Holm-adjusted Wilcoxon p across the compared methods.

``holm`` is `remix_ds.eval.significance.holm`, the one the grid's report uses too.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from remix_ds.eval.significance import holm


def _pvalues(diff: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if len(diff) < 2 or np.all(diff == 0):
        return float("nan"), float("nan")
    try:
        w = float(stats.wilcoxon(diff).pvalue)
    except ValueError:
        w = float("nan")
    t = float(stats.ttest_rel(a, b).pvalue) if diff.std() > 0 else float("nan")
    return w, t


def compare(values: dict[str, dict[tuple, float]], reference: str, alpha: float = 0.05,
            lower_is_better: bool = True) -> list[dict]:
    """Rows {method, reference, n_pairs, mean_diff, reference_better_fraction, wilcoxon_p, ttest_p,
    holm_p, significant} for every method other than ``reference`` (see the module docstring).
    ``values[method][(task, seed)]`` is the metric of one pair; NaN values are dropped pairwise."""
    ref = values[reference]
    rows = []
    for name, v in values.items():
        if name == reference:
            continue
        keys = sorted(k for k in v if k in ref and np.isfinite(v[k]) and np.isfinite(ref[k]))
        a = np.array([v[k] for k in keys])
        b = np.array([ref[k] for k in keys])
        diff = a - b
        w, t = _pvalues(diff, a, b)
        better = (diff > 0) if lower_is_better else (diff < 0)
        rows.append({"method": name, "reference": reference, "n_pairs": len(keys),
                     "mean_diff": float(diff.mean()) if len(keys) else float("nan"),
                     "reference_better_fraction": float(better.mean()) if len(keys) else float("nan"),
                     "wilcoxon_p": w, "ttest_p": t})
    for row, adj in zip(rows, holm([r["wilcoxon_p"] for r in rows])):
        row["holm_p"] = float(adj)
        row["significant"] = bool(adj <= alpha) if np.isfinite(adj) else False
    return rows
