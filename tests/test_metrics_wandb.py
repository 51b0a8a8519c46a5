"""metrics.wandb: a stage's training metrics in an offline Weights & Biases run (read back from its files)."""

import json
import math

import pytest

from helpers import wandb_offline_run
from remix_ds import configtools
from remix_ds.config import RunConfig, WandbConfig, config_drift
from remix_ds.configtools import ConfigError
from remix_ds.engine.metrics import MetricsWriter


def test_metrics_writer_logs_to_an_offline_wandb_run(tmp_path):
    out = tmp_path / "stage1"
    w = MetricsWriter(out, enabled=True, tensorboard=False, wandb=WandbConfig(project="p", group="g", mode="offline", tags=["t"]),
                      run_config={"optim": {"lr": 0.003}})
    w.log(1, {"loss": 2.5, "lr": 1e-3, "eval/kvr/em": math.nan, "note": "x"})
    w.log(2, {"loss": 1.25, "lr": 2e-3})
    w.close()
    run = wandb_offline_run(out)
    assert (run["group"], run["name"], run["job_type"], run["tags"]) == ("g", "stage1", "train", ["t"])
    assert run["config"]["optim"] == {"lr": 0.003}
    steps = {h["_step"]: h for h in run["history"]}
    assert steps[1]["loss"] == 2.5 and steps[2]["loss"] == 1.25 and steps[2]["lr"] == 2e-3
    assert run["summary"]["loss"] == 1.25
    # the JSONL sink is unchanged
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [2.5, 1.25]


def test_wandb_config_parses_and_is_resume_neutral():
    cfg = configtools.from_dict(RunConfig, {"metrics": {"wandb": {"project": "remix", "mode": "offline"}}})
    assert cfg.metrics.wandb == WandbConfig(project="remix", mode="offline")
    assert RunConfig().metrics.wandb is None
    before, after = configtools.to_dict(RunConfig()), configtools.to_dict(cfg)
    assert config_drift(before, after) == {}  # where metrics go never changes the trajectory
    with pytest.raises(ConfigError, match="metrics.wandb.*sometimes"):
        configtools.from_dict(RunConfig, {"metrics": {"wandb": {"mode": "sometimes"}}})


def test_missing_wandb_is_one_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = configtools.from_dict(RunConfig, {"metrics": {"wandb": {"mode": "offline"}}})
    with pytest.raises(ConfigError, match=r"pip install 'remix-ds\[wandb\]'"):
        cfg.validate(1)
    RunConfig().validate(1)  # without metrics.wandb nothing looks for the package
