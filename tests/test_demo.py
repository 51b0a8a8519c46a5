"""The README's main job: `remix-ds demo` (a toy REMIX grid; real engine, evaluator and analyses).

Run with reduced sizes (8 pairs per set, two strategies, one D_B, a short stage 0) to stay within
about two minutes; the full default is measured in docs/benchmarks.md.
"""

import json
import sys

import pytest

from helpers import run_cmd

pytestmark = pytest.mark.slow  # launches deepspeed / subprocesses


def test_demo_grid(tmp_path):
    out = tmp_path / "demo"
    proc = run_cmd([sys.executable, "-m", "remix_ds.cli", "demo", f"output_dir={out}",
                    "data_a=[{name: kvr_a, dataset: kvr, num_examples: 8}]",
                    "data_b=[{name: kvr_b, dataset: kvr, num_examples: 8}]",
                    "strategies=[none,replay=0.5]", "stage0.num_passages=160", "run.train.global_batch_size=8",
                    "run.train.micro_batch_size=8", "stage1.max_epochs=150", "stage2.epochs=60",
                    "analysis.preservation_n=8", "run.train.progress_bar=false"], timeout=600)
    table = json.loads((out / "results.json").read_text())
    assert [(r["d_b"], r["strategy"], r["status"]) for r in table] == [("kvr_b", "none", "done"),
                                                                        ("kvr_b", "replay=0.5", "done")]
    s1 = out / "stage1" / "kvr_a__plain"
    stats = json.loads((s1 / "stage_done.json").read_text())
    assert stats["stopped_early"]  # the evaluator saw EM(D_A) = 1.0 and stopped stage 1
    rows1 = [json.loads(l) for l in (s1 / "eval" / f"step-{stats['steps']}" / "kvr_a.jsonl").read_text().splitlines()]
    assert len(rows1) == 8 and all(r["correct"] for r in rows1)
    for r in table:
        assert r["em_a_stage1"] == 1.0
        assert r["forgetting"] == pytest.approx(r["em_a_stage1"] - r["em_a_stage2"])
        assert r["em_b_stage2"] >= 0.5  # stage 2 learned most of D_B
        assert isinstance(r["pres_s2_nll_change"], float)  # measured (NaN would be null)
    none, replay = table
    assert replay["em_a_stage2"] >= none["em_a_stage2"]  # replaying D_A keeps at least as much of it
    # the printed table is the written one, and the plots exist
    assert f"| kvr_a | kvr_b | none | 1.000 | {none['em_a_stage2']:.3f} |" in proc.stdout
    for name in ("forgetting.png", "forgetting_curves.png", "logit_lens.png", "report.md", "results.csv"):
        assert (out / name).is_file()
