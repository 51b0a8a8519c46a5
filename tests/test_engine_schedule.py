"""engine.schedule: the LR schedules, and a resumed optimizer set to a changed config's values."""

from __future__ import annotations

import pytest
import torch

from remix_ds.config import OptimConfig
from remix_ds.engine.schedule import apply_to_resumed, make_scheduler


def _run(cfg: OptimConfig, total: int, steps: int):
    """An optimizer and scheduler after `steps` steps; the rates each step used."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            weight_decay=cfg.weight_decay)
    sched = make_scheduler(cfg, total)(opt)
    used = []
    for _ in range(steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return opt, sched, used


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_a_resumed_optimizer_follows_the_changed_config_from_its_step(schedule):
    old = OptimConfig(lr=3e-3, warmup_ratio=0.2, schedule=schedule)
    new = OptimConfig(lr=1e-4, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, warmup_ratio=0.2, schedule=schedule)
    opt, sched, _ = _run(old, total=10, steps=4)  # the checkpoint's state at step 4
    params = {"lr": new.lr, "betas": list(new.betas), "eps": new.eps, "weight_decay": new.weight_decay}
    sched = apply_to_resumed(opt, sched, params, new, total_steps=20)  # max_steps changed too
    assert sched.last_epoch == 4
    group = opt.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"], group["initial_lr"]) == ((0.8, 0.9), 1e-6, 0.1, 1e-4)
    *_, fresh = _run(new, total=20, steps=8)  # a run of the new config from the start
    after = []
    for _ in range(4):
        after.append(group["lr"])
        opt.step()
        sched.step()
    assert after == pytest.approx(fresh[4:], rel=1e-12) and after[0] != pytest.approx(_run(old, 10, 5)[2][4])
