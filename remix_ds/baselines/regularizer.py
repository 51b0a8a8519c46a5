"""The trainer's regularizer extension point.

A regularizer adds to one optimizer step's objective without touching the main loss. The
trainer calls, on every rank, in this order:

    setup(trainer)                      once, after the engine is built, before any resume
    begin_step(micro_batches)           the step's micro-batches (this rank's, on the host)
    after_backward(i, batch)            after micro-batch i's main backward; may run its own
                                        forward/backward (gradients accumulate into the step)
    before_optimizer_step()             after the last backward, before the optimizer step:
                                        edit the (partitioned) gradients
    end_step() -> dict                  metrics for the step's row, identical on every rank

Units (NOTE): the main loss of a step is sum(token NLL) / N_global (N: supervised tokens of the
step). A regularizer's backward must produce the gradient of its *step-level* term R; since
DeepSpeed averages gradients over ranks, a rank backpropagates ``world_size x`` its share of R
(as the trainer does for the main loss), and a closed-form gradient edit adds dR/dtheta as is.
"""

from __future__ import annotations


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


def build_regularizers(cfg) -> list[Regularizer]:
    """The regularizers `cfg.regularize` asks for (not set up yet)."""
    out: list[Regularizer] = []
    if cfg.regularize.ewc.lam > 0:
        from remix_ds.baselines.ewc import EWCRegularizer

        out.append(EWCRegularizer(cfg.regularize.ewc))
    if cfg.regularize.kl.beta > 0:
        from remix_ds.baselines.kl import KLRegularizer

        out.append(KLRegularizer(cfg.regularize.kl))
    return out
