"""Data section of the run config (owned by the data pipeline; placeholder until it lands)."""

from __future__ import annotations

from dataclasses import dataclass

from remix_ds.configtools import ConfigError


@dataclass
class DataConfig:
    """What a stage trains on and how it is packed."""

    dataset: str = "kvr"
    """Registered dataset name or a local jsonl/json/parquet file."""
    max_seq_len: int = 512
    """Token budget of one packed row; longer examples are dropped and counted."""

    def __post_init__(self):
        if self.max_seq_len < 8:
            raise ConfigError(f"data.max_seq_len must be >= 8, got {self.max_seq_len}")
