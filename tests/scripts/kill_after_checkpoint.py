"""Run `remix-ds ARGS...` and SIGKILL the process right after it writes a checkpoint at step >= K.

    python tests/scripts/kill_after_checkpoint.py K forgetting replay-experiment CONFIG [overrides...]

A real kill (no cleanup, no atexit), at a deterministic point: the checkpoint is complete
(renamed, `latest` updated) and nothing after it has run.
"""

import os
import signal
import sys

from remix_ds import cli
from remix_ds.engine import trainer

K = int(sys.argv[1])
_save = trainer.Trainer._save


def save_then_die(self):
    path = _save(self)
    if self.step >= K:
        os.kill(os.getpid(), signal.SIGKILL)
    return path


trainer.Trainer._save = save_then_die
sys.exit(cli.main(sys.argv[2:]))
