"""Eval section of the run config (owned by the evaluator; placeholder until it lands)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """What the trainer's eval hook scores."""

    datasets: list[str] | None = None
    """Datasets to score by exact match in the eval hook (default: none)."""
