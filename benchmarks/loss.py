"""The strongest plain lm_head + cross-entropy: drop the unsupervised rows before the lm_head."""

from __future__ import annotations


def plain_indexed(hidden, weight, target):
    """Summed CE over the supervised rows only (``target != -100``), full logits for those rows."""
    from remix_ds.kernels.linear_cross_entropy import reference_linear_cross_entropy

    keep = (target != -100).nonzero().squeeze(1)
    return reference_linear_cross_entropy(hidden.index_select(0, keep), weight, target.index_select(0, keep))
