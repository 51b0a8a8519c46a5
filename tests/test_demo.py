"""The README's main job: `remix-ds demo` (two stages, real engine and evaluator, one process)."""

import json
import sys

from conftest import run_cmd


def test_demo_memorizes_then_forgets(tmp_path):
    out = tmp_path / "demo"
    proc = run_cmd([sys.executable, "-m", "remix_ds.cli", "demo", f"train.output_dir={out}",
                    "data.kvr.num_pairs=16", "train.epochs=40", "train.progress_bar=false"], timeout=600)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["em_A_after_stage1"] >= 0.9  # memorized
    assert summary["em_B_after_stage2"] >= 0.9
    assert summary["forgetting_A"] == summary["em_A_after_stage1"] - summary["em_A_after_stage2"]
    # The printed table agrees with the per-example rows the evaluator wrote.
    rows1 = [json.loads(l) for l in (out / "stage1/eval/step-80/kvr.jsonl").read_text().splitlines()]
    rows2 = [json.loads(l) for l in (out / "stage2/eval/step-80/kvr.jsonl").read_text().splitlines()]
    assert len(rows1) == len(rows2) == 16
    assert sum(r["correct"] for r in rows1) / 16 == summary["em_A_after_stage1"]
    assert sum(r["correct"] for r in rows2) / 16 == summary["em_A_after_stage2"]
    assert f"| {summary['em_A_after_stage1']:.3f} |" in proc.stdout
