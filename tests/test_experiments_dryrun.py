"""`remix-ds experiment --dry-run`: per-stage batching under the launcher / scheduler at world sizes
1, 2, 4, 8, the refusal of a batch the world size cannot divide, and the peak disk estimate of the
paper grids (parameter counts from the models' configs on the meta device)."""

from __future__ import annotations

import pytest
import yaml

from helpers import GRID_RUN, REPO
from remix_ds.configtools import ConfigError
from remix_ds.experiments import dryrun
from remix_ds.experiments.config import load_experiment
from remix_ds.experiments.grid import Grid

PAPER = REPO / "configs" / "paper"


def _cfg(tmp_path, *overrides: str):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "grid"), "run": GRID_RUN,
        "data_a": [{"name": "fa", "dataset": "kvr", "num_examples": 8}],
        "data_b": [{"name": "fb", "dataset": "kvr", "num_examples": 8}],
        "strategies": ["none"], "stage2": {"overrides": ["train.micro_batch_size=2"]},
    }))
    return load_experiment(path, ["run.train.global_batch_size=32", "run.train.micro_batch_size=4", *overrides])


@pytest.mark.parametrize("world, accum1, accum2", [(1, "8", "16"), (2, "4", "8"), (4, "2", "4"), (8, "1", "2")])
def test_batching_per_stage_at_world_sizes_1_2_4_8(tmp_path, world, accum1, accum2):
    for overrides in ([f"launcher=deepspeed --num_gpus {world}"],  # serial: the launcher's ranks
                      ["scheduler.kind=local", f"scheduler.gpus_per_cell={world}"],  # local: each job's device group
                      ["scheduler.kind=slurm", "scheduler.slurm.nodes=1", f"scheduler.slurm.gpus_per_node={world}"]):
        s1, s2 = dryrun.batching(_cfg(tmp_path, *overrides))
        assert (s1.stage, s1.world, s1.micro_batch, s1.grad_accum) == ("stage 1", world, "4 examples", accum1), overrides
        assert (s2.stage, s2.world, s2.micro_batch, s2.grad_accum) == ("stage 2", world, "2 examples", accum2), overrides
        assert s1.examples_per_step == s2.examples_per_step == 32
        assert s1.max_tokens_per_step == 32 * 256  # every example at most one row of data.max_seq_len


def test_two_nodes_of_four_gpus_are_eight_ranks(tmp_path):
    cfg = _cfg(tmp_path, "scheduler.kind=slurm", "scheduler.slurm.nodes=2", "scheduler.slurm.gpus_per_node=4")
    assert [(b.world, b.grad_accum) for b in dryrun.batching(cfg)] == [(8, "1"), (8, "2")]


@pytest.mark.parametrize("world, accum", [(1, "<= 4 (32 examples/rank)"), (2, "<= 2 (16 examples/rank)"),
                                          (4, "<= 1 (8 examples/rank)"), (8, "<= 1 (4 examples/rank)")])
def test_token_budget_batching_of_the_paper_config(world, accum):
    cfg = load_experiment(PAPER / "popqa.yaml", [f"launcher=deepspeed --num_gpus {world}"])
    rows = dryrun.batching(cfg)
    assert [b.stage for b in rows] == ["stage 1", "stage 2"]
    for b in rows:
        assert (b.world, b.micro_batch, b.grad_accum) == (world, "<= 16384 tokens (8 rows)", accum)
        assert b.max_tokens_per_step == 32 * 2048


def test_a_batch_the_world_size_cannot_divide_is_refused_in_one_line(tmp_path, capsys):
    from remix_ds.experiments.__main__ import main

    with pytest.raises(ConfigError) as e:
        dryrun.batching(_cfg(tmp_path, "launcher=deepspeed --num_gpus 8", "run.train.micro_batch_size=3"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("stage 1 at world size 8: train.global_batch_size=32 is not divisible")
    assert "use train.micro_batch_size=2" in msg  # a value that works: 32 = 2 x 8 x 2
    cfg = tmp_path / "exp.yaml"  # the command refuses it too, dry run or not, before any work
    for extra in (["--dry-run"], []):
        assert main([str(cfg), "launcher=deepspeed --num_gpus 8", "run.train.global_batch_size=32",
                     "run.train.micro_batch_size=3", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "use train.micro_batch_size=2" in err
    assert not (tmp_path / "grid").exists()
    # the same batch on 4 ranks divides (32 = 4 x 4 x 2 with micro-batch 4; stage 2's 2 x 4 x 4)
    assert [b.grad_accum for b in dryrun.batching(_cfg(tmp_path, "launcher=deepspeed --num_gpus 4"))] == ["2", "4"]
    with pytest.raises(ConfigError, match=r"world size 64 = 256; use train.global_batch_size=256 \(a multiple of 256\)"):
        dryrun.batching(_cfg(tmp_path, "launcher=deepspeed --num_gpus 64"))  # no micro-batch works: a global batch that does


def test_dry_run_prints_batching_and_disk(tmp_path, capsys):
    from remix_ds.experiments.__main__ import main

    cfg = tmp_path / "exp.yaml"
    _cfg(tmp_path)
    assert main([str(cfg), "launcher=deepspeed --num_gpus 2", "run.train.global_batch_size=32",
                 "run.train.micro_batch_size=4", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.startswith("  stage ") and "world" not in line]
    assert rows == [["stage", "1", "2", "4", "examples", "4", "32", "8,192"],
                    ["stage", "2", "2", "2", "examples", "8", "32", "8,192"]]
    assert any(line.startswith("peak disk (analysis.keep_models=stage1): ") for line in out)


def test_paper_parameter_counts_from_the_model_configs():
    counts = {name: dryrun.parameter_count(load_experiment(path).run) for name, path in (
        ("llama", PAPER / "popqa.yaml"), ("mistral", PAPER / "mistral-7b" / "popqa.yaml"),
        ("gemma", PAPER / "gemma-2-9b" / "popqa.yaml"))}
    # the published totals: Llama-3-8B 8.03B, Mistral-7B 7.24B, Gemma-2-9B 9.24B (tied embeddings counted once)
    assert counts == {"llama": 8_030_261_248, "mistral": 7_241_732_096, "gemma": 9_241_705_984}


def test_paper_grid_peak_disk_stays_under_300_gb(tmp_path):
    cfg = load_experiment(PAPER / "popqa.yaml", [f"output_dir={tmp_path / 'g'}"])
    cells = Grid(cfg).cells()
    p = 8_030_261_248
    d = dryrun.disk_estimate(cfg, cells, p)
    assert d.export_bytes == 2 * p and d.checkpoint_bytes == 14 * p  # bf16 weights; + fp32 master, exp_avg, exp_avg_sq
    assert d.running_stage_bytes == 28 * p  # keep_last=1, save_every=200: two checkpoints while a save replaces one
    assert (d.stage1_alive, d.jobs_at_once) == (3, 1)  # plain, random@1, generic@1 stage-1 runs; serial
    assert d.peak_bytes == 28 * p + 3 * 2 * p and d.peak_bytes / 1e9 == pytest.approx(273.0, abs=0.1)
    assert d.peak_bytes < 300e9
    # keeping everything is what the layout without pruning costs: 90 finished stages
    full = dryrun.disk_estimate(load_experiment(PAPER / "popqa.yaml", ["analysis.keep_models=all"]), cells, p)
    assert len(cells) == 88 and full.peak_bytes == (3 + 87) * 16 * p + 28 * p
    # two jobs at once on the node (local, 4 GPUs each) double the running part
    two = dryrun.disk_estimate(load_experiment(PAPER / "popqa.yaml", ["scheduler.kind=local", "scheduler.gpus_per_cell=4",
                                                                      "scheduler.max_concurrent=2"]), cells, p)
    assert two.peak_bytes == 2 * 28 * p + 3 * 2 * p
