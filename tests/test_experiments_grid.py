"""The grid runner on a toy grid with the real engine and evaluator (CPU, stages in-process).

One D_A x (two D_B + one broken D_B) x two strategies: every cell is in the table, forgetting
equals EM after stage 1 - EM after stage 2 recomputed from the per-example eval files, cells
sharing a stage 1 share its run, a broken cell is recorded without losing the others, a rerun
skips finished cells, and a killed cell resumes from its checkpoint.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import GRID_RUN, REPO, run_cmd

pytestmark = pytest.mark.slow  # launches deepspeed / subprocesses



def _write_cfg(tmp_path: Path, **extra) -> Path:
    cfg = {
        "output_dir": str(tmp_path / "grid"),
        "run": GRID_RUN,
        "data_a": [{"name": "fa", "dataset": "kvr", "num_examples": 8}],
        "data_b": [{"name": "fb", "dataset": "kvr", "num_examples": 8}],
        "strategies": ["none"],
        "stage1": {"max_epochs": 120, "eval_every": 5},
        "stage2": {"epochs": 6, "eval_every": 2},
        "analysis": {"logit_lens": False, "preservation": False},
    }
    cfg.update(extra)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(run_dir: Path, step_name: str, name: str) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "eval" / step_name / f"{name}.jsonl").read_text().splitlines()]


def _latest(run_dir: Path, name: str) -> list[dict]:
    steps = sorted(int(p.name[5:]) for p in (run_dir / "eval").glob("step-*") if (p / f"{name}.jsonl").is_file())
    return _rows(run_dir, f"step-{steps[-1]}", name)


def test_grid_table_forgetting_failures_and_rerun(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "q", "answer": "a"}\nnot json\n')
    cfg = _write_cfg(
        tmp_path,
        data_b=[{"name": "fb", "dataset": "kvr", "num_examples": 8},
                {"name": "gb", "dataset": "generic", "num_examples": 8, "prompt_words": 8, "answer_words": 2},
                {"name": "bad", "dataset": str(bad)}],
        strategies=["none", "replay=0.5"],
        analysis={"logit_lens": True, "preservation": True, "preservation_n": 4, "max_new_tokens": 8, "lens_max_examples": 8},
    )
    proc = run_cmd([sys.executable, "-m", "remix_ds.experiments", str(cfg)], timeout=900, check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # one D_B is broken
    out = tmp_path / "grid"
    table = json.loads((out / "results.json").read_text())
    assert {(r["d_b"], r["strategy"]) for r in table} == {(b, s) for b in ("fb", "gb", "bad") for s in ("none", "replay=0.5")}
    failed = [r for r in table if r["status"] != "done"]
    assert {r["d_b"] for r in failed} == {"bad"} and all("not json" in r["error"] or "malformed" in r["error"] for r in failed)
    done = [r for r in table if r["status"] == "done"]
    assert len(done) == 4
    # one stage-1 run shared by the four cells (no stage-1 mixing in either strategy)
    assert [p.name for p in (out / "stage1").iterdir()] == ["fa__plain"]
    s1 = out / "stage1" / "fa__plain"
    rows1 = _latest(s1, "fa")
    em1 = sum(r["correct"] for r in rows1) / len(rows1)
    assert len(rows1) == 8 and em1 == 1.0  # memorized, as checked by the evaluator's early stop
    assert json.loads((s1 / "stage_done.json").read_text())["stopped_early"] is True
    for r in done:
        s2 = out / "cells" / f"fa__{r['d_b']}__{'none' if r['strategy'] == 'none' else 'replay-0.5'}" / "stage2"
        rows2 = _latest(s2, "fa")
        em2 = sum(x["correct"] for x in rows2) / len(rows2)
        assert r["em_a_stage1"] == em1 and r["em_a_stage2"] == em2
        assert r["forgetting"] == pytest.approx(em1 - em2)
        assert 0.0 <= r["em_b_stage2"] <= 1.0
        assert r["lens_s1_n"] == 8 and 0 <= r["lens_s1_recall_layer_mean"] <= 4  # tiny model: 4 layers
        assert isinstance(r["pres_s1_nll_change"], float) and r["pres_s1_changed_frac"] >= 0  # measured
    # the tables and plots exist and agree
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 6
    for name in ("forgetting.png", "forgetting_curves.png", "logit_lens.png", "report.md"):
        assert (out / name).stat().st_size > 1000
    curve = json.loads((out / "cells" / "fa__fb__none" / "done.json").read_text())["curve_a"]
    assert curve[0] == [0, em1] and len(curve) >= 4 and curve[-1][1] == done[0]["em_a_stage2"]
    # rerun: finished cells are skipped, nothing is trained again, the failed cells are retried
    again = run_cmd([sys.executable, "-m", "remix_ds.experiments", str(cfg)], timeout=300, check=False)
    assert again.stdout.count("done earlier, skipped") == 4
    assert "training ->" not in again.stdout
    assert json.loads((out / "results.json").read_text())[:2] == table[:2]


def test_killed_cell_resumes(tmp_path):
    run = dict(GRID_RUN, train=dict(GRID_RUN["train"], save_every=2))
    # one process per stage (launcher: subprocess): killing the grid's process group kills the stage too
    # stage2.eval_b=end: D_B is scored once, on the stage-2 export, by the grid process
    cfg = _write_cfg(tmp_path, run=run, stage1={"max_epochs": 60, "eval_every": 10, "em_threshold": 1.0},
                     stage2={"epochs": 6, "eval_every": 2, "eval_b": "end"}, launcher="subprocess")
    s1 = tmp_path / "grid" / "stage1" / "fa__plain"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "remix_ds.experiments", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (s1 / "latest").exists():
            assert proc.poll() is None and time.time() < deadline, "stage 1 ended before its first checkpoint"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started
        proc.wait()
    assert not (s1 / "stage_done.json").exists()
    run_cmd([sys.executable, "-m", "remix_ds.experiments", str(cfg)], timeout=600)
    assert "resumed from" in (s1 / "stage.log").read_text()
    stats = json.loads((s1 / "stage_done.json").read_text())
    assert stats["resumed_from_step"] >= 2 and stats["steps"] > stats["resumed_from_step"]
    row = json.loads((tmp_path / "grid" / "results.json").read_text())[0]
    assert row["status"] == "done" and row["forgetting"] == pytest.approx(row["em_a_stage1"] - row["em_a_stage2"])
    s2 = tmp_path / "grid" / "cells" / "fa__fb__none" / "stage2"
    evals_b = sorted(p.parent.name for p in (s2 / "eval").glob("step-*/fb.jsonl"))
    assert evals_b == [f"step-{row['stage2_eval_step']}"]  # only the final one
    rows_b = _rows(s2, evals_b[0], "fb")
    assert len(rows_b) == 8 and row["em_b_stage2"] == sum(r["correct"] for r in rows_b) / 8
