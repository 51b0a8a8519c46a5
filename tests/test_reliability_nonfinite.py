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


@pytest.mark.slow
def test_skip_step_goes_on_only_past_updates_deepspeed_discarded(tmp_path):
    """train.nonfinite=skip_step: steps 2-4 are NaN and DeepSpeed discards their updates, so the weights
    exported at the end are exactly checkpoint-1's; each skip is a warning and a metrics flag."""
    import torch
    from safetensors.torch import load_file

    from remix_ds.engine.export import export_checkpoint

    run = tmp_path / "run"
    proc = run_cmd([sys.executable, "-m", "remix_ds.train", str(REPO / "configs/tiny.yaml"), f"train.output_dir={run}",
                    "optim.lr=1e9", "optim.warmup_ratio=0", "optim.schedule=constant", "train.max_steps=4",
                    "train.save_every=1", "train.keep_last=4", "data.kvr.num_pairs=16", "train.progress_bar=false",
                    "train.tensorboard=false", "train.nonfinite=skip_step"])
    warned = [line for line in proc.stdout.splitlines() if "DeepSpeed discarded the update" in line]
    assert [w.split(": non-finite")[0].split("WARNING: ")[1] for w in warned] == ["step 2", "step 3", "step 4"]
    rows = read_metrics(run / "metrics.jsonl")
    assert [r.get("skipped_nonfinite", 0) for r in rows if "loss" in r] == [0, 1, 1, 1]
    first = load_file(export_checkpoint(run / "checkpoint-1", tmp_path / "c1") / "model.safetensors")
    final = load_file(run / "final" / "model.safetensors")
    assert first.keys() == final.keys()
    for k in first:
        assert torch.isfinite(final[k]).all()
        torch.testing.assert_close(final[k], first[k], rtol=0, atol=0)
