"""Metrics sinks: JSONL (one object per logged step) and TensorBoard, on rank 0 only."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class MetricsWriter:
    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        # Append: a resumed run continues the same file (after drop_after(resumed step)).
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def drop_after(self, step: int) -> int:
        """Remove rows with step > `step` (a resume re-runs those steps), atomically; returns how many.

        The file is rewritten to a temp file and `os.replace`d, so a crash leaves the old or the new
        file, never half of one. A torn last line (a kill mid-write) is dropped too.
        """
        if not self.enabled:
            return 0
        self._file.close()
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
                dropped += 1
            else:
                kept.append(line + "\n")
        if dropped:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", buffering=1)
        return dropped

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
