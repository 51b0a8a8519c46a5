"""Single-process engine behaviour (world of one, still the real DeepSpeed ZeRO-3 engine)."""

import sys

from conftest import REPO, run_cmd
from remix_ds.engine.metrics import read_metrics


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
