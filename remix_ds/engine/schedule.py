"""Learning-rate schedules (transformers' own), sized from the run config."""

from __future__ import annotations

import math

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
