"""Learning-rate schedules (transformers' own), sized from the run config."""

from __future__ import annotations

import math
import warnings

from remix_ds.config import OptimConfig


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    return math.ceil(cfg.warmup_ratio * total_steps)


def make_scheduler(cfg: OptimConfig, total_steps: int):
    """A callable optimizer -> LambdaLR, as `deepspeed.initialize(lr_scheduler=...)` accepts.

    Same curves as Hugging Face Trainer's `cosine` / `constant_with_warmup` (linear warmup from 0),
    so runs compare with the REMIX reference, which trains with Trainer.
    """
    from transformers.optimization import (
        get_constant_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
    )

    warmup = warmup_steps(cfg, total_steps)

    def build(optimizer):
        if cfg.schedule == "constant":
            return get_constant_schedule_with_warmup(optimizer, warmup)
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, warmup, total_steps, min_lr_rate=cfg.min_lr_ratio
        )

    return build


def apply_to_resumed(optimizer, scheduler, params: dict, cfg: OptimConfig, total_steps: int):
    """The run's optimizer hyperparameters and LR schedule on an optimizer and scheduler that a
    checkpoint restored; returns the scheduler to use, at the checkpoint's step.

    NOTE: a checkpoint restores the optimizer's param groups (lr, betas, eps, weight_decay) and the
    scheduler's base rates and step, so a resume that is allowed to change `optim.*`
    (`train.allow_config_change`) would silently keep training with the checkpoint's values. This sets
    the groups to ``params`` (the engine's `optimizer.params`: the run's config, or the DeepSpeed
    JSON's own values) and rebuilds the schedule from ``cfg`` and ``total_steps`` (a changed
    `train.max_steps`/`epochs` moves its horizon) at the restored step. The moments (Adam's m and v)
    are the checkpoint's: they are the state of the training so far, not settings.
    """
    step = scheduler.last_epoch
    for group in optimizer.param_groups:
        group.update(lr=params["lr"], initial_lr=params["lr"], betas=tuple(params["betas"]), eps=params["eps"],
                     weight_decay=params["weight_decay"])
    fresh = make_scheduler(cfg, total_steps)(optimizer)  # at step 0; base rates = the groups' initial_lr
    fresh.last_epoch = step - 1
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose here
        warnings.simplefilter("ignore", UserWarning)
        fresh.step()  # the rate of `step`, as if the schedule had run from the start
    return fresh
