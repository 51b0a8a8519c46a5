"""A stage 1 that ended below the EM threshold is visible: a results.csv column, a console line,
a flag in the grid summary (results_summary.json, the printed table), and the cells built on it marked."""

import csv
import json

from test_experiments_report_stats import _grid

from remix_ds.experiments import report


def _rows(tmp_path):
    grid, layout, rows = _grid(tmp_path)
    for r in rows:  # seed 1's stage 1 stopped at its cap at EM 0.781
        low = r["seed"] == 1
        r.update(em_a_stage1=0.781 if low else 1.0, em_a_stage2=0.5, em_b_stage2=0.5, forgetting=0.281 if low else 0.5,
                 stage1_reached_threshold=not low, stage1_key=f"fa__plain__s{r['seed']}", stage1_epochs=20.0,
                 stage1_stop="cap" if low else "eval_metric", stage2_stop="loss", stage1_steps=1240, stage2_steps=300)
    return grid, layout, rows


def test_below_threshold_is_a_column_a_console_line_and_a_summary_flag(tmp_path):
    grid, layout, rows = _rows(tmp_path)
    logged = []
    report.write_all(layout, grid.cfg.stage1, grid.cfg.stage2, rows, log=logged.append)
    with open(layout.out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["seed"], r["stage1_reached_threshold"], r["stage1_stop"], r["stage2_stop"]) for r in table] == [
        ("0", "True", "eval_metric", "loss"), ("0", "True", "eval_metric", "loss"),
        ("1", "False", "cap", "loss"), ("1", "False", "cap", "loss")]
    summary = json.loads((layout.out / "results_summary.json").read_text())
    assert summary["stage1_below_threshold"] == [{
        "d_a": "fa", "stage1": "fa__plain__s1", "em_a_stage1": 0.781, "stage1_stop": "cap", "stage1_epochs": 20.0,
        "cells": ["fb x none", "fb x replay=0.5"]}]
    text = "\n".join(logged)
    assert ("BELOW THRESHOLD stage 1 fa/fa__plain__s1: EM(D_A) 0.781 after 20.0 epochs; cells built on it: "
            "fb x none, fb x replay=0.5") in text
    # the printed table marks the cells (a column only when some stage 1 fell short)
    header = next(line for line in text.splitlines() if line.startswith("| d_a"))
    assert "stage1_reached_threshold" in header
    assert "stage 1 did not reach the EM threshold in 2 cell(s)" in (layout.out / "report.md").read_text()


def test_no_flag_when_every_stage_one_reached_it(tmp_path):
    grid, layout, rows = _rows(tmp_path)
    for r in rows:
        r["stage1_reached_threshold"] = True
    assert report.below_threshold(rows) == []
    assert "stage1_reached_threshold" not in report.main_table(rows).splitlines()[0]


def test_console_line_names_the_stage_and_the_numbers():
    line = report.below_threshold_line("popqa__plain", 0.969, 1.0, 20.0)
    assert line == ("[experiment] WARNING: stage 1 popqa__plain ended after 20.0 epochs with EM(D_A) = 0.969 < "
                    "stage1.em_threshold 1; the cells built on it start from a lower EM "
                    "(results.csv: stage1_reached_threshold = False)")
