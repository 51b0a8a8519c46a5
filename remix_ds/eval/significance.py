"""Holm's step-down correction of a family of p-values (Holm 1979; strong family-wise error control).

One implementation for the grid's report (`experiments.stats`) and the forgetting comparisons
(`forgetting.stats`), which may not import each other (the layers contract).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order.

    With the m p-values sorted ascending, p_(k) becomes max over j <= k of min(1, (m - j + 1) p_(j));
    reject hypothesis k at level alpha when its adjusted value is <= alpha. NaN p-values are left
    out of the family (m counts the others) and stay NaN.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return [float(v) for v in out]
