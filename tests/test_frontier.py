"""The stage-2 sweep and the retention-learning frontier (issue 20), without training.

Fake grid folders (experiment_config.json, cells/*/done.json and the per-example eval files the
rows name) stand in for finished grids: the frontier's points must equal the per-cell files, CIs
collapse when the seeds agree, the area matches a hand computation, and stage 1 is shared across
the sweep (plan level). The end-to-end run on the tiny model is in test_frontier_e2e.py (slow).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from remix_ds.cli import main
from remix_ds.configtools import ConfigError
from remix_ds.data.records import DataError
from remix_ds.experiments.config import load_experiment
from remix_ds.experiments.frontier import frontier_area, read_points, summarize
from remix_ds.experiments.grid import Grid

SETTINGS = ["gentle", "strong"]


def _write_rows(path: Path, verdicts) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"kvr-{i}", "correct": bool(v)}) + "\n" for i, v in enumerate(verdicts)))


def fake_grid(root: Path, seed: int, cells: dict, seed_column: bool = False) -> Path:
    """cells: (strategy, setting) -> (D_A verdicts after stage 2, D_B verdicts after stage 2)."""
    strategies = list(dict.fromkeys(s for s, _ in cells))
    (root / "cells").mkdir(parents=True)
    (root / "experiment_config.json").write_text(json.dumps({
        "run": {"train": {"seed": 0 if seed_column else seed}}, "strategies": strategies,
        "stage2_sweep": [{"name": n, "epochs": None, "overrides": []} for n in SETTINGS]}))
    for (strategy, setting), (va, vb) in cells.items():
        key = f"fa__fb__{strategy.replace('=', '-')}__{setting}"
        cell = root / "cells" / key
        # an older D_A eval that must not be read, then the final one the row names
        _write_rows(cell / "stage2" / "eval" / "step-2" / "fa.jsonl", [1] * len(va))
        _write_rows(cell / "stage2" / "eval" / "step-8" / "fa.jsonl", va)
        _write_rows(cell / "stage2" / "eval" / "step-8" / "fb.jsonl", vb)
        row = {"d_a": "fa", "d_b": "fb", "strategy": strategy, "loss_mode": "answer", "status": "done",
               "stage2_setting": setting, "em_a_stage2": float(np.mean(va)), "em_b_stage2": float(np.mean(vb)),
               "stage2_eval_step": 8}
        if seed_column:
            row["seed"] = seed
        (cell / "done.json").write_text(json.dumps({"row": row, "curve_a": []}))
    return root


def _cells(shift: int = 0) -> dict:
    """Two strategies x two settings; `shift` changes one factoid so seeds disagree."""
    return {
        ("none", "gentle"): ([1, 1, 1, 0], [0, 0, 1, 0]),
        ("none", "strong"): ([0, 0, 0, 0 + shift], [1, 1, 1, 0]),
        ("replay=0.5", "gentle"): ([1, 1, 1, 1], [0, 1, 1, 0]),
        ("replay=0.5", "strong"): ([1, 0, 1, 0], [1, 1, 1, shift]),
    }


def test_area_hand_computed():
    # flat at y=1 on [0, .2], trapezoids .4 * (1+.5)/2 and .4 * (.5+0)/2: .2 + .3 + .1
    assert frontier_area([(0.6, 0.5), (0.2, 1.0), (1.0, 0.0)]) == pytest.approx(0.6)
    assert frontier_area([(0.5, 0.8)]) == pytest.approx(0.4)  # no credit beyond the D_B reached
    assert frontier_area([(1.0, 1.0), (0.0, 1.0)]) == pytest.approx(1.0)
    assert frontier_area([(0.25, 1.0), (0.25, 0.5), (0.75, 0.5)]) == pytest.approx(0.25 + 0.25)


def test_points_equal_cell_files_and_areas(tmp_path):
    g0 = fake_grid(tmp_path / "s0", 0, _cells(0))
    g1 = fake_grid(tmp_path / "s1", 1, _cells(1))
    points, order = read_points([g0, g1])
    assert order["settings"] == SETTINGS and order["strategies"] == ["none", "replay=0.5"]
    s = summarize(points, order, n_boot=100)
    by = {(r["strategy"], r["stage2_setting"]): r for r in s["points"]}
    assert by[("none", "strong")]["per_seed_em_a"] == [0.0, 0.25]  # step-8 file, not the step-2 one
    assert by[("none", "strong")]["em_a"] == pytest.approx(0.125)
    assert by[("replay=0.5", "strong")]["per_seed_em_b"] == [0.75, 1.0]
    assert by[("none", "gentle")]["em_b"] == pytest.approx(0.25) and by[("none", "gentle")]["seeds"] == [0, 1]
    assert all(r["bootstrap"] == "seeds+factoids" for r in s["points"])
    for r in s["points"]:
        assert r["em_a_lo"] <= r["em_a"] <= r["em_a_hi"] and r["em_b_lo"] <= r["em_b"] <= r["em_b_hi"]
    areas = {a["strategy"]: a for a in s["areas"]}
    # seed 0, none: points (.25, .75), (.75, 0): .25*.75 + .5*(.75+0)/2 = .375; seed 1: (.75, .25) -> .1875 + .25
    assert areas["none"]["per_seed_area"] == pytest.approx([0.375, 0.4375])
    # replay seed 0: (.5, 1), (.75, .5): .5 + .25*.75 = .6875; seed 1: (.5, 1), (1, .5): .5 + .5*.75 = .875
    assert areas["replay=0.5"]["per_seed_area"] == pytest.approx([0.6875, 0.875])
    assert areas["none"]["area"] == pytest.approx(0.40625)
    (c,) = s["comparisons"]
    assert c["strategy"] == "replay=0.5" and c["area_diff"] == pytest.approx((0.3125 + 0.4375) / 2)
    assert c["n_seeds"] == 2 and 0 <= c["p"] <= c["p_holm"] <= 1


def test_cis_collapse_when_seeds_agree(tmp_path):
    same = {k: ([1, 1, 1, 1], [0, 0, 0, 0]) if k[1] == "gentle" else ([0, 0, 0, 0], [1, 1, 1, 1]) for k in _cells()}
    grids = [fake_grid(tmp_path / f"s{i}", i, same) for i in range(3)]
    s = summarize(*read_points(grids), n_boot=100)
    for r in s["points"]:
        assert r["em_a_lo"] == r["em_a"] == r["em_a_hi"] and r["em_b_lo"] == r["em_b"] == r["em_b_hi"]
    # mixed verdicts inside a seed, equal across seeds: the area's CI (over seeds) is still a point
    grids = [fake_grid(tmp_path / f"t{i}", i, _cells(0)) for i in range(3)]
    s = summarize(*read_points(grids), n_boot=100)
    for a in s["areas"]:
        assert a["area_lo"] == pytest.approx(a["area"]) == pytest.approx(a["area_hi"]) and a["n_seeds"] == 3
    assert s["comparisons"][0]["diff_lo"] == pytest.approx(s["comparisons"][0]["diff_hi"]) == pytest.approx(0.3125)
    # ...and it opens up once the seeds disagree
    grids = [fake_grid(tmp_path / f"u{i}", i, _cells(i % 2)) for i in range(3)]
    s = summarize(*read_points(grids), n_boot=100)
    assert all(a["area_hi"] > a["area_lo"] for a in s["areas"])


def test_seed_column_and_duplicate_seeds(tmp_path):
    grids = [fake_grid(tmp_path / f"s{i}", 5 + i, _cells(i), seed_column=True) for i in range(2)]
    points, _ = read_points(grids)
    assert sorted({p.seed for p in points}) == [5, 6]  # the row's seed, not run.train.seed (0 in both)
    twin = fake_grid(tmp_path / "twin", 5, _cells(0), seed_column=True)
    with pytest.raises(DataError, match="seed 5 .* appears twice"):
        read_points([grids[0], twin])


def test_row_and_file_disagree_is_an_error(tmp_path):
    g = fake_grid(tmp_path / "s0", 0, _cells(0))
    f = g / "cells" / "fa__fb__none__strong" / "stage2" / "eval" / "step-8" / "fa.jsonl"
    _write_rows(f, [1, 1, 0, 0])
    with pytest.raises(DataError, match="em_a_stage2 = 0.0 in the row but 0.5 in .*step-8/fa.jsonl"):
        read_points([g])


def test_cli_writes_table_plot_json(tmp_path, capsys):
    grids = [fake_grid(tmp_path / f"s{i}", i, _cells(i)) for i in range(2)]
    out = tmp_path / "front"
    assert main(["frontier", *map(str, grids), "--out", str(out), "--n-boot", "100"]) == 0
    summary = json.loads((out / "frontier.json").read_text())
    md = (out / "frontier.md").read_text()
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = next(r for r in summary["points"] if r["strategy"] == "none" and r["stage2_setting"] == "strong")
    assert f"{row['em_a']:.3f} [{row['em_a_lo']:.3f}, {row['em_a_hi']:.3f}]" in md
    assert "| fa | fb | none | strong | 2 | 0.125 [" in md and "Holm" in md
    assert "Retention-learning frontier" in capsys.readouterr().out
    assert main(["frontier", str(tmp_path / "nothing")]) == 2  # one-line error, not a traceback


def _sweep_cfg(tmp_path, sweep):
    return load_experiment(None, [
        f"output_dir={tmp_path / 'grid'}", "data_a=[{name: fa, dataset: kvr, num_examples: 8}]",
        "data_b=[{name: fb, dataset: kvr, num_examples: 8}]", "strategies=[none,random@12]",
        "stage2.epochs=6", "stage2.overrides=[optim.weight_decay=0.1]", f"stage2_sweep={json.dumps(sweep)}"])


def _planned(grid: Grid, tmp_path: Path) -> None:
    for name in ("fa", "fb"):  # the plan only counts rows; no tokenizer, no training
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"id": f"{name}-{i}", "prompt": "q", "answer": "a"}) + "\n" for i in range(8)))
        grid.paths[name] = p


def test_stage1_shared_across_the_sweep(tmp_path):
    cfg = _sweep_cfg(tmp_path, [{"name": "lr3e-4", "overrides": ["optim.lr=3e-4"]}, {"name": "ep2", "epochs": 2}])
    grid = Grid(cfg)
    _planned(grid, tmp_path)
    cells = grid.cells()
    assert [c.key for c in cells] == ["fa__fb__none__lr3e-4", "fa__fb__none__ep2",
                                      "fa__fb__random-at12__lr3e-4", "fa__fb__random-at12__ep2"]
    a, b = cells[0], cells[1]
    assert a.stage1_key == b.stage1_key == "fa__plain"
    assert grid.stage1_config(a) == grid.stage1_config(b)
    s2a, s2b = grid.stage2_config(a), grid.stage2_config(b)
    assert (s2a.optim.lr, s2a.train.epochs) == (3e-4, 6) and (s2b.optim.lr, s2b.train.epochs) == (cfg.run.optim.lr, 2)
    assert s2a.optim.weight_decay == s2b.optim.weight_decay == 0.1  # stage2.overrides still apply
    assert s2a.model.init_from == s2b.model.init_from and s2a.train.output_dir != s2b.train.output_dir
    assert grid.sweep_columns(a) == {"stage2_setting": "lr3e-4"}


def test_no_sweep_is_todays_grid(tmp_path):
    grid = Grid(_sweep_cfg(tmp_path, []))
    _planned(grid, tmp_path)
    cells = grid.cells()
    assert [c.key for c in cells] == ["fa__fb__none", "fa__fb__random-at12"] and cells[0].stage2 is None
    assert grid.stage2_config(cells[0]).train.epochs == 6 and grid.sweep_columns(cells[0]) == {}


@pytest.mark.parametrize("sweep, match", [
    ([{"name": "a"}, {"name": "a"}], "unique"),
    ([{"name": "ok"}, {"name": "x", "overrides": ["optim.bogus=1"]}], r"stage2_sweep\[1\].overrides \(x\).*optim.bogus"),
    ([{"name": "bad name"}], r"stage2_sweep\[0\].name"),
    ([{"name": "e", "epochs": 0}], r"stage2_sweep\[0\].epochs"),
])
def test_bad_sweep(tmp_path, sweep, match):
    with pytest.raises(ConfigError, match=match):
        _sweep_cfg(tmp_path, sweep)
