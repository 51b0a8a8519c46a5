"""Single-process engine behaviour (world of one, still the real DeepSpeed ZeRO-3 engine)."""

import sys

import pytest

from helpers import REPO, run_cmd
from remix_ds.engine.metrics import read_metrics

pytestmark = pytest.mark.slow  # launches deepspeed / subprocesses


def test_early_stop_on_eval_metric_and_resume_does_not_continue(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "remix_ds.train", str(REPO / "configs/tiny.yaml"), f"train.output_dir={run_dir}",
            "data.kvr.num_pairs=8", "train.global_batch_size=8", "train.micro_batch_size=8", "train.epochs=200",
            "train.eval_every=10", "train.log_every=100", "eval.datasets=[kvr]", "eval.mode=fused",
            "train.early_stop_metric=eval/kvr/em", "train.early_stop_value=1.0", "train.progress_bar=false",
            "optim.schedule=constant", "optim.warmup_ratio=0"]
    first = run_cmd(args)
    rows = read_metrics(run_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval/kvr/em" in r]
    assert evals, rows
    stop_step = evals[-1]["step"]
    assert evals[-1]["eval/kvr/em"] == 1.0 and all(r["eval/kvr/em"] < 1.0 for r in evals[:-1])
    assert stop_step < 200 and stop_step % 10 == 0
    assert f"reached 1.0 at step {stop_step}" in first.stdout
    assert (run_dir / "latest").read_text().strip() == f"checkpoint-{stop_step}"
    assert (run_dir / "final" / "model.safetensors").is_file()
    # Running the same command again resumes the finished stage and trains nothing more.
    run_cmd(args)
    assert read_metrics(run_dir / "metrics.jsonl")[-1]["step"] == stop_step


def test_stage_two_starts_from_a_stage_one_checkpoint(tmp_path):
    """model.init_from=RUN/checkpoint-N: the ZeRO shards are consolidated once and loaded, with a
    fresh optimizer and schedule; the weights equal stage 1's end-of-run export."""
    import torch
    from safetensors.torch import load_file

    base = [sys.executable, "-m", "remix_ds.train", str(REPO / "configs/tiny.yaml"), "data.kvr.num_pairs=16",
            "train.max_steps=3", "train.progress_bar=false", "train.tensorboard=false"]
    stage1, stage2 = tmp_path / "s1", tmp_path / "s2"
    run_cmd(base + [f"train.output_dir={stage1}"])
    run_cmd(base + [f"train.output_dir={stage2}", f"model.init_from={stage1}/checkpoint-3", "data.kvr.seed=1"])
    init = next(stage2.glob("init-*"))
    a, b = load_file(stage1 / "final" / "model.safetensors"), load_file(init / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    rows = read_metrics(stage2 / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]  # a fresh run, not a resume of stage 1
    assert rows[0]["lr"] == 0.0  # fresh warmup (tiny.yaml: warmup_ratio 0.1)
    # Stage 1 already trained these weights: stage 2 starts below a random init's loss (~7.6).
    assert rows[0]["loss"] < read_metrics(stage1 / "metrics.jsonl")[0]["loss"]
