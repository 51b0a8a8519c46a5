"""Loss-based stopping: end a stage once enough optimizer steps trained below a loss threshold.

The rule of the REMIX reference's `--stopping_condition sc=loss` (its `src/train.py`): after every
optimizer step, count the step if its training loss, reduced over all ranks, is below `threshold`;
the count is cumulative (a step above the threshold does not reset it) and the stage stops once it
reaches `steps`. Stopping never changes the learning-rate schedule, which is sized for the cap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LossStop:
    """Counts optimizer steps with loss < threshold; `update` says when the count reaches `steps`."""

    threshold: float
    steps: int
    count: int = 0

    def update(self, loss: float) -> bool:
        """Record one optimizer step's loss (the same value on every rank); True: stop after this step."""
        if loss < self.threshold:
            self.count += 1
        return self.count >= self.steps

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state.get("count", 0))
