"""Experiment configs: strategy specs, validation, and every shipped config (paper scale included) loads."""

from pathlib import Path

import pytest

from remix_ds.configtools import ConfigError
from remix_ds.experiments.config import launcher_argv, load_experiment, parse_strategy
from remix_ds.experiments.grid import Grid

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec, random, generic, replay, tag", [
    ("none", (0, 0), (0, 0), 0, "plain"),
    ("random@1", (2, 0), (0, 0), 0, "random2"),
    ("generic@12", (0, 0), (2, 2), 0, "generic2"),
    ("random@1+generic@2", (2, 0), (0, 2), 0, "random2"),
    ("replay=0.1", (0, 0), (0, 0), 0.1, "plain"),
    ("replay=0.1+random@12=0.5", (0.5, 0.5), (0, 0), 0.1, "random0.5"),
])
def test_parse_strategy(spec, random, generic, replay, tag):
    s = parse_strategy(spec, 2.0)
    assert (s.random, s.generic, s.replay, s.stage1_tag()) == (random, generic, replay, tag)


@pytest.mark.parametrize("spec", ["random", "random@3", "replay", "mix@1", "none+", "replay=-1"])
def test_bad_strategy(spec):
    with pytest.raises(ConfigError):
        parse_strategy(spec)


def test_launcher():
    assert launcher_argv("inprocess") is None and launcher_argv("subprocess") == []
    assert launcher_argv("deepspeed --num_gpus 4") == ["deepspeed", "--num_gpus", "4"]
    with pytest.raises(ConfigError):
        launcher_argv("torchrun")


def test_errors_name_the_key(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("data_a: [{name: a}]\ndata_b: [{name: a}]\n")
    with pytest.raises(ConfigError, match="unique"):
        load_experiment(p)
    with pytest.raises(ConfigError, match="stage1.bogus"):
        load_experiment(None, ["data_a=[{name: a}]", "data_b=[{name: b}]", "stage1.bogus=1"])


PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))


def test_paper_configs_exist():
    assert {p.stem for p in PAPER} >= {"kvr", "popqa", "triviaqa"}


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_loads(path):
    cfg = load_experiment(path)
    run = cfg.run
    assert run.model.name_or_path == "meta-llama/Meta-Llama-3-8B"
    assert run.optim.betas == (0.9, 0.95) and run.optim.lr == 5e-5 and run.optim.schedule == "cosine"
    assert run.optim.warmup_ratio == 0.05 and run.train.global_batch_size == 32
    assert cfg.stage1.max_epochs == 20 and cfg.stage2.epochs == 20 and cfg.mix_ratio == 2.0
    assert run.deepspeed.config == "zero3" and run.model.dtype == "bf16"
    for world in (2, 4):
        run.validate(world)  # global batch 32 divides over 2 and 4 GPUs
    assert [d.num_examples for d in cfg.data_a + cfg.data_b] == [2000] * (1 + 8)
    assert {d.name for d in cfg.data_b} == {"lama", "entityqa", "webqa", "ultrachat", "evolcode", "apps", "gsm8k", "math"}
    assert len(Grid(cfg).cells()) == 8 * len(cfg.strategies)


EXPERIMENTS = [p for p in sorted((REPO / "configs").glob("*.yaml")) if p.name != "tiny.yaml"]  # tiny: a run config


@pytest.mark.parametrize("path", EXPERIMENTS + [REPO / "remix_ds" / "demo.yaml"], ids=lambda p: p.name)
def test_other_configs_load(path):
    cfg = load_experiment(path)
    cells = Grid(cfg).cells()
    assert len(cells) == (len(cfg.data_a) * len(cfg.data_b) * len(cfg.strategies) * max(1, len(cfg.loss_modes))
                          * max(1, len(cfg.seeds)) * max(1, len(cfg.stage2_sweep)))
    assert cfg.run.model.name_or_path == "tiny"


def test_baseline_strategies_reach_the_stage_two_config(tmp_path):
    """`ewc=LAMBDA` / `kl:DATA=BETA` terms set regularize.* on stage 2 only; EWC shares its Fisher per stage 1."""
    s = parse_strategy("replay=0.1+ewc=1000+kl:generic=0.5")
    assert s.replay == 0.1 and s.regularize == {"ewc": {"lam": 1000.0}, "kl": {"beta": 0.5, "data": "generic"}}
    assert s.stage1_tag() == "plain"
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text('{"prompt": "p", "answer": "x"}\n' * 4)
    cfg = load_experiment(None, [f"output_dir={tmp_path / 'grid'}", "strategies=[none, ewc=1000+kl=0.1]",
                                 f"data_a=[{{name: a, dataset: {tmp_path / 'a.jsonl'}}}]",
                                 f"data_b=[{{name: b, dataset: {tmp_path / 'b.jsonl'}}}]"])
    grid = Grid(cfg)
    grid.paths = {"a": tmp_path / "a.jsonl", "b": tmp_path / "b.jsonl"}
    plain, reg = grid.cells()
    assert grid.stage2_config(plain).regularize.ewc.lam == 0 and grid.stage2_config(plain).regularize.kl.beta == 0
    s2 = grid.stage2_config(reg)
    assert s2.regularize.ewc.lam == 1000.0 and s2.regularize.kl.beta == 0.1 and s2.regularize.kl.data == "batch"
    assert s2.regularize.ewc.dataset == str(tmp_path / "a.jsonl")
    assert s2.regularize.ewc.state_dir.endswith(f"stage1/{reg.stage1_key}/ewc-fisher")
    assert grid.stage1_config(reg).regularize.ewc.lam == 0
