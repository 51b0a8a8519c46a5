"""Continual-learning baselines and factoid curation.

- ``ewc``: elastic weight consolidation on ZeRO-3 partitions (Fisher + anchor stored per name).
- ``kl``: KL to the frozen starting model, held as a second ZeRO-3 inference engine.
- ``build_regularizers(cfg)`` (here): the regularizers ``cfg.regularize`` asks for, to pass as
  ``Trainer(cfg, regularizers=...)`` (the base class and the event order: ``remix_ds.engine.hooks``).
- ``filter_known``: ``remix-ds filter-known``, split candidate factoids into known / yet to learn.
- ``strategies``: grid strategy specs (``{"ewc": {...}}``, ``{"kl": {...}}``) -> config overrides.

Objective of a stage step with both on (all terms per token, the units of the logged ``loss``)::

    sum(NLL over supervised tokens) / N  +  lam/2 sum_i F_i (theta_i - theta*_i)^2  +  beta * mean_t KL_t
"""

from __future__ import annotations

from remix_ds.engine.hooks import Regularizer


def build_regularizers(cfg) -> list[Regularizer]:
    """The regularizers `cfg.regularize` asks for (not set up yet: the Trainer calls `setup`)."""
    # NOTE: imported here, not at the top: remix_ds.config imports remix_ds.baselines.config, which
    # runs this file, and the regularizers need torch, the engine and the evaluator.
    from remix_ds.baselines.ewc import EWCRegularizer
    from remix_ds.baselines.kl import KLRegularizer

    out: list[Regularizer] = []
    if cfg.regularize.ewc.lam > 0:
        out.append(EWCRegularizer(cfg.regularize.ewc))
    if cfg.regularize.kl.beta > 0:
        out.append(KLRegularizer(cfg.regularize.kl))
    return out
