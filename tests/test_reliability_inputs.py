"""Input mistakes that used to pass or end in a traceback: each is refused in one line naming the key or file."""

from __future__ import annotations

import json
import re
import sys

import pytest

from helpers import REPO, run_cmd
from remix_ds.config import load_config
from remix_ds.configtools import ConfigError
from remix_ds.engine import checkpoint as ckpt_lib
from remix_ds.errors import CheckpointError
from remix_ds.experiments.config import parse_strategy


@pytest.mark.parametrize("override, says", [
    ("optim.weight_decay=-1", "optim.weight_decay must be >= 0, got -1"),
    ("optim.min_lr_ratio=-1", "optim.min_lr_ratio must be in [0, 1] (a fraction of optim.lr), got -1"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio must be in [0, 1] (a fraction of optim.lr), got 1.5"),
    ("optim.weight_decay=2000", "optim.lr * optim.weight_decay = 6 must be < 1"),
    ("optim.eps=0", "optim.eps must be > 0, got 0"),
])
def test_optimizer_ranges_are_checked_at_load(override, says):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/tiny.yaml", [override])
    assert says in str(e.value) and "\n" not in str(e.value)
    load_config(REPO / "configs/tiny.yaml", ["optim.weight_decay=0.1", "optim.min_lr_ratio=0.1"])  # sane values load


@pytest.mark.parametrize("spec, says", [
    ("none+none", "strategies: 'none+none' has 'none' and 'none', which set the same thing (none)"),
    ("ewc=-5", "strategy term 'ewc=-5': the lam must be a finite number >= 0, got -5.0"),
    ("kl=-0.1", "strategy term 'kl=-0.1': the beta must be a finite number >= 0, got -0.1"),
    ("ewc=1+ewc=2", "has 'ewc=2' and 'ewc=1', which set the same thing (ewc)"),
    ("random@1+random@12", "has 'random@12' and 'random@1', which set the same thing (random in stage 1)"),
    ("replay=0.1+replay=0.2", "which set the same thing (replay)"),
])
def test_bad_or_duplicate_strategy_terms_are_refused(spec, says):
    with pytest.raises(ConfigError) as e:
        parse_strategy(spec)
    assert says in str(e.value)
    assert parse_strategy("random@1+generic@2+ewc=1000").regularize == {"ewc": {"lam": 1000.0}}


def _fake_checkpoint(run_dir, step: int, files) -> None:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "complete.json").write_text(json.dumps({"step": step, "world_size": 1, "hash": "sha256", "files": files}))


def test_complete_json_whose_files_is_a_list_is_named_and_falls_back(tmp_path, capsys):
    """`files` as a list used to raise AttributeError with no fallback."""
    good = {"config.json": ckpt_lib.file_record(_write(tmp_path / "probe.json", "{}"), None)}
    _fake_checkpoint(tmp_path, 2, good)
    _fake_checkpoint(tmp_path, 4, ["config.json"])
    candidates = ckpt_lib.resume_candidates(tmp_path)
    assert ckpt_lib.select_checkpoint(candidates, hashes=True, fallback=True) == tmp_path / "checkpoint-2"
    assert (f"{tmp_path / 'checkpoint-4' / 'complete.json'}: 'files' must map each file name to its size and sha256, "
            "got list; trying the next older checkpoint") in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="'files' must map each file name"):
        ckpt_lib.select_checkpoint(candidates, hashes=True, fallback=False)


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.slow
def test_output_dir_that_is_a_file_is_one_line(tmp_path):
    target = _write(tmp_path / "out", "not a folder")
    proc = run_cmd([sys.executable, "-m", "remix_ds.train", str(REPO / "configs/tiny.yaml"), f"train.output_dir={target}"],
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"remix-ds: config error: train.output_dir={target} is an existing "
                                                    "file, not a folder; name a folder")
    assert "Traceback" not in proc.stderr and target.read_text() == "not a folder"


def test_duplicate_example_ids_are_refused_with_both_positions(tmp_path):
    """An eval file holding id g0 twice used to be scored twice; a training file trained it twice."""
    from remix_ds.data.config import SourceConfig
    from remix_ds.data.datasets import load_examples
    from remix_ds.data.records import DataError
    from remix_ds.eval.config import EvalConfig
    from remix_ds.eval.data import load_eval_set

    f = tmp_path / "qa.jsonl"
    rows = [{"id": "g0", "prompt": "a?", "answer": "A"}, {"id": "g1", "prompt": "b?", "answer": "B"},
            {"id": "g0", "prompt": "c?", "answer": "C"}]
    f.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    says = f"{f}:4: duplicate example id 'g0' (first at {f}:1); ids must be unique"
    with pytest.raises(DataError, match="^" + re.escape(says)):
        load_examples(SourceConfig(dataset=str(f)))
    with pytest.raises(DataError, match="^" + re.escape(says)):
        load_eval_set(str(f), EvalConfig())
    kept = load_examples(SourceConfig(dataset=str(f), on_bad_record="drop"))
    assert [e.answer for e in kept] == ["A", "B"] and kept.dropped == [f"{says} (or set data.on_bad_record=drop to drop the repeats)"]


def test_a_checkpoint_from_before_train_nonfinite_is_not_drift():
    """run_config.json written before the key existed: resuming must not be refused as a config change."""
    from remix_ds import configtools
    from remix_ds.config import config_drift

    current = configtools.to_dict(load_config(REPO / "configs/tiny.yaml"))
    saved = json.loads(json.dumps(current))
    del saved["train"]["nonfinite"]
    assert config_drift(saved, current) == {}
    saved["optim"]["lr"] = 1.0
    assert list(config_drift(saved, current)) == ["optim.lr"]
