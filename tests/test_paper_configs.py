"""Paper configs are valid unchanged at 1, 2, 4 and 8 GPUs (global batch 32), no launch needed."""

import pytest
import torch

from helpers import REPO
from remix_ds.configtools import ConfigError
from remix_ds.engine.ds_config import build_ds_config
from remix_ds.experiments.config import load_experiment

PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("world", [1, 2, 4, 8])
@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_valid_at_world_size(path, world):
    run = load_experiment(path).run
    assert run.train.global_batch_size == 32 and run.train.micro_batch_tokens == 16384
    assert run.train.micro_batch_tokens % run.data.max_seq_len == 0
    run.validate(world)
    ds = build_ds_config(run, world, torch.bfloat16)
    # DeepSpeed's own invariant; its batch numbers are bookkeeping in token-budget mode
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
    assert ds["gradient_accumulation_steps"] == 1 and ds["train_batch_size"] == 32
    assert run.grad_accum(world) == 1


def test_example_micro_batches_at_8_gpus_fail_naming_key_and_fix():
    run = load_experiment(PAPER[0], ["run.train.micro_batch_tokens=0", "run.train.micro_batch_size=8"]).run
    run.validate(4)
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size=8 x world size 8 = 64; use train\.micro_batch_size=4"):
        run.validate(8)
    run.train.micro_batch_size = 4
    run.validate(8)
    assert build_ds_config(run, 8, torch.bfloat16)["gradient_accumulation_steps"] == 1


def test_token_budget_must_be_whole_rows_and_cover_every_rank():
    run = load_experiment(PAPER[0], ["run.train.micro_batch_tokens=5000"]).run
    with pytest.raises(ConfigError, match=r"train\.micro_batch_tokens=5000 is not a multiple of data\.max_seq_len=2048.*"
                                          r"use train\.micro_batch_tokens=4096"):
        run.validate(1)
    run.train.micro_batch_tokens, run.train.global_batch_size = 4096, 4
    with pytest.raises(ConfigError, match=r"train\.global_batch_size=4 is smaller than world size 8.*"
                                          r"train\.global_batch_size=8"):
        run.validate(8)
    # an uneven share (3 ranks, 32 examples) is fine: ranks get 10/11/11 examples
    run.train.global_batch_size = 32
    ds = build_ds_config(run, 3, torch.bfloat16)
    assert ds["train_micro_batch_size_per_gpu"] == 11 and ds["train_batch_size"] == 33
