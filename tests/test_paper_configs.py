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


OTHER_MODELS = {"mistral-7b": "mistralai/Mistral-7B-v0.1", "gemma-2-9b": "google/gemma-2-9b"}
MODEL_CONFIGS = sorted((REPO / "configs" / "paper").glob("*/*.yaml"))


def test_every_base_model_of_the_reference_has_the_three_grids():
    assert {(p.parent.name, p.stem) for p in MODEL_CONFIGS} == {
        (m, a) for m in OTHER_MODELS for a in ("kvr", "popqa", "triviaqa")}


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_other_base_models_match_the_llama_grid_and_dry_run(path, capsys):
    """Mistral-7B / Gemma-2 grids: the Llama-3-8B grid of the same D_A with only the model, its data folder and
    outputs changed; they validate at 1-8 GPUs and dry-run (no download: nothing is loaded)."""
    from remix_ds import cli, configtools

    cfg, llama = load_experiment(path), load_experiment(REPO / "configs" / "paper" / path.name)
    model = path.parent.name
    assert cfg.run.model.name_or_path == OTHER_MODELS[model]
    assert cfg.data_dir == f"data/paper/{model}" and cfg.output_dir == f"runs/paper/{model}/{path.stem}"
    assert cfg.run.data.mix.generic_corpus == f"data/paper/{model}/generic/knowledge-pile"
    a, b = configtools.to_dict(cfg), configtools.to_dict(llama)
    for d in (a, b):
        for k in ("data_dir", "output_dir"):
            d.pop(k)
        d["run"]["model"].pop("name_or_path")
        d["run"]["model"].pop("attn_implementation")
        d["run"]["data"]["mix"].pop("generic_corpus")
    assert a == b  # same optimizer, batch, schedule, stopping rules, sets and strategies
    assert cfg.run.model.attn_implementation == ("eager" if model.startswith("gemma") else "auto")
    for world in (1, 2, 4, 8):
        cfg.run.validate(world)
    assert cli.main(["experiment", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("(stage 1: ") == 8 * 11 and f"{path.stem}__lama__none" in out
