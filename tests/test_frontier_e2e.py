"""A two-point, one-seed stage-2 sweep on the tiny model, end to end (issue 20).

One D_A x one D_B x `none`, stage 2 at two strengths from one shared stage 1 (smallest sizes: 8
pairs, a short stage 1 that need not reach EM 1.0). The grid's own frontier (frontier.md/.json/.png
and the report section) and `remix-ds frontier GRID_DIR` must report exactly the EMs of the per-cell
eval files. The same grid carries `analysis.preserve_bench` (issue 16): each cell's pq_* columns
must equal a direct `remix-ds preserve BASE STAGE2 --bench SET` of the same models.
"""

import json
import sys
from pathlib import Path

import pytest
import yaml

from helpers import GRID_RUN, run_cmd
from remix_ds.experiments.frontier import write_frontier

pytestmark = pytest.mark.slow  # launches a grid in a subprocess

RUN = {**GRID_RUN, "train": {**GRID_RUN["train"], "save_every": 1000}}


def _em(path: Path) -> float:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sum(bool(r["correct"]) for r in rows) / len(rows)


def test_two_point_sweep_frontier_end_to_end(tmp_path):
    out = tmp_path / "grid"
    bench = tmp_path / "qs.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is the code of item {i}?", "answer": f"C{i}X"}) + "\n"
                             for i in range(6)))
    cfg = {
        "output_dir": str(out), "run": RUN,
        "data_a": [{"name": "fa", "dataset": "kvr", "num_examples": 8}],
        "data_b": [{"name": "fb", "dataset": "kvr", "num_examples": 8}],
        "strategies": ["none"],
        "stage1": {"max_epochs": 30, "eval_every": 30},
        "stage2": {"epochs": 12, "eval_every": 100},
        "stage2_sweep": [{"name": "gentle", "epochs": 1, "overrides": ["optim.lr=3e-4"]}, {"name": "strong"}],
        # keep_models=all: the test compares the stage-2 exports with `remix-ds preserve` afterwards
        "analysis": {"logit_lens": False, "preservation": False, "preserve_bench": [str(bench)], "keep_models": "all"},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cmd([sys.executable, "-m", "remix_ds.experiments", str(path)], timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert sorted(p.name for p in (out / "stage1").iterdir()) == ["fa__plain"]  # one stage 1 for both points
    table = json.loads((out / "results.json").read_text())
    assert [(r["strategy"], r["stage2_setting"]) for r in table] == [("none", "gentle"), ("none", "strong")]
    expected = {}
    for setting, steps in (("gentle", 1), ("strong", 12)):
        s2 = out / "cells" / f"fa__fb__none__{setting}" / "stage2"
        assert json.loads((s2 / "stage_done.json").read_text())["steps"] == steps  # 8 rows = 1 step per epoch
        assert json.loads((s2 / "stage_config.json").read_text())["optim"]["lr"] == (3e-4 if setting == "gentle" else 3e-3)
        expected[setting] = (_em(s2 / "eval" / f"step-{steps}" / "fa.jsonl"), _em(s2 / "eval" / f"step-{steps}" / "fb.jsonl"))

    summary = json.loads((out / "frontier.json").read_text())
    got = {r["stage2_setting"]: (r["em_a"], r["em_b"]) for r in summary["points"]}
    assert got.keys() == expected.keys() and all(got[k] == pytest.approx(expected[k]) for k in expected)
    for r in summary["points"]:  # one seed, per-factoid bootstrap: the CI brackets the point
        assert r["n_seeds"] == 1 and r["em_a_lo"] <= r["em_a"] <= r["em_a_hi"]
    (area,) = summary["areas"]
    pts = sorted((b, a) for a, b in expected.values())
    by_hand = pts[0][0] * pts[0][1] + (pts[1][0] - pts[0][0]) * (pts[0][1] + pts[1][1]) / 2
    assert area["area"] == pytest.approx(by_hand)
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "frontier.md").read_text()
    for setting, (a, b) in expected.items():
        assert f"| fa | fb | none | {setting} | 1 | {a:.3f} [" in md
    # the grid's seed statistics keep the sweep points apart (one group per D_B@setting, never pooled)
    groups = json.loads((out / "results_summary.json").read_text())["summary"]
    assert sorted((g["d_b"], g["em_a_stage2"]) for g in groups) == sorted((f"fb@{k}", v[0]) for k, v in expected.items())
    report = (out / "report.md").read_text()
    assert "## Retention-learning frontier" in report and "![frontier](frontier.png)" in report

    # `remix-ds frontier GRID_DIR` (here in-process) rereads the cells and writes the same numbers elsewhere
    again = write_frontier([out], tmp_path / "f")
    assert again["points"] == summary["points"] and (tmp_path / "f" / "frontier.png").is_file()

    # pq_* columns (issue 16): the grid's comparison of each stage-2 model with the base model on the
    # question set equals `remix-ds preserve` of the same two models
    for r in table:
        s2 = out / "cells" / f"fa__fb__none__{r['stage2_setting']}" / "stage2" / "final"
        pres = tmp_path / f"pres-{r['stage2_setting']}"
        run_cmd([sys.executable, "-m", "remix_ds.cli", "preserve", "tiny", str(s2), "--bench", str(bench),
                 "--max-new-tokens", "32", "--out", str(pres)], timeout=600)
        direct = json.loads((pres / "preserve.json").read_text())["sets"]["qs"]
        for key in ("identical_frac", "em_delta", "mcnemar_p", "nll_drift"):
            assert r[f"pq_s2_qs_{key.replace('_frac', '')}"] == pytest.approx(direct[key], abs=1e-6), key
