"""A non-finite loss or gradient norm stops the run at that step; the last good checkpoint stays `latest`."""

from __future__ import annotations

import sys

import pytest

from helpers import REPO, run_cmd
from remix_ds.engine.metrics import read_metrics


@pytest.mark.slow
def test_nan_training_stops_at_its_step_and_exports_nothing(tmp_path):
    """optim.lr=1e9 used to train NaN to the end, exit 0 and export final/."""
    run = tmp_path / "run"
    proc = run_cmd([sys.executable, "-m", "remix_ds.train", str(REPO / "configs/tiny.yaml"), f"train.output_dir={run}",
                    "optim.lr=1e9", "optim.warmup_ratio=0", "optim.schedule=constant", "train.max_steps=6",
                    "train.save_every=1", "data.kvr.num_pairs=16", "train.progress_bar=false",
                    "train.tensorboard=false"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"remix-ds: error: step 2: non-finite training loss nan (global grad norm inf) at lr 1e+09; "
                    f"stopped before saving or exporting this step ({run}/latest still names checkpoint-1). "
                    "Lower optim.lr or check the data")
    assert "Traceback" not in proc.stderr
    assert (run / "latest").read_text().strip() == "checkpoint-1"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (run / "final").exists()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]
