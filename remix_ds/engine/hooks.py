"""The trainer's two extension points: eval hooks and regularizers.

The trainer builds neither: entry points (`remix_ds.train`, `experiments/stage.py`,
`forgetting/measure.py`) build them (`build_eval_hook` in eval/hook.py, `build_regularizers` in
baselines/__init__.py) and pass them to
``Trainer(cfg, eval_hooks=[...], regularizers=[...])``. So `engine/` imports nothing above it.

Eval hook (``EvalHook``), on every rank:

    setup(trainer)                      once, after the engine is built, before any resume
    __call__(model, step, out_dir)      every `train.eval_every` steps and at the end, with the
                                        (possibly partitioned) module; returns the same metrics
                                        dict on every rank (logged with the step)

Regularizer (``Regularizer``): adds to one optimizer step's objective without touching the main
loss. The trainer calls, on every rank, in this order:

    setup(trainer)                      once, after the engine is built, before any resume
    begin_step(micro_batches)           the step's micro-batches (this rank's, on the host)
    after_backward(i, batch)            after micro-batch i's main backward; may run its own
                                        forward/backward (gradients accumulate into the step)
    before_optimizer_step()             after the last backward, before the optimizer step:
                                        edit the (partitioned) gradients
    end_step() -> dict                  metrics for the step's row, identical on every rank (floats, or
                                        0-d device tensors: read only at log steps, no per-step sync)
    close()                             when the trainer closes (also on error)

Units (NOTE): the main loss of a step is sum(token NLL) / N_global (N: supervised tokens of the
step). A regularizer's backward must produce the gradient of its *step-level* term R; since
DeepSpeed averages gradients over ranks, a rank backpropagates ``world_size x`` its share of R
(as the trainer does for the main loss), and a closed-form gradient edit adds dR/dtheta as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class EvalHook(Protocol):
    """Scores the model during training; see the module docstring for when it is called."""

    def setup(self, trainer) -> None:
        """Called once on every rank after the engine is built (the trainer's tokenizer, rank and
        world size are known from here on)."""

    def __call__(self, model, step: int, out_dir: str | Path) -> dict[str, float]:
        """Metrics of ``model`` at ``step`` (the same dict on every rank); may write under ``out_dir``."""


class Regularizer:
    """No-op base: override what you need. Every method is called on all ranks together."""

    name = "regularizer"

    def setup(self, trainer) -> None:
        pass

    def begin_step(self, micro_batches: list[dict]) -> None:
        pass

    def after_backward(self, index: int, batch: dict) -> None:
        pass

    def before_optimizer_step(self) -> None:
        pass

    def end_step(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass
