"""Pruning (`analysis.keep_models`): what goes when, on hand-made stage folders (fast) and on a tiny
grid run end to end (slow): exports and checkpoints gone, eval files and the table intact, a rerun
skips every cell, and a cell added later on a pruned stage 1 is refused in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from helpers import GRID_RUN, run_cmd
from remix_ds import configtools
from remix_ds.experiments import prune
from remix_ds.experiments.config import ExperimentConfig
from remix_ds.experiments.grid import Grid
from remix_ds.experiments.layout import cell_dir


def _stage(folder: Path, step: int) -> None:
    """A finished stage as the trainer leaves it: export, one checkpoint, `latest`, eval rows, stage_done.json."""
    (folder / "final").mkdir(parents=True)
    (folder / "final" / "model.safetensors").write_bytes(b"w" * 1000)
    (folder / f"checkpoint-{step}").mkdir()
    (folder / f"checkpoint-{step}" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * 7000)
    (folder / "latest").write_text(f"checkpoint-{step}\n")
    (folder / "eval" / f"step-{step}").mkdir(parents=True)
    (folder / "eval" / f"step-{step}" / "fa.jsonl").write_text('{"id": "fa-0", "correct": true}\n')
    (folder / "stage_done.json").write_text(json.dumps({"steps": step}))


def _grid(tmp_path: Path, keep: str):
    cfg = configtools.from_dict(ExperimentConfig, {
        "output_dir": str(tmp_path / "grid"), "data_a": [{"name": "fa"}], "data_b": [{"name": "fb"}, {"name": "gb"}],
        "strategies": ["none", "random@1"], "analysis": {"keep_models": keep}})
    grid = Grid(cfg, log=lambda m: None)
    cells = grid.cells()
    for key in {c.stage1_key for c in cells}:
        _stage(grid.out / "stage1" / key, 10)
        (grid.out / "stage1" / key / "ewc-fisher").mkdir()
    for c in cells:
        _stage(cell_dir(grid.out, c) / "stage2", 6)
    return grid, cells


def _finish(grid, cells, cell, log) -> int:
    (cell_dir(grid.out, cell) / "done.json").write_text("{}")
    return prune.after_cell(cell, cells, grid.cfg.analysis.keep_models, grid.out / "stage1" / cell.stage1_key,
                            cell_dir(grid.out, cell) / "stage2", lambda c: (cell_dir(grid.out, c) / "done.json").is_file(), log)


@pytest.mark.parametrize("keep", ["none", "stage1", "all"])
def test_what_each_keep_setting_deletes_and_when(tmp_path, keep):
    grid, cells = _grid(tmp_path, keep)
    assert sorted({c.stage1_key for c in cells}) == ["fa__plain", "fa__random2"]
    plain = [c for c in cells if c.stage1_key == "fa__plain"]
    s1 = grid.out / "stage1" / "fa__plain"
    logs: list[str] = []
    assert prune.after_cell(plain[0], cells, keep, s1, cell_dir(grid.out, plain[0]) / "stage2",
                            lambda c: False, logs.append) == 0  # no done.json: nothing goes
    freed = _finish(grid, cells, plain[0], logs.append)
    s2 = cell_dir(grid.out, plain[0]) / "stage2"
    if keep == "all":
        assert freed == 0 and (s2 / "final").is_dir() and (s2 / "checkpoint-6").is_dir() and not logs
        return
    assert freed == 8000 + len("checkpoint-6\n")  # export + checkpoint + latest of stage 2
    assert not (s2 / "final").exists() and not (s2 / "checkpoint-6").exists() and not (s2 / "latest").exists()
    assert (s2 / "eval" / "step-6" / "fa.jsonl").is_file() and (s2 / "stage_done.json").is_file()
    assert json.loads((s2 / prune.PRUNED).read_text())["removed"] == ["checkpoint-6", "final", "latest"]
    assert (s1 / "final").is_dir()  # its sibling on fb... gb is not done: stage 1 stays
    _finish(grid, cells, plain[1], logs.append)
    assert (s1 / "final").is_dir() != (keep == "none")  # every cell on fa__plain is done
    assert (s1 / "ewc-fisher").is_dir() != (keep == "none")
    assert (s1 / "eval" / "step-10" / "fa.jsonl").is_file()
    assert (grid.out / "stage1" / "fa__random2" / "final").is_dir()  # the other stage 1 still has unfinished cells
    if keep == "none":
        with pytest.raises(prune.PrunedModelError, match=r"cell x needs .*fa__plain/final, pruned") as e:
            prune.require_export(s1, "cell x")
        assert "\n" not in str(e.value)
    prune.require_export(grid.out / "stage1" / "fa__random2", "cell y")  # not pruned: fine


def test_a_done_stage_loses_its_checkpoints_an_unfinished_one_keeps_them(tmp_path):
    _stage(tmp_path / "s", 4)
    assert prune.drop_checkpoints(tmp_path / "s", "stage1", done=False, log=print) == 0
    assert prune.drop_checkpoints(tmp_path / "s", "all", done=True, log=print) == 0
    assert (tmp_path / "s" / "checkpoint-4").is_dir()
    assert prune.drop_checkpoints(tmp_path / "s", "none", done=True, log=print) > 7000
    assert not (tmp_path / "s" / "checkpoint-4").exists() and (tmp_path / "s" / "final").is_dir()


def test_keep_models_is_validated():
    from remix_ds.configtools import ConfigError

    with pytest.raises(ConfigError, match="keep_models"):
        configtools.from_dict(ExperimentConfig, {"data_a": [{"name": "fa"}], "data_b": [{"name": "fb"}],
                                                 "analysis": {"keep_models": "stage2"}})


@pytest.mark.slow  # trains a tiny grid (subprocesses)
def test_pruned_tiny_grid_keeps_its_table_and_reruns_without_models(tmp_path):
    cfg = {
        "output_dir": str(tmp_path / "grid"), "run": dict(GRID_RUN, train=dict(GRID_RUN["train"], save_every=2)),
        "data_a": [{"name": "fa", "dataset": "kvr", "num_examples": 8}],
        "data_b": [{"name": "fb", "dataset": "kvr", "num_examples": 8}, {"name": "gb", "dataset": "kvr", "num_examples": 8}],
        "strategies": ["none"], "stage1": {"max_epochs": 120, "eval_every": 5}, "stage2": {"epochs": 4, "eval_every": 2},
        "analysis": {"logit_lens": True, "lens_max_examples": 8, "preservation": False, "keep_models": "none"},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "remix_ds.experiments", str(path)]
    first = run_cmd(cmd, timeout=900)
    out = tmp_path / "grid"
    table = json.loads((out / "results.json").read_text())
    assert [(r["d_b"], r["status"]) for r in table] == [("fb", "done"), ("gb", "done")]
    assert all(r["lens_s1_n"] == 8 for r in table)  # the analyses ran on the models before they went
    s1 = out / "stage1" / "fa__plain"
    for stage in (s1, out / "cells" / "fa__fb__none" / "stage2", out / "cells" / "fa__gb__none" / "stage2"):
        left = sorted(p.name for p in stage.iterdir())
        assert "final" not in left and not any(n.startswith("checkpoint-") for n in left) and "latest" not in left, left
        assert (stage / "stage_done.json").is_file() and (stage / prune.PRUNED).is_file()
        assert list((stage / "eval").glob("step-*/fa.jsonl"))  # the per-example rows the table is built from
    assert first.stdout.count("[experiment] pruned stage 2 of") == 2 and first.stdout.count("[experiment] pruned stage 1") == 1
    csv = (out / "results.csv").read_text()
    # rerun: nothing trained, nothing loaded, the same table
    again = run_cmd(cmd, timeout=300)
    assert again.stdout.count("done earlier, skipped") == 2 and "training ->" not in again.stdout
    assert json.loads((out / "results.json").read_text()) == table and (out / "results.csv").read_text() == csv
    # a D_B added later needs the pruned stage 1: its cell is refused in one line, the others stay done
    cfg["data_b"].append({"name": "hb", "dataset": "kvr", "num_examples": 8})
    path.write_text(yaml.safe_dump(cfg))
    third = run_cmd(cmd, timeout=300, check=False)
    rows = {r["d_b"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["fb"] == table[0] and rows["gb"] == table[1]
    assert rows["hb"]["status"] == "error" and "PrunedModelError" in rows["hb"]["error"]
    assert "analysis.keep_models=stage1" in rows["hb"]["error"] and third.returncode == 1
