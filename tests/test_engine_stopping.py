"""The loss-stop rule (the REMIX reference's `sc=loss`): hand-computed step losses, two gloo ranks,
the grid's stage-2 patch, and the real trainer on two ranks (slow)."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from helpers import REPO, deepspeed_cmd, run_cmd
from remix_ds.engine.stopping import LossStop
from remix_ds.experiments.config import load_experiment
from remix_ds.experiments.grid import Grid

# step losses, hand-picked: below 1e-4 at steps 2, 3, 5, 8 (step 4 and 6-7 are above: the count is never reset)
LOSSES = [3e-4, 5e-5, 9e-5, 2e-4, 1e-5, 1e-4, 7e-4, 2e-5, 1e-6, 1e-6]


def test_count_is_cumulative_and_stops_at_the_nth_step_below():
    rule = LossStop(threshold=1e-4, steps=4)
    decisions = [rule.update(x) for x in LOSSES]
    # below: steps 2, 3, 5, 8 -> the 4th such step is step 8; 1e-4 itself is not below
    assert decisions.index(True) + 1 == 8 and rule.count == 6
    rule = LossStop(threshold=1e-4, steps=10)
    assert not any(rule.update(x) for x in LOSSES) and rule.count == 6


def test_count_survives_a_save_and_load():
    rule = LossStop(1e-4, 4)
    for x in LOSSES[:5]:
        rule.update(x)
    state = json.loads(json.dumps(rule.state_dict()))
    resumed = LossStop(1e-4, 4)
    resumed.load_state_dict(state)
    assert resumed.count == 3 and [resumed.update(x) for x in LOSSES[5:8]] == [False, False, True]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# per-rank (summed token loss, supervised tokens) of each step: the rule sees sum(losses) / sum(tokens), as in
# Trainer.train_step (an all-reduced sum over the step's global supervised tokens)
RANK_SUMS = {
    0: [(6e-3, 10), (1e-3, 30), (1e-4, 10), (5e-3, 20), (2e-4, 10)],
    1: [(0.0, 10), (1e-3, 10), (2e-3, 10), (1e-4, 20), (1e-4, 10)],
}
# step means: 3e-4, 5e-5, 1.05e-4, 1.275e-4, 1.5e-5 ... rank 1 alone is below 1e-4 at step 1, rank 0 at step 3
STEP_MEANS = [6e-3 / 20, 2e-3 / 40, 2.1e-3 / 20, 5.1e-3 / 40, 3e-4 / 20]


def _two_ranks(rank: int, port: int, out) -> None:
    from remix_ds.engine import dist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rule, seen, stop_at = LossStop(1.2e-4, 2), [], None
        for step, (local_sum, local_n) in enumerate(RANK_SUMS[rank], start=1):
            loss_sum = torch.tensor(local_sum, dtype=torch.float64)
            dist.all_reduce_(loss_sum)
            n_sup = int(dist.all_reduce_sum([local_n], torch.device("cpu"))[0])
            loss = float(loss_sum) / n_sup
            seen.append(loss)
            if dist.all_reduce_max(int(rule.update(loss))):
                stop_at = step
                break
        out[rank] = (seen, stop_at, rule.count)
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow  # two spawned processes (about 40 s on a shared 2-core machine)
def test_two_ranks_count_the_all_reduced_mean_and_stop_together():
    out = mp.Manager().dict()
    mp.spawn(_two_ranks, args=(_port(), out), nprocs=2, join=True)
    # threshold 1.2e-4, 2 steps: below at step 2 (5e-5) and step 3 (1.05e-4) -> stop after step 3, on both ranks
    for r in (0, 1):
        seen, stop_at, count = out[r]
        assert seen == pytest.approx(STEP_MEANS[:3], rel=1e-12) and stop_at == 3 and count == 2


def _grid(tmp_path, config: str, *overrides: str) -> Grid:
    cfg = load_experiment(REPO / "configs" / "paper" / f"{config}.yaml", [f"output_dir={tmp_path / 'grid'}", *overrides])
    grid = Grid(cfg)
    for d in cfg.data_a + cfg.data_b:
        (tmp_path / f"{d.name}.jsonl").write_text('{"prompt": "p", "answer": "x"}\n' * 64)
    grid.paths = {d.name: tmp_path / f"{d.name}.jsonl" for d in cfg.data_a + cfg.data_b}
    return grid


@pytest.mark.parametrize("config, threshold", [("popqa", 1e-4), ("triviaqa", 1e-4), ("kvr", 0.0)])
def test_paper_configs_set_the_references_stage_two_rule(tmp_path, config, threshold):
    grid = _grid(tmp_path, config)
    cell = grid.cells()[0]
    s2, s1 = grid.stage2_config(cell), grid.stage1_config(cell)
    assert s2.train.stop_loss_below == threshold and s2.train.stop_loss_steps == 10
    assert s2.train.epochs == 20  # the cap (and the schedule's length) stays 20 epochs
    assert s1.train.stop_loss_below == 0.0


def test_stop_keys_are_validated(tmp_path):
    from remix_ds.configtools import ConfigError

    with pytest.raises(ConfigError, match="stage2.stop"):
        load_experiment(REPO / "configs" / "paper" / "kvr.yaml", ["stage2.stop=early"])
    with pytest.raises(ConfigError, match=r"stage2\.stop_loss_steps >= 1"):
        load_experiment(REPO / "configs" / "paper" / "kvr.yaml", ["stage2.stop_loss_steps=0"])
    from remix_ds.config import load_config

    with pytest.raises(ConfigError, match=r"train\.stop_loss_below must be >= 0"):
        load_config(None, ["train.stop_loss_below=-1"])


@pytest.mark.slow  # two deepspeed ranks
def test_trainer_stops_on_the_loss_rule_on_two_ranks_with_the_caps_schedule(tmp_path):
    """The tiny model memorizing 16 pairs for up to 60 epochs (120 steps) on two ranks: the stage ends at the step
    the rule picks from the logged (all-reduced) step losses, before the cap, and every step's learning rate is
    the cosine schedule of the whole cap."""
    from remix_ds.config import load_config
    from remix_ds.engine.metrics import read_metrics

    run_dir = tmp_path / "run"
    threshold, count, lr = 0.5, 3, 3e-3
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"train.output_dir={run_dir}", "data.kvr.num_pairs=16", "train.global_batch_size=8",
        "train.micro_batch_size=2", "train.epochs=60", "train.log_every=1", "train.progress_bar=false",
        "train.tensorboard=false", "train.save_every=0", f"train.stop_loss_below={threshold}",
        f"train.stop_loss_steps={count}", "data.max_seq_len=64", f"optim.lr={lr}"])
    cfg.save(tmp_path / "cfg.json")
    proc = run_cmd(deepspeed_cmd(["remix_ds.experiments.stage", str(tmp_path / "cfg.json")], num_ranks=2, module=True),
                   timeout=900)
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    done = json.loads((run_dir / "stage_done.json").read_text())
    total = done["total_steps"]
    assert total == 120 and done["stop_reason"] == "loss" and done["stopped_early"] is True
    # the rule, by hand, on the logged losses: the step at which the 3rd below-threshold step happens
    below = [r["step"] for r in rows if r["loss"] < threshold]
    assert len(below) == count and below[-1] == done["steps"] == rows[-1]["step"] < total
    assert [r["loss_stop_count"] for r in rows] == [sum(b <= r["step"] for b in below) for r in rows]
    assert f"{count} optimizer steps with loss < {threshold} by step {below[-1]} (of {total})" in proc.stdout
    # every step's learning rate is the whole cap's cosine schedule (warmup 10%), not one shortened to the stop
    warm = math.ceil(0.1 * total)
    for r in rows:
        s = r["step"] - 1  # the rate the step's update used
        want = lr * (s / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
        assert r["lr"] == pytest.approx(want, rel=1e-6, abs=1e-12), r["step"]
    assert (run_dir / "final" / "config.json").is_file()
