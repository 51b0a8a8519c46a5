"""Regularize section of the run config: continual-learning baselines applied during a stage.

`regularize.ewc` (elastic weight consolidation) and `regularize.kl` (KL to the frozen model the
stage started from). Both are off by default (`lam` / `beta` = 0). Units of the added terms are
those of the logged `loss` (nats per supervised token of the optimizer step), see
remix_ds/baselines/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from remix_ds.configtools import ConfigError


@dataclass
class EWCConfig:
    """Elastic weight consolidation: lam/2 * sum_i F_i (theta_i - theta*_i)^2 with the diagonal Fisher of D_A."""

    lam: float = 0.0
    """EWC strength lambda (0 disables EWC); the penalty is added to the per-token step loss."""
    dataset: str = ""
    """D_A for the Fisher estimate, `NAME[:split]`, loaded like an eval set (stage/replay/eval.sources entry of that name, else registry defaults)."""
    num_examples: int = 256
    """Examples of D_A in the empirical Fisher (the first N of the split; 0: all)."""
    fisher_reduction: Literal["sum", "mean"] = "sum"
    """Per-example loss whose squared gradient is accumulated: `sum` of answer-token NLLs (the example's log-likelihood) or their `mean`."""
    state_dir: str | None = None
    """Folder of the Fisher + anchor weights (safetensors by parameter name); default RUN_DIR/ewc. Reused, not recomputed, when it exists."""

    def validate(self, prefix: str) -> None:
        if self.lam < 0 or self.num_examples < 0:
            raise ConfigError(f"{prefix}.lam and {prefix}.num_examples must be >= 0")
        if self.lam > 0 and not self.dataset and not self.state_dir:
            raise ConfigError(f"{prefix}.lam > 0 needs {prefix}.dataset (D_A for the Fisher) or an existing {prefix}.state_dir")


@dataclass
class KLConfig:
    """beta * KL(p_frozen || p_current) per token, the frozen model being the stage's starting weights."""

    beta: float = 0.0
    """KL weight beta (0 disables the KL term)."""
    data: str = "batch"
    """Tokens the KL is taken over: `batch` (supervised tokens of each stage micro-batch), `generic` (data.mix.generic_corpus: raw windows with loss_mode=all, completion rows with answer) or a dataset `NAME[:split]` / file."""
    loss_mode: Literal["answer", "all"] = "all"
    """For data != batch: which tokens of a KL row count (`answer` tokens only, or `all`)."""
    num_examples: int = 1024
    """For data != batch: size of the fixed KL row pool (cycled through in order)."""
    micro_batch_size: int = 0
    """For data != batch: KL rows per stage micro-batch per rank (0: train.micro_batch_size)."""
    reference: str | None = None
    """Frozen model (HF folder or hub id); default: the weights this stage starts from (model.init_from, else model.name_or_path)."""

    def validate(self, prefix: str) -> None:
        if self.beta < 0 or self.num_examples < 1 or self.micro_batch_size < 0:
            raise ConfigError(f"{prefix}.beta and {prefix}.micro_batch_size must be >= 0, {prefix}.num_examples >= 1")


@dataclass
class RegularizeConfig:
    """Continual-learning baselines added to the stage's objective."""

    ewc: EWCConfig = field(default_factory=EWCConfig)
    """Elastic weight consolidation towards the stage's starting weights."""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL divergence to the frozen starting model."""

    def __post_init__(self):
        self.ewc.validate("regularize.ewc")
        self.kl.validate("regularize.kl")

    @property
    def active(self) -> bool:
        return self.ewc.lam > 0 or self.kl.beta > 0
