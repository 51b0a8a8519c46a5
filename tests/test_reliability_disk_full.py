"""Disk full while saving a checkpoint, on a small tmpfs: one line naming the folder, the free space and the size."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO, run_cmd


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a fresh tmpfs of that size (unmounted afterwards); skips when mounting is not permitted."""
    mounted = []

    def mount(size: str):
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def _train(run_dir):
    return run_cmd([sys.executable, "-m", "remix_ds.train", str(REPO / "configs/tiny.yaml"), f"train.output_dir={run_dir}",
                    "train.max_steps=3", "train.save_every=1", "data.kvr.num_pairs=16", "train.progress_bar=false",
                    "train.tensorboard=false"], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays_latest(small_disk):
    """A 15 MB checkpoint: on 24 MB the second save is refused before writing (the size of the first is known);
    on 8 MB the first save fills the disk (it used to print a 39-line torch traceback)."""
    run = small_disk("24m") / "run"
    proc = _train(run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"remix-ds: error: {run}: disk full before saving checkpoint-2: ")
    assert " MiB free, the save needs about 14." in last and "MiB (the size of checkpoint-1); checkpoint-1 stays latest" in last
    assert (run / "latest").read_text().strip() == "checkpoint-1"
    assert not list(run.glob(".tmp-checkpoint-*")) and not (run / "checkpoint-2").exists()

    run = small_disk("8m") / "run"
    proc = _train(run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"remix-ds: error: {run}: disk full while saving checkpoint-1: ")
    assert "it wrote before the disk filled; no earlier checkpoint exists" in last
    assert not list(run.glob(".tmp-checkpoint-*")) and not (run / "latest").exists()
