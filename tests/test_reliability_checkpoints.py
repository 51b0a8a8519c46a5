"""Checkpoint integrity under injected faults (issue 15, items 1 and 5).

Fast tests build a checkpoint with the real `save_checkpoint` in a world of one and a stand-in
engine that writes DeepSpeed-named files; the slow ones train the tiny model for real (one and
two ranks) and damage what it wrote. docs/reliability.md maps each fault to its test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, deepspeed_cmd, run_cmd
from remix_ds.engine import checkpoint as ckpt_lib
from remix_ds.engine.export import clean_stale_exports, export_checkpoint
from remix_ds.engine.metrics import MetricsWriter, read_metrics
from remix_ds.errors import CheckpointError

MODEL = "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


class FakeEngine:
    """Writes and reads DeepSpeed-named files; records whether anything was unpickled."""

    def __init__(self):
        self.loaded = []

    def save_checkpoint(self, save_dir, tag, client_state=None, save_latest=False):
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"module": {"w": torch.arange(64.0)}, **(client_state or {})}, folder / MODEL)
        torch.save({"optimizer": {"m": torch.ones(4096)}}, folder / OPTIM)

    def load_checkpoint(self, load_dir, tag, **kw):
        folder = Path(load_dir) / tag
        self.loaded.append(tag)
        torch.load(folder / MODEL, weights_only=False)
        torch.load(folder / OPTIM, weights_only=False)
        return str(folder), {}


def _save(run_dir: Path, step: int, engine=None) -> Path:
    def hf(folder):
        (folder / "config.json").write_text('{"model_type": "llama"}\n')

    return ckpt_lib.save_checkpoint(engine or FakeEngine(), run_dir, step, {"loader": {"rows": step}}, hf, keep_last=3)


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    _save(d, 2)
    _save(d, 4)
    return d


def test_complete_json_records_size_and_sha256_of_every_file(run_dir):
    ckpt = run_dir / "checkpoint-4"
    meta = json.loads((ckpt / "complete.json").read_text())
    assert meta["step"] == 4 and meta["world_size"] == 1 and meta["hash"] == "sha256"
    on_disk = sorted(p.name for p in ckpt.iterdir() if p.name != "complete.json")
    assert sorted(meta["files"]) == on_disk == ["config.json", "rank_state_0.pt", MODEL, OPTIM]
    for name, rec in meta["files"].items():
        assert rec["size"] == (ckpt / name).stat().st_size
        assert rec["sha256"] == ckpt_lib.hash_file(ckpt / name)
    assert meta["files"][OPTIM]["rank"] == 0 and meta["files"]["config.json"]["rank"] is None
    ckpt_lib.verify_checkpoint(ckpt)  # intact: no error


def _flip(path: Path, n: int = 64, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if at is None else at
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fault, check", [
    ("flip", "sha256 check failed (same size, different content)"),
    ("truncate", "size check failed"),
    ("empty", "size check failed (0 bytes"),
    ("delete", "missing (recorded in complete.json)"),
])
def test_damaged_optimizer_file_is_named_with_the_failed_check(run_dir, fault, check):
    path = run_dir / "checkpoint-4" / OPTIM
    if fault == "flip":
        _flip(path)
    elif fault == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif fault == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(CheckpointError) as err:
        ckpt_lib.verify_checkpoint(run_dir / "checkpoint-4")
    assert str(err.value).startswith(f"{path}: {check}"), str(err.value)
    # sizes are checked even without hashes; a same-size flip then passes (documented switch)
    if fault == "flip":
        ckpt_lib.verify_checkpoint(run_dir / "checkpoint-4", hashes=False)
    else:
        with pytest.raises(CheckpointError, match="size check failed|missing"):
            ckpt_lib.verify_checkpoint(run_dir / "checkpoint-4", hashes=False)


def test_fallback_picks_the_newest_intact_checkpoint_and_warns(run_dir, capsys):
    _flip(run_dir / "checkpoint-4" / OPTIM)
    candidates = ckpt_lib.resume_candidates(run_dir)
    assert [p.name for p in candidates] == ["checkpoint-4", "checkpoint-2"]
    assert ckpt_lib.select_checkpoint(candidates, hashes=True, fallback=True) == run_dir / "checkpoint-2"
    out = capsys.readouterr().out
    assert f"WARNING: {run_dir / 'checkpoint-4'} is damaged: {run_dir / 'checkpoint-4' / OPTIM}: sha256 check failed" in out
    with pytest.raises(CheckpointError, match=r"optim_states.pt: sha256 check failed.*train.resume_fallback=false"):
        ckpt_lib.select_checkpoint(candidates, hashes=True, fallback=False)
    _flip(run_dir / "checkpoint-2" / MODEL, n=4, at=100)
    with pytest.raises(CheckpointError, match="every checkpoint is damaged"):
        ckpt_lib.select_checkpoint(candidates, hashes=True, fallback=True)


def test_corrupt_model_states_pickle_is_refused_before_anything_is_unpickled(run_dir, monkeypatch):
    """A pickle whose header claims a huge storage made a resume allocate 18 GB; now the hash refuses it."""
    path = run_dir / "checkpoint-4" / MODEL
    _flip(path, n=16, at=40)
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or {})
    with pytest.raises(CheckpointError, match=f"{MODEL}: sha256 check failed"):
        ckpt_lib.select_checkpoint([run_dir / "checkpoint-4"], hashes=True, fallback=False)
    assert calls == []


def test_damaged_rank_state_that_passes_size_checks_is_named_when_loading(run_dir):
    path = run_dir / "checkpoint-4" / "rank_state_0.pt"
    path.write_bytes(b"\0" * path.stat().st_size)
    with pytest.raises(CheckpointError, match=f"^{path}: cannot be loaded"):
        ckpt_lib.load_checkpoint(FakeEngine(), run_dir / "checkpoint-4")


def test_unreadable_complete_json_names_the_file(run_dir):
    (run_dir / "checkpoint-4" / "complete.json").write_text('{"step": 4,')
    with pytest.raises(CheckpointError, match=r"checkpoint-4/complete.json: unreadable"):
        ckpt_lib.verify_checkpoint(run_dir / "checkpoint-4")


def test_export_verifies_the_checkpoint_first(run_dir, tmp_path):
    path = run_dir / "checkpoint-4" / OPTIM
    _flip(path)
    with pytest.raises(CheckpointError, match=f"^{path}: sha256 check failed"):
        export_checkpoint(run_dir / "checkpoint-4", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stale_export_temp_folders_are_removed(tmp_path):
    for name in (".tmp-final-abc123", ".tmp-init-s1-checkpoint-3-x9", ".tmp-checkpoint-4", "final"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x" * 10)
    removed = clean_stale_exports(tmp_path)
    assert sorted(p.name for p in removed) == [".tmp-final-abc123", ".tmp-init-s1-checkpoint-3-x9"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-checkpoint-4", "final"]


def test_metrics_drop_rows_after_the_resumed_step(tmp_path):
    w = MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    for step in range(1, 6):
        w.log(step, {"loss": float(step)})
    w._file.write('{"step": 6, "lo')  # a row torn by a kill
    assert w.drop_after(3) == 3
    w.log(4, {"loss": 40.0})
    w.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert not list(tmp_path.glob(".*.tmp"))


# ---- the real engine ------------------------------------------------------------------------
CONFIG = str(REPO / "configs" / "tiny.yaml")


def _args(run_dir, *extra):
    return [f"train.output_dir={run_dir}", "train.max_steps=6", "train.save_every=2", "train.keep_last=2",
            "train.progress_bar=false", "train.tensorboard=false", "data.kvr.num_pairs=32", "data.max_seq_len=64",
            *extra]


def _train(run_dir, *extra, check=True):
    return run_cmd([sys.executable, "-m", "remix_ds.train", CONFIG, *_args(run_dir, *extra)], check=check)


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("remix-ds: ")]


@pytest.mark.slow
def test_flipped_optimizer_bytes_fall_back_to_the_intact_checkpoint_with_its_exact_losses(tmp_path):
    run_dir = tmp_path / "run"
    _train(run_dir, "train.stop_at_step=4")  # checkpoints 2 and 4, rows for steps 1-4
    first = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    assert sorted(first) == [1, 2, 3, 4]
    damaged = run_dir / "checkpoint-4" / OPTIM
    _flip(damaged)

    refused = _train(run_dir, "train.resume_fallback=false", check=False)
    assert refused.returncode == 2
    assert _error_lines(refused) == [f"remix-ds: error: {damaged}: sha256 check failed (same size, different content); "
                                     "not falling back to an older checkpoint (train.resume_fallback=false)"]
    assert "Traceback" not in refused.stderr
    (run_dir / ".tmp-final-killed").mkdir()  # a kill during an earlier export
    (run_dir / ".tmp-final-killed" / "model.safetensors").write_bytes(b"x" * 1000)

    resumed = _train(run_dir)
    assert f"WARNING: {run_dir / 'checkpoint-4'} is damaged: {damaged}: sha256 check failed" in resumed.stdout
    assert f"resumed from {run_dir / 'checkpoint-2'} at step 2 (dropped 2 metrics rows after it)" in resumed.stdout
    assert "removed .tmp-final-killed" in resumed.stdout and not (run_dir / ".tmp-final-killed").exists()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # one row per step
    for step in (3, 4):  # re-run from checkpoint-2: the same losses as the first time
        assert rows[step - 1]["loss"] == pytest.approx(first[step]["loss"], rel=1e-6, abs=1e-7)
        assert rows[step - 1]["lr"] == pytest.approx(first[step]["lr"], rel=1e-9)
    assert (run_dir / "latest").read_text().strip() == "checkpoint-6"
    ckpt_lib.verify_checkpoint(run_dir / "checkpoint-6")


@pytest.mark.slow
def test_two_ranks_hash_their_own_files_and_a_damaged_rank_file_is_one_error_line(tmp_path):
    run_dir = tmp_path / "run"
    target = ["remix_ds.train", CONFIG, *_args(run_dir, "train.max_steps=2", "train.save_every=0",
                                                "train.export_final=false")]
    run_cmd(deepspeed_cmd(target, module=True))
    ckpt = run_dir / "checkpoint-2"
    meta = json.loads((ckpt / "complete.json").read_text())
    assert meta["world_size"] == 2
    owners = {name: rec["rank"] for name, rec in meta["files"].items()}
    for r in (0, 1):
        assert owners[f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"] == r
        assert owners[f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"] == r
        assert owners[f"rank_state_{r}.pt"] == r
    assert owners["config.json"] is None and owners["run_config.json"] is None
    ckpt_lib.verify_checkpoint(ckpt)
    damaged = ckpt / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    damaged.write_bytes(damaged.read_bytes()[:-10])  # truncated: only rank 1 checks this file
    proc = run_cmd(deepspeed_cmd(target + ["train.resume_fallback=false"], module=True),
                   check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if "remix-ds: error:" in line]
    assert len(lines) == 1 and f"{damaged}: size check failed" in lines[0], out[-3000:]
    assert "Traceback" not in out


@pytest.mark.slow
def test_cli_export_of_a_damaged_checkpoint_is_one_line(run_dir, tmp_path):
    path = run_dir / "checkpoint-4" / OPTIM
    path.write_bytes(b"")
    proc = run_cmd([sys.executable, "-m", "remix_ds.cli", "export", str(run_dir / "checkpoint-4"), str(tmp_path / "o")],
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"remix-ds: error: {path}: size check failed (0 bytes, complete.json records "
        f"{json.loads((run_dir / 'checkpoint-4' / 'complete.json').read_text())['files'][OPTIM]['size']})")
    assert "Traceback" not in proc.stderr
