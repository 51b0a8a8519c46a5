"""The seed axis on a 1 D_A x 1 D_B x 2 strategy grid, seeds [0, 1] (tiny model, CPU, stages in-process).

4 cells and 2 stage-1 runs (one per seed, shared by that seed's cells); every stage trains with its
seed; the report's CI table and paired comparison equal those recomputed from the per-example eval
files; each cell is an offline W&B run in the grid's group carrying its final row.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import GRID_RUN, run_cmd, wandb_offline_run
from remix_ds.experiments import stats

pytestmark = pytest.mark.slow  # launches the grid in a subprocess

RUN = {**GRID_RUN, "metrics": {"wandb": {"project": "remix-test", "mode": "offline"}}}


def _latest(run_dir: Path, name: str) -> list[dict]:
    steps = sorted(int(p.name[5:]) for p in (run_dir / "eval").glob("step-*") if (p / f"{name}.jsonl").is_file())
    return [json.loads(l) for l in (run_dir / "eval" / f"step-{steps[-1]}" / f"{name}.jsonl").read_text().splitlines()]


def _correct(rows: list[dict], order: list[str]) -> np.ndarray:
    by = {r["id"]: float(r["correct"]) for r in rows}
    return np.array([by[i] for i in order])


def test_seed_axis_ci_report_and_wandb(tmp_path):
    out = tmp_path / "grid"
    cfg = {
        "output_dir": str(out), "run": RUN, "seeds": [0, 1],
        "data_a": [{"name": "fa", "dataset": "kvr", "num_examples": 8}],
        "data_b": [{"name": "fb", "dataset": "kvr", "num_examples": 8}],
        "strategies": ["none", "replay=0.5"],
        # the stages log nothing to W&B here (tests/test_metrics_wandb.py covers that); the cells do
        "stage1": {"max_epochs": 24, "eval_every": 12, "overrides": ["metrics.wandb=null"]},
        "stage2": {"epochs": 3, "eval_every": 0, "overrides": ["metrics.wandb=null"]},
        "analysis": {"logit_lens": False, "preservation": False},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_cmd([sys.executable, "-m", "remix_ds.experiments", str(path)], timeout=900)

    table = json.loads((out / "results.json").read_text())
    assert sorted((r["seed"], r["strategy"]) for r in table) == [(0, "none"), (0, "replay=0.5"), (1, "none"), (1, "replay=0.5")]
    assert all(r["status"] == "done" for r in table)
    assert sorted(p.name for p in (out / "stage1").iterdir()) == ["fa__plain__s0", "fa__plain__s1"]
    assert sorted(p.name for p in (out / "cells").iterdir()) == [
        "fa__fb__none__s0", "fa__fb__none__s1", "fa__fb__replay-0.5__s0", "fa__fb__replay-0.5__s1"]
    for seed in (0, 1):  # each stage trained with its seed: data order and mixing draws
        for stage in (out / "stage1" / f"fa__plain__s{seed}", out / "cells" / f"fa__fb__replay-0.5__s{seed}" / "stage2"):
            c = json.loads((stage / "stage_config.json").read_text())
            assert (c["train"]["seed"], c["data"]["mix"]["seed"], c["metrics"]["wandb"]) == (seed, seed, None)

    # the CI table, recomputed from the per-example eval files
    items = {}
    for r in table:
        s1 = out / "stage1" / f"fa__plain__s{r['seed']}"
        s2 = out / "cells" / f"fa__fb__{'none' if r['strategy'] == 'none' else 'replay-0.5'}__s{r['seed']}" / "stage2"
        rows1 = _latest(s1, "fa")
        ids = [x["id"] for x in rows1]
        em1, em2 = _correct(rows1, ids), _correct(_latest(s2, "fa"), ids)
        rows_b = _latest(s2, "fb")
        items[(r["strategy"], r["seed"])] = {"em_a_stage1": em1, "em_a_stage2": em2, "forgetting": em1 - em2,
                                             "em_b_stage2": _correct(rows_b, [x["id"] for x in rows_b])}
        assert r["forgetting"] == pytest.approx(float(np.mean(em1 - em2)))
    summary = json.loads((out / "results_summary.json").read_text())
    report = (out / "report.md").read_text()
    assert len(summary["summary"]) == 2
    for row in summary["summary"]:
        assert (row["n_seeds"], row["n_a"], row["n_b"]) == (2, 8, 8)
        for m in ("em_a_stage1", "em_a_stage2", "em_b_stage2", "forgetting"):
            per_seed = [items[(row["strategy"], s)][m] for s in (0, 1)]
            est, lo, hi = stats.bootstrap_ci(per_seed, shared_items=True)
            assert (row[m], row[m + "_lo"], row[m + "_hi"]) == pytest.approx((est, lo, hi))
            assert est == pytest.approx(np.mean([t[m] for t in table if t["strategy"] == row["strategy"]]))
            assert f"{est:.3f} [{lo:.3f}, {hi:.3f}]" in report
    (cmp,) = summary["comparisons"]
    expected = stats.paired_comparison([items[("replay=0.5", s)]["forgetting"] for s in (0, 1)],
                                       [items[("none", s)]["forgetting"] for s in (0, 1)], shared_items=True)
    assert cmp["strategy"] == "replay=0.5" and cmp["p_holm"] == cmp["p"]  # one strategy: Holm changes nothing
    assert {k: cmp[k] for k in expected} == pytest.approx(expected)
    assert cmp["significant"] == ("yes" if cmp["p"] <= 0.05 else "no") and cmp["n_pairs"] == 16

    # each cell is an offline W&B run in the grid's group: its config and its final row
    done = json.loads((out / "cells" / "fa__fb__replay-0.5__s1" / "done.json").read_text())["row"]
    run = wandb_offline_run(out / "cells" / "fa__fb__replay-0.5__s1")
    assert (run["group"], run["name"], run["job_type"]) == ("grid", "fa__fb__replay-0.5__s1", "cell")
    assert run["config"]["cell"] == {"key": "fa__fb__replay-0.5__s1", "d_a": "fa", "d_b": "fb", "strategy": "replay=0.5",
                                     "loss_mode": done["loss_mode"], "seed": 1}
    assert run["config"]["stage2"]["train"]["seed"] == 1
    for k in ("em_a_stage1", "em_a_stage2", "em_b_stage2", "forgetting", "seed", "stage2_steps"):
        assert run["summary"][k] == done[k]
