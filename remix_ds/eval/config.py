"""Eval section of the run config: what the eval hook and `remix-ds eval` score, and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from remix_ds.configtools import ConfigError
from remix_ds.data.config import SourceConfig

EvalMode = Literal["auto", "fused", "generate"]
MatcherName = Literal["auto", "exact", "contains", "gsm8k", "math"]


@dataclass
class EvalConfig:
    """What the trainer's eval hook scores by exact match, and how."""

    datasets: list[str] = field(default_factory=list)
    """Sets to score: registered names or local files, optionally `NAME:heldout` / `NAME:train` (default train split)."""
    sources: list[SourceConfig] = field(default_factory=list)
    """How to load a named set not trained in this stage (e.g. stage 1's D_A): data_files, num_examples, heldout_size, subsample_seed."""
    n: int = 0
    """Score only the first n examples of each set (0: all)."""
    mode: EvalMode = "auto"
    """`fused`: teacher-forced token-level EM (one forward pass); `generate`: greedy decoding + string matcher; `auto`: fused where it is exact, else generate."""
    matcher: MatcherName = "auto"
    """`exact` (REMIX strip().lower() equality), `contains` (WebQA), `gsm8k`, `math`; `auto` picks by dataset."""
    normalize: bool = False
    """Also drop punctuation/articles and squash spaces before matching (SQuAD-style)."""
    use_aliases: bool = True
    """Count a prediction matching any alias of the gold answer (forces generation for sets with aliases)."""
    max_seq_len: int = 0
    """Fused path: tokens per packed row (longer examples get a row of their own); 0: auto (one row per batch with flash-attn; with sdpa/eager one example per causal row, rows sorted by length; else ~4 examples per row)."""
    max_batch_tokens: int = 8192
    """Fused path: tokens per forward pass (rows x row length)."""
    batch_size: int = 32
    """Generation path: prompts per `generate` call."""
    max_new_tokens: int = 64
    """Generation path: longest answer generated."""
    stop_strings: list[str] = field(default_factory=list)
    """Generation path: also stop at (and cut before) any of these strings."""
    gather_params: bool = True
    """ZeRO-3: gather the full model on every rank once per evaluation (fast); false keeps it partitioned and runs ranks in lockstep."""
    key_span_delimiters: tuple[str, str] = ("[[", "]]")
    """Key-span markers (as data.key_span_delimiters): stripped from prompts and golds before scoring, and each marked answer span is scored (span_acc, span_nll); sets without them are unaffected."""
    write_rows: bool = True
    """Eval hook: write per-example JSONL and metrics JSON under RUN_DIR/eval/step-N/."""

    def __post_init__(self):
        for name in ("max_batch_tokens", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.n < 0 or self.max_seq_len < 0:
            raise ConfigError("eval.n and eval.max_seq_len must be >= 0")
        if self.max_batch_tokens < self.max_seq_len:
            raise ConfigError(f"eval.max_batch_tokens ({self.max_batch_tokens}) must be >= eval.max_seq_len ({self.max_seq_len})")
        if len(set(self.datasets)) != len(self.datasets):
            raise ConfigError(f"eval.datasets has duplicates: {self.datasets}")
        open_, close = self.key_span_delimiters
        if not open_ or not close or open_ == close:
            raise ConfigError("eval.key_span_delimiters must be two different non-empty strings")
        for i, s in enumerate(self.sources):
            s.validate(f"eval.sources[{i}]")
