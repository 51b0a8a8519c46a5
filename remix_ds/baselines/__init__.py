"""Continual-learning baselines and factoid curation.

- ``ewc``: elastic weight consolidation on ZeRO-3 partitions (Fisher + anchor stored per name).
- ``kl``: KL to the frozen starting model, held as a second ZeRO-3 inference engine.
- ``regularizer``: the trainer's extension point (``Trainer(cfg, regularizers=[...])``).
- ``filter_known``: ``remix-ds filter-known``, split candidate factoids into known / yet to learn.
- ``strategies``: grid strategy specs (``{"ewc": {...}}``, ``{"kl": {...}}``) -> config overrides.

Objective of a stage step with both on (all terms per token, the units of the logged ``loss``)::

    sum(NLL over supervised tokens) / N  +  lam/2 sum_i F_i (theta_i - theta*_i)^2  +  beta * mean_t KL_t
"""
