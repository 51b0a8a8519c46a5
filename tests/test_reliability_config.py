"""Config faults (issue 15, items 3 (CLI part) and 4): NaN/inf, duplicate keys, drift on resume,
a global batch the launcher's world size does not divide. docs/reliability.md maps each to its test."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import REPO, deepspeed_cmd, run_cmd
from remix_ds import cli
from remix_ds.config import config_drift, load_config
from remix_ds.configtools import ConfigError, to_dict

CONFIG = str(REPO / "configs" / "tiny.yaml")


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lr: .nan\n", "optim.lr: expected a finite number, got nan (in {f})"),
    ("train:\n  epochs: .nan\n", "train.epochs: expected a finite number, got nan (in {f})"),
    ("train:\n  epochs: .inf\n", "train.epochs: expected a finite number, got inf (in {f})"),
    ("optim:\n  lr: '-inf'\n", "optim.lr: expected a finite number, got '-inf' (in {f})"),
    ("train:\n  epochs: 1\n  seed: 3\n  epochs: 2\n", "duplicate key 'epochs' at {f}:4 (first at line 2); remove one of them"),
    ("optim: {lr: 1.0e-3}\noptim: {lr: 2.0e-3}\n", "duplicate key 'optim' at {f}:2 (first at line 1); remove one of them"),
])
def test_bad_yaml_values_are_refused_naming_key_and_file(tmp_path, text, message):
    f = tmp_path / "cfg.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value) == message.format(f=f)


def test_json_nan_and_duplicate_keys(tmp_path):
    f = tmp_path / "cfg.json"
    f.write_text('{"optim": {"lr": NaN}}')
    with pytest.raises(ConfigError, match=rf"^optim.lr: expected a finite number, got nan \(in {f}\)$"):
        load_config(f)
    f.write_text('{"train": {"seed": 1, "seed": 2}}')
    with pytest.raises(ConfigError, match=rf"^duplicate key 'seed' in {f}; remove one of them$"):
        load_config(f)


def test_nan_override_is_refused():
    with pytest.raises(ConfigError, match=r"^optim.lr: expected a finite number, got nan \[from command-line override\]$"):
        load_config(CONFIG, ["optim.lr=.nan"])


def test_drift_lists_trajectory_keys_only():
    saved = to_dict(load_config(CONFIG))
    now = to_dict(load_config(CONFIG, ["optim.lr=1e-4", "data.kvr.num_pairs=8", "train.stop_at_step=3",
                                       "train.progress_bar=false", "train.output_dir=elsewhere", "train.log_every=5",
                                       "train.prefetch_steps=0", "train.micro_batch_tokens=512"]))
    assert config_drift(saved, now) == {"data.kvr.num_pairs": (64, 8), "optim.lr": (0.003, 1e-4),
                                        "train.micro_batch_tokens": (0, 512)}
    assert config_drift(saved, saved) == {}


def test_info_prints_the_config_error_not_null(capsys):
    rc = cli.main(["info", CONFIG, "train.global_batch_size=7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["remix-ds: config error: train.global_batch_size=7 is not divisible by "
                               "train.micro_batch_size=2 x world size 1 = 2; use train.micro_batch_size=1 "
                               "(or set train.micro_batch_tokens)"]


# ---- the real engine ------------------------------------------------------------------------
def _args(run_dir, *extra):
    return [f"train.output_dir={run_dir}", "train.max_steps=3", "train.save_every=0", "train.progress_bar=false",
            "train.tensorboard=false", "train.export_final=false", "data.kvr.num_pairs=16", "data.max_seq_len=64",
            *extra]


@pytest.mark.slow
def test_drifted_resume_is_refused_with_the_keys_then_allowed_and_recorded(tmp_path):
    run_dir = tmp_path / "run"
    train = [sys.executable, "-m", "remix_ds.train", CONFIG]
    run_cmd(train + _args(run_dir, "train.stop_at_step=2"))
    saved = json.loads((run_dir / "config.json").read_text())
    refused = run_cmd(train + _args(run_dir, "optim.lr=1e-4"), check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = [x for x in refused.stderr.splitlines() if x.startswith("remix-ds:")]
    assert lines == [f"remix-ds: config error: the config changed since {run_dir / 'checkpoint-2'} "
                     "(optim.lr: 0.003 -> 0.0001); resuming would mix two runs. Use a new train.output_dir, "
                     "or set train.allow_config_change=true to resume anyway"]
    assert json.loads((run_dir / "config.json").read_text()) == saved  # not overwritten by the refused run
    allowed = run_cmd(train + _args(run_dir, "optim.lr=1e-4", "train.allow_config_change=true"))
    assert "resumed from" in allowed.stdout and "WARNING: resuming" in allowed.stdout
    rows = [json.loads(x) for x in (run_dir / "config_changes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 2 and rows[0]["changes"] == {"optim.lr": [0.003, 0.0001]}
    assert json.loads((run_dir / "config.json").read_text())["optim"]["lr"] == 1e-4
    # the changed rate is the one used from the resumed step on: step 3 at the new schedule's rate
    # (before, the checkpoint's optimizer and scheduler state kept 0.003's schedule)
    used = {r["step"]: r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert sorted(used) == [1, 2, 3]
    assert used[3] == pytest.approx(_scheduled_lr(load_config(CONFIG, _args(run_dir, "optim.lr=1e-4")), 3), rel=1e-6)
    assert used[2] == pytest.approx(_scheduled_lr(load_config(CONFIG, _args(run_dir)), 2), rel=1e-6)
    assert used[3] < used[2] / 10


def _scheduled_lr(cfg, step: int) -> float:
    """The rate that optimizer step `step` (1-based) of a fresh run of `cfg` uses (max_steps = 3)."""
    import torch

    from remix_ds.engine.schedule import make_scheduler

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = make_scheduler(cfg.optim, 3)(opt)
    for _ in range(step - 1):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


@pytest.mark.slow
def test_indivisible_global_batch_under_the_launcher_is_one_line(tmp_path):
    proc = run_cmd(deepspeed_cmd(["remix_ds.train", CONFIG, *_args(tmp_path / "run", "train.global_batch_size=6")],
                                 module=True), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    lines = [x for x in out.splitlines() if "remix-ds: " in x and "error" in x]
    assert lines == ["remix-ds: config error: train.global_batch_size=6 is not divisible by train.micro_batch_size=2 "
                     "x world size 2 = 4; use train.micro_batch_size=1 (or set train.micro_batch_tokens)"], out[-3000:]
    assert "Traceback" not in out
