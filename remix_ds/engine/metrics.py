"""Metrics sinks: JSONL (one object per logged step), TensorBoard and Weights & Biases, on rank 0 only."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from remix_ds.cachedir import write_text_atomic
from remix_ds.config import WandbConfig
from remix_ds.configtools import ConfigError


def start_wandb(cfg: WandbConfig, out_dir: Path, name: str, config: dict, job_type: str = "train"):
    """A W&B run (`wandb.init`) writing under `out_dir/wandb`; ConfigError when wandb is not installed.

    `wandb` is imported here only, so runs without metrics.wandb never need it.
    """
    try:
        import wandb
    except ImportError:
        raise ConfigError("metrics.wandb is set but the wandb package is not installed: "
                          "pip install 'remix-ds[wandb]' (or set metrics.wandb=null)") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, mode=cfg.mode, tags=list(cfg.tags),
                      name=name, job_type=job_type, config=config, dir=str(out_dir), reinit="create_new")


def plain_values(values: dict) -> dict:
    """The numeric and string entries of a metrics row (what W&B logs); NaN becomes None."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or isinstance(v, (int, str)) or v is None:
            out[k] = v
        elif isinstance(v, float):
            out[k] = None if math.isnan(v) else v
    return out


class MetricsWriter:
    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool = True, wandb: WandbConfig | None = None,
                 run_config: dict | None = None):
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if wandb is not None:  # first: a missing package fails before any file is opened
            self._wandb = start_wandb(wandb, out_dir, out_dir.name, run_config or {})
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
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in plain_values(values).items() if not isinstance(v, str)}, step=step)

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
            write_text_atomic(self.path, "".join(kept))
        self._file = open(self.path, "a", buffering=1)
        return dropped

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
