"""The report's seed statistics on hand-made per-example eval files (no training): CI table, paired
comparison against `none` with Holm, a damaged cell, and a failing W&B tracker that costs no cell."""

import json
from pathlib import Path

import numpy as np
import pytest

from remix_ds import configtools
from remix_ds.experiments import report, stats
from remix_ds.experiments.config import ExperimentConfig
from remix_ds.experiments.grid import Grid
from remix_ds.experiments.layout import GridLayout

IDS = ["fa-0", "fa-1", "fa-2", "fa-3"]
# stage-2 correctness of D_A per (strategy, seed); stage 1 memorized all four everywhere
STAGE2 = {("none", 0): [0, 0, 0, 0], ("none", 1): [0, 0, 0, 0],
          ("replay=0.5", 0): [1, 1, 0, 0], ("replay=0.5", 1): [1, 1, 1, 0]}


def _cfg(tmp_path: Path, **extra) -> ExperimentConfig:
    return configtools.from_dict(ExperimentConfig, {
        "output_dir": str(tmp_path / "grid"), "data_a": [{"name": "fa"}], "data_b": [{"name": "fb"}],
        "strategies": ["none", "replay=0.5"], "seeds": [0, 1], **extra})


def _write(path: Path, correct: list[int], prefix: str = "fa") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"{prefix}-{i}", "correct": bool(c)}) + "\n" for i, c in enumerate(correct)))


def _grid(tmp_path: Path):
    cfg = _cfg(tmp_path)
    grid = Grid(cfg, log=lambda m: None)
    layout = GridLayout(out=grid.out, paths={}, cells=tuple(grid.cells()), tokenizer=None, data=cfg.run.data,
                        model=cfg.run.model, analysis=cfg.analysis)
    rows = []
    for cell in layout.cells:
        _write(layout.stage1_dir(cell) / "eval" / "step-10" / "fa.jsonl", [1, 1, 1, 1])
        _write(layout.stage1_dir(cell) / "eval" / "step-5" / "fa.jsonl", [0, 0, 0, 0])  # older eval: not read
        s2 = layout.cell_dir(cell) / "stage2" / "eval" / "step-6"
        _write(s2 / "fa.jsonl", STAGE2[(cell.strategy.spec, cell.seed)])
        _write(s2 / "fb.jsonl", [1, 0, 1] if cell.strategy.spec == "none" else [1, 1, 1], prefix="fb")
        rows.append({"d_a": "fa", "d_b": "fb", "strategy": cell.strategy.spec, "loss_mode": "answer",
                     "seed": cell.seed, "status": "done"})
    return grid, layout, rows


def test_cell_keys_with_and_without_the_seed_axis(tmp_path):
    cells = Grid(_cfg(tmp_path)).cells()
    assert [(c.key, c.stage1_key) for c in cells] == [
        ("fa__fb__none__s0", "fa__plain__s0"), ("fa__fb__replay-0.5__s0", "fa__plain__s0"),
        ("fa__fb__none__s1", "fa__plain__s1"), ("fa__fb__replay-0.5__s1", "fa__plain__s1")]
    plain = Grid(_cfg(tmp_path, seeds=[])).cells()  # no seed axis: today's keys
    assert [(c.key, c.stage1_key, c.seed) for c in plain] == [("fa__fb__none", "fa__plain", None),
                                                             ("fa__fb__replay-0.5", "fa__plain", None)]
    with pytest.raises(configtools.ConfigError, match="seeds must be distinct"):
        _cfg(tmp_path, seeds=[1, 1])


def test_seed_statistics_from_the_per_example_files(tmp_path):
    _, layout, rows = _grid(tmp_path)
    st = report.seed_statistics(layout, rows)
    none, replay = st["summary"]
    assert (none["strategy"], none["n_seeds"], none["n_a"], none["n_b"]) == ("none", 2, 4, 3)
    assert (none["forgetting"], none["forgetting_lo"], none["forgetting_hi"]) == (1.0, 1.0, 1.0)  # seeds agree
    assert (none["em_a_stage1"], none["em_a_stage1_lo"], none["em_a_stage1_hi"]) == (1.0, 1.0, 1.0)
    assert none["em_b_stage2"] == pytest.approx(2 / 3)
    forgetting = [1 - np.array(STAGE2[("replay=0.5", s)], float) for s in (0, 1)]
    est, lo, hi = stats.bootstrap_ci(forgetting, shared_items=True)
    assert replay["forgetting"] == 0.375 == est and (replay["forgetting_lo"], replay["forgetting_hi"]) == (lo, hi)
    assert 0.0 <= lo < 0.375 < hi <= 1.0
    (cmp,) = st["comparisons"]
    # per-factoid differences summed over the seeds: -2, -2, -1, 0 -> 2 of the 8 sign patterns reach |-5|
    assert (cmp["strategy"], cmp["baseline"], cmp["diff"], cmp["p"], cmp["p_holm"]) == ("replay=0.5", "none", -0.625, 0.25, 0.25)
    assert (cmp["n_seeds"], cmp["n_pairs"], cmp["significant"]) == (2, 8, "no")
    text = "\n".join(report.statistics_markdown(st))
    assert f"| fa | fb | replay=0.5 | 2 | 4 | 1.000 [1.000, 1.000] | 0.625 [{1 - hi:.3f}, {1 - lo:.3f}] |" in text
    assert "| fa | fb | replay=0.5 | -0.625 |" in text and "| 0.250 | 0.250 | 2 | 8 | no |" in text


def test_a_damaged_cell_loses_only_its_statistics(tmp_path):
    _, layout, rows = _grid(tmp_path)
    (layout.out / "cells" / "fa__fb__replay-0.5__s1" / "stage2" / "eval" / "step-6" / "fa.jsonl").unlink()
    logged = []
    st = report.seed_statistics(layout, rows, log=logged.append)
    assert len(logged) == 1 and "fa__fb__replay-0.5__s1: no per-example statistics" in logged[0]
    replay = st["summary"][1]
    assert replay["n_seeds"] == 1 and replay["forgetting"] == 0.5  # seed 0 only
    assert st["comparisons"][0]["n_seeds"] == 1 and st["comparisons"][0]["n_pairs"] == 4


def test_failing_wandb_tracking_costs_no_cell(tmp_path, monkeypatch):
    from remix_ds.experiments import jobs as jobs_mod

    grid, layout, rows = _grid(tmp_path)
    grid.cfg.run.metrics.wandb = configtools.from_dict(type(grid.cfg.run.metrics), {"wandb": {"mode": "offline"}}).wandb
    logged = []
    grid.log = logged.append

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(jobs_mod, "start_wandb", broken)
    jobs_mod.GridJobs(grid).track_cell(layout.cells[0], rows[0], {})
    assert logged == ["[experiment] fa__fb__none__s0: W&B tracking failed (OSError: disk full)"]
    assert grid.wandb_group() == "grid"  # default group: the output folder's name
