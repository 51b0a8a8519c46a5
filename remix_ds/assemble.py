"""The trainer recipe, written once: what every entry point that trains (``remix-ds train``, a grid
stage, a forgetting measurement, the baselines benchmark) builds before `Trainer.fit`."""

from __future__ import annotations

from remix_ds.baselines import build_regularizers
from remix_ds.config import RunConfig
from remix_ds.engine.trainer import Trainer
from remix_ds.eval.hook import build_eval_hooks
from remix_ds.eval.surprise import prepare_surprise_mask


def build_trainer(cfg: RunConfig, hooks=None, *, log=print) -> Trainer:
    """A `Trainer` for `cfg`: first the surprise masks (data.loss_mode=surprise; computed once with the
    base model, before the engine exists, and set on `cfg.data`), then the trainer with `hooks` as its
    eval hooks (None: the ones `cfg.eval` asks for) and the regularizers `cfg.regularize` asks for."""
    prepare_surprise_mask(cfg, log=log)
    eval_hooks = build_eval_hooks(cfg) if hooks is None else list(hooks)
    return Trainer(cfg, eval_hooks=eval_hooks, regularizers=build_regularizers(cfg))
