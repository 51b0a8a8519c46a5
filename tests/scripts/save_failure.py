"""Crash while saving a checkpoint and record what the test checks.

    python tests/scripts/save_failure.py CONFIG [overrides...]

Trains to train.stop_at_step (saving a checkpoint there), trains one more step, then saves again
with a DeepSpeed save that writes part of its files and fails (a full disk). Writes
OUTPUT_DIR/crash.json with the loss of the step whose checkpoint was lost.
"""

import json
import sys
from pathlib import Path

from remix_ds.baselines import build_regularizers
from remix_ds.config import load_config
from remix_ds.engine.trainer import Trainer
from remix_ds.errors import CheckpointError
from remix_ds.eval.hook import build_eval_hooks

cfg = load_config(sys.argv[1], sys.argv[2:])
trainer = Trainer(cfg, eval_hooks=build_eval_hooks(cfg), regularizers=build_regularizers(cfg))
trainer.fit()  # stops at stop_at_step and saves checkpoint-N
stats = trainer.train_step(trainer._next_step_batches())
trainer.step += 1


def failing_save(save_dir, tag=None, **kwargs):
    partial = Path(save_dir) / tag
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    raise OSError(28, "No space left on device")


trainer.engine.save_checkpoint = failing_save
try:
    trainer._save()
except (OSError, CheckpointError) as e:  # a full disk is one CheckpointError line
    Path(cfg.train.output_dir, "crash.json").write_text(json.dumps({"step": trainer.step, "loss": stats.loss, "error": str(e)}))
else:
    raise SystemExit("the simulated failure did not raise")
finally:
    trainer.close()
