"""Config loading: precedence, and errors that name the key and the file before any work starts."""

import json
import subprocess
import sys

import pytest
import torch

from remix_ds.config import RunConfig, load_config
from remix_ds.configtools import ConfigError, field_docs
from remix_ds.engine.ds_config import build_ds_config


def write(path, text):
    path.write_text(text)
    return path


def test_precedence_cli_over_file_over_defaults(tmp_path):
    cfg_file = write(tmp_path / "run.yaml", "optim:\n  lr: 1.0e-4\ntrain:\n  micro_batch_size: 2\n")
    cfg = load_config(cfg_file, ["optim.lr=2e-5", "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr == 2e-5  # CLI beats file
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.micro_batch_size == 2  # file beats default
    assert cfg.train.global_batch_size == RunConfig().train.global_batch_size  # default


def test_json_config_and_resolved_dump_round_trip(tmp_path):
    cfg_file = write(tmp_path / "run.json", json.dumps({"train": {"epochs": 3, "seed": 7}}))
    cfg = load_config(cfg_file)
    cfg.save(tmp_path / "resolved.json")
    again = load_config(tmp_path / "resolved.json")
    assert again == cfg and again.train.seed == 7 and again.train.epochs == 3.0


def test_unknown_key_names_key_and_file(tmp_path):
    cfg_file = write(tmp_path / "bad.yaml", "train:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_file)
    assert "train.lerning_rate" in str(e.value) and str(cfg_file) in str(e.value)
    assert "global_batch_size" in str(e.value)  # lists the known keys


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key trainer"):
        load_config(write(tmp_path / "bad.yaml", "trainer: {}\n"))


def test_wrong_type_names_key(tmp_path):
    cfg_file = write(tmp_path / "run.yaml", "train:\n  micro_batch_size: four\n")
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: expected an integer, got 'four'") as e:
        load_config(cfg_file)
    assert str(cfg_file) in str(e.value)
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number.*command-line override"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"model\.attn_implementation: expected one of"):
        load_config(None, ["model.attn_implementation=flash"])


def test_impossible_values(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lr must be > 0"):
        load_config(None, ["optim.lr=0"])
    cfg = load_config(None, ["train.global_batch_size=8", "train.micro_batch_size=3"])
    with pytest.raises(ConfigError) as e:
        cfg.validate(world_size=2)
    msg = str(e.value)
    assert "train.global_batch_size=8" in msg and "train.micro_batch_size=3" in msg and "world size 2" in msg
    ok = load_config(None, ["train.global_batch_size=32", "train.micro_batch_size=4"])
    ok.validate(world_size=2)
    assert ok.grad_accum(2) == 4


def test_ds_config_is_derived_and_disagreement_is_an_error(tmp_path):
    cfg = load_config(None, ["train.global_batch_size=16", "train.micro_batch_size=2", "optim.lr=1e-4",
                             "optim.grad_clip=0.5"])
    ds = build_ds_config(cfg, world_size=2, dtype=torch.bfloat16)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 1e-4 and ds["bf16"]["enabled"] is True
    assert ds["fp16"]["enabled"] is False and ds["zero_optimization"]["stage"] == 3

    template = json.loads(build_ds_config.__globals__["template_path"]("zero3").read_text())
    template["train_micro_batch_size_per_gpu"] = 4
    hand = write(tmp_path / "hand.json", json.dumps(template))
    cfg.deepspeed.config = str(hand)
    with pytest.raises(ConfigError) as e:
        build_ds_config(cfg, world_size=2, dtype=torch.float32)
    assert "train_micro_batch_size_per_gpu = 4" in str(e.value) and str(hand) in str(e.value)
    template["train_micro_batch_size_per_gpu"] = 2  # agreeing explicit values are fine
    write(hand, json.dumps(template))
    assert build_ds_config(cfg, world_size=2, dtype=torch.float32)["train_micro_batch_size_per_gpu"] == 2


def test_every_field_has_a_docstring():
    import typing
    from dataclasses import fields, is_dataclass

    checked = []

    def walk(cls):
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        checked.append(cls.__name__)
        for f in fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            for tp in (hints[f.name], *typing.get_args(hints[f.name])):
                if is_dataclass(tp):
                    walk(tp)

    walk(RunConfig)
    assert {"ModelConfig", "TinyModelConfig", "OptimConfig", "TrainConfig", "DataConfig"} <= set(checked)


@pytest.mark.slow  # subprocess
def test_cli_reports_config_errors_without_traceback(tmp_path):
    cfg_file = write(tmp_path / "run.yaml", "train:\n  bogus_key: 1\n")
    proc = subprocess.run([sys.executable, "-m", "remix_ds.cli", "train", str(cfg_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.bogus_key" in proc.stderr and str(cfg_file) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_yaml_on_off_map_to_literal_spellings(tmp_path):
    cfg = load_config(write(tmp_path / "run.yaml", "model:\n  fused_loss: off\n"), ["model.gradient_checkpointing=yes"])
    assert cfg.model.fused_loss == "off" and cfg.model.gradient_checkpointing is True
    assert load_config(None, ["model.fused_loss=on"]).model.fused_loss == "on"
    with pytest.raises(ConfigError, match=r"model\.dtype: expected one of"):
        load_config(None, ["model.dtype=on"])
