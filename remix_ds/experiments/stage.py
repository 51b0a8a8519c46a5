"""One stage of a cell: in this process, or as its own process (optionally under `deepspeed`).

    python -m remix_ds.experiments.stage STAGE_DIR/stage_config.json
    deepspeed --num_gpus 4 --module remix_ds.experiments.stage STAGE_DIR/stage_config.json

Builds the eval hooks (timed apart from training) and regularizers the config asks for, runs the
Trainer with them (resume=auto continues a killed stage from its newest checkpoint), and on
success writes `RUN_DIR/stage_done.json` (rank 0, last): wall time, eval time, steps, why
the stage ended (`stop_reason`: cap, eval_metric or loss). A stage folder with that file is never run again.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from remix_ds.assemble import build_trainer
from remix_ds.cachedir import write_text_atomic
from remix_ds.config import RunConfig, load_config
from remix_ds.engine import dist
from remix_ds.eval.hook import build_eval_hooks

DONE = "stage_done.json"


def is_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / DONE).is_file()


def read_done(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / DONE).read_text())


def stop_reason(done: dict) -> str:
    """Why a finished stage ended (its `stage_done.json`): `cap` (all its epochs), `eval_metric` (the EM target)
    or `loss` (the loss rule, train.stop_loss_below). Files written before the field existed: from stopped_early."""
    return done.get("stop_reason") or ("eval_metric" if done.get("stopped_early") else "cap")


class _Timed:
    """Wraps an eval hook and adds up the seconds its calls take."""

    def __init__(self, hook, clock: dict):
        self.hook, self.clock = hook, clock

    def setup(self, trainer) -> None:
        self.hook.setup(trainer)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.hook(*args, **kwargs)
        finally:
            self.clock["eval_s"] += time.perf_counter() - start


def run_stage(cfg: RunConfig) -> dict:
    """Train one stage to completion (or to its early-stop target); return and write its stats."""
    start = time.perf_counter()
    clock = {"eval_s": 0.0}
    trainer = build_trainer(cfg, [_Timed(h, clock) for h in build_eval_hooks(cfg)])
    build_s = time.perf_counter() - start
    start_step = trainer.step
    try:
        rows = trainer.fit()
    finally:
        trainer.close()
    out = Path(cfg.train.output_dir)
    if not (out / "final" / "config.json").is_file():
        raise RuntimeError(f"stage {out} ended without a final export (train.stop_at_step or export_final=false?)")
    train_rows = [r for r in rows if "step_time_s" in r]
    stats = {
        "steps": trainer.step,
        "steps_this_run": trainer.step - start_step,
        "total_steps": trainer.total_steps,
        "stopped_early": trainer.stopped_early,
        "stop_reason": trainer.stop_reason,
        "epochs": trainer.step * trainer.gas / max(trainer.loader.batches_per_epoch, 1),
        "wall_s": time.perf_counter() - start,
        "build_s": build_s,
        "eval_s": clock["eval_s"],
        "logged_step_time_s": sum(r["step_time_s"] for r in train_rows),
        "tokens_per_s": (sum(r["tokens"] for r in train_rows) / max(sum(r["step_time_s"] for r in train_rows), 1e-9)
                         if train_rows else 0.0),
        "world_size": trainer.world,
        "resumed_from_step": start_step,
    }
    if dist.is_main():
        write_text_atomic(out / DONE, json.dumps(stats, indent=2) + "\n")
    return stats


def main(argv: list[str] | None = None) -> None:
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--local_rank")]
    run_stage(load_config(argv[0], argv[1:]))


if __name__ == "__main__":
    main()
