"""Run configuration: typed sections, YAML/JSON loading, dotted CLI overrides, validation.

Precedence: command-line ``a.b=value`` > config file > defaults. ``RunConfig.validate(world_size)``
checks what depends on the launch (batch divisibility) before any model is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from remix_ds import configtools
from remix_ds.baselines.config import RegularizeConfig
from remix_ds.configtools import ConfigError
from remix_ds.data.config import DataConfig
from remix_ds.eval.config import EvalConfig


@dataclass
class TinyModelConfig:
    """Shape of the built-in random-init Llama used by the demo and the tests."""

    vocab_size: int = 2048
    """Sentencepiece vocabulary size of the locally trained tokenizer."""
    hidden_size: int = 128
    """Model width."""
    intermediate_size: int = 344
    """MLP width."""
    num_hidden_layers: int = 4
    """Number of decoder layers."""
    num_attention_heads: int = 4
    """Attention heads."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int = 1024
    """Longest sequence the rotary embedding is set up for."""
    seed: int = 0
    """Seed of the random initialization and of the tokenizer's training text."""

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("model.tiny.hidden_size must be divisible by model.tiny.num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("model.tiny.num_attention_heads must be divisible by model.tiny.num_key_value_heads")


@dataclass
class ModelConfig:
    """Which model to train and how to run its forward pass."""

    name_or_path: str = "tiny"
    """Hugging Face hub id or local folder of a causal LM, or `tiny` for the built-in spec."""
    tokenizer: str | None = None
    """Tokenizer hub id or folder; defaults to the model's own."""
    init_from: str | None = None
    """Start from an earlier stage: an exported HF folder or a `RUN_DIR/checkpoint-N` folder."""
    attn_implementation: Literal["auto", "flash_attention_2", "remix_varlen", "sdpa", "eager"] = "auto"
    """`auto`: flash_attention_2 when flash-attn imports and CUDA is present, else sdpa; `remix_varlen`: remix_ds.kernels.attention."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Training precision; `auto` is bf16 on GPU and fp32 on CPU."""
    fused_loss: Literal["auto", "on", "off"] = "auto"
    """Chunked lm_head + cross-entropy without full logits; `auto`: on where exact (bias-free lm_head, no logit softcap/scale)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    trust_remote_code: bool = False
    """Passed to `from_pretrained` for hub models with custom code."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the `tiny` model (used only when name_or_path is `tiny`)."""


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 5e-5
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Decay after warmup: cosine to `min_lr_ratio * lr`, or constant."""
    warmup_ratio: float = 0.05
    """Fraction of the total optimizer steps spent in linear warmup."""
    min_lr_ratio: float = 0.0
    """Final learning rate of the cosine schedule as a fraction of `lr`."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be in [0, 1), got {self.betas}")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0, got {self.grad_clip}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1] (a fraction of optim.lr), got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr * self.weight_decay >= 1:  # AdamW multiplies the weights by 1 - lr * weight_decay each step
            raise ConfigError(f"optim.lr * optim.weight_decay = {self.lr * self.weight_decay:g} must be < 1 (AdamW scales "
                              f"the weights by 1 - lr * weight_decay every step), got optim.weight_decay={self.weight_decay}")
        if self.eps <= 0:
            raise ConfigError(f"optim.eps must be > 0, got {self.eps}")


@dataclass
class TrainConfig:
    """Batching, length of training, logging and checkpointing."""

    output_dir: str = "runs/default"
    """Run folder: resolved config, metrics, TensorBoard logs, checkpoints, final export."""
    global_batch_size: int = 32
    """Examples per optimizer step across all ranks and micro-batches."""
    micro_batch_size: int = 4
    """Examples per micro-batch per rank (packed into rows of data.max_seq_len tokens); unused when micro_batch_tokens > 0."""
    micro_batch_tokens: int = 0
    """Token budget of a micro-batch (a multiple of data.max_seq_len: that many packed rows); 0 = off (micro_batch_size
    examples). The optimizer step stays global_batch_size examples; each rank's share is split into as many
    micro-batches of whole examples as the budget needs (docs/token_budget.md)."""
    prefetch_steps: int = 2
    """Optimizer steps of micro-batches a background thread prepares ahead (pinned memory on CUDA); 0 = synchronous."""
    epochs: float = 1.0
    """Passes over the stage's data stream (ignored when max_steps > 0)."""
    max_steps: int = 0
    """Optimizer steps to run; 0 means derive from epochs."""
    stop_at_step: int = 0
    """Save and exit once this step is reached, schedule unchanged (fits a run into job time limits)."""
    seed: int = 0
    """Seed of data order and of any randomness in training."""
    log_every: int = 1
    """Write metrics every N optimizer steps."""
    eval_every: int = 0
    """Run the eval hook every N optimizer steps (0: only at the end)."""
    early_stop_metric: str | None = None
    """Finish the stage early once this eval-hook metric (e.g. `eval/kvr/em`) reaches early_stop_value."""
    early_stop_value: float = 1.0
    """Threshold for early_stop_metric (checked at every eval, >=)."""
    stop_loss_below: float = 0.0
    """Finish the stage once stop_loss_steps optimizer steps had a training loss (mean over all ranks' supervised
    tokens) below this value, counted cumulatively (never reset); the schedule still spans epochs/max_steps.
    0 = off. The REMIX reference's `sc=loss`: 1e-4 and 10 steps."""
    stop_loss_steps: int = 10
    """How many below-threshold optimizer steps end the stage (with stop_loss_below > 0)."""
    save_every: int = 0
    """Save a checkpoint every N optimizer steps (0: only at the end)."""
    keep_last: int = 2
    """Keep the newest K complete checkpoints."""
    save_final: bool = True
    """Save a checkpoint when the stage ends (off for throwaway runs such as forgetting-matrix rows)."""
    resume: str = "auto"
    """`auto`: newest complete checkpoint in output_dir if any; `none`; or a checkpoint folder."""
    export_final: bool = True
    """Write a Hugging Face model folder to OUTPUT_DIR/final at the end."""
    tensorboard: bool = True
    """Also write metrics to TensorBoard (rank 0 only)."""
    progress_bar: bool = True
    """Show a tqdm bar on rank 0."""
    resume_fallback: bool = True
    """A damaged newest checkpoint: warn and resume from the newest intact one (false: refuse)."""
    allow_config_change: bool = False
    """Resume even if trajectory keys changed since the checkpoint; the change goes to RUN_DIR/config_changes.jsonl."""
    verify_hashes: bool = True
    """Check every checkpoint file's sha256 on resume (sizes are always checked); see docs/reliability.md."""
    nonfinite: Literal["stop", "skip_step"] = "stop"
    """A non-finite loss or gradient norm: `stop` the run at that step (nothing of it saved or exported), or
    `skip_step`: go on when DeepSpeed discarded the step's update (its overflow check), with a warning and
    `skipped_nonfinite: 1` in the step's metrics row; a non-finite step whose update was applied still stops."""

    def __post_init__(self):
        for name in ("global_batch_size", "micro_batch_size", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_tokens < 0 or self.prefetch_steps < 0:
            raise ConfigError("train.micro_batch_tokens and train.prefetch_steps must be >= 0")
        if min(self.max_steps, self.stop_at_step) < 0 or self.epochs < 0 or self.eval_every < 0 or self.save_every < 0:
            raise ConfigError("train.max_steps, train.stop_at_step, train.epochs, train.eval_every and train.save_every must be >= 0")
        if self.stop_loss_below < 0 or self.stop_loss_steps < 1:
            raise ConfigError(f"train.stop_loss_below must be >= 0 and train.stop_loss_steps >= 1, got "
                              f"{self.stop_loss_below} and {self.stop_loss_steps}")
        if self.max_steps == 0 and self.epochs == 0:
            raise ConfigError("set train.epochs > 0 or train.max_steps > 0")


@dataclass
class DeepSpeedConfig:
    """How the DeepSpeed config JSON is derived."""

    config: str = "zero3"
    """Template: `zero3`, `zero3_offload`, `zero2` (from ds_configs/) or a path to a JSON file."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; `auto` is nccl with CUDA, gloo on CPU."""


@dataclass
class WandbConfig:
    """Weights & Biases tracking of a run (rank 0); `wandb` is imported only when this is set."""

    project: str = "remix-ds"
    """W&B project."""
    group: str | None = None
    """Run group (a grid fills in its output folder's name, so its stages and cells share one group)."""
    mode: Literal["online", "offline", "disabled"] = "online"
    """`offline` writes the run under RUN_DIR/wandb with no network (`wandb sync` uploads it later)."""
    entity: str | None = None
    """W&B entity (team or user; None: the account's default)."""
    tags: list[str] = field(default_factory=list)
    """Tags of the run."""


@dataclass
class MetricsConfig:
    """Where training metrics go besides RUN_DIR/metrics.jsonl (and TensorBoard, train.tensorboard)."""

    wandb: WandbConfig | None = None
    """Also log to Weights & Biases (None: off), e.g. {project: remix, mode: offline}; pip install 'remix-ds[wandb]'."""


RESUME_NEUTRAL_KEYS = (
    "train.output_dir", "train.stop_at_step", "train.progress_bar", "train.tensorboard", "train.log_every",
    "train.save_every", "train.keep_last", "train.save_final", "train.export_final", "train.resume",
    "train.resume_fallback", "train.allow_config_change", "train.verify_hashes", "train.prefetch_steps",
    "train.nonfinite",
)
"""Keys that do not change the training trajectory: changing them between a save and a resume is not drift."""


@dataclass
class RunConfig:
    """A training run: one stage of a REMIX experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Model, tokenizer, attention and precision."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batching, duration, logging, checkpoints."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed template and backend."""
    data: DataConfig = field(default_factory=DataConfig)
    """What the stage trains on and how it is packed."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """What the eval hook scores."""
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    """Continual-learning baselines added to the stage loss (EWC, KL to the frozen model)."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Metric sinks beyond metrics.jsonl / TensorBoard: Weights & Biases (metrics.wandb)."""

    def grad_accum(self, world_size: int) -> int:
        """Loader units per optimizer step: micro-batches per rank, or 1 with micro_batch_tokens (one planned step)."""
        if self.train.micro_batch_tokens:
            return 1
        per_pass = self.train.micro_batch_size * world_size
        return self.train.global_batch_size // per_pass

    def validate(self, world_size: int) -> None:
        """Checks that need the world size; raise before any work starts (one line naming the key and a fix)."""
        import importlib.util

        if self.metrics.wandb is not None and importlib.util.find_spec("wandb") is None:  # on every rank, up front
            raise ConfigError("metrics.wandb is set but the wandb package is not installed: "
                              "pip install 'remix-ds[wandb]' (or set metrics.wandb=null)")
        t, g = self.train, self.train.global_batch_size
        if t.micro_batch_tokens:
            row = self.data.max_seq_len
            if t.micro_batch_tokens % row:
                fix = max(row, t.micro_batch_tokens // row * row)
                raise ConfigError(f"train.micro_batch_tokens={t.micro_batch_tokens} is not a multiple of "
                                  f"data.max_seq_len={row} (whole packed rows); use train.micro_batch_tokens={fix}")
            if g < world_size:
                raise ConfigError(f"train.global_batch_size={g} is smaller than world size {world_size} (a rank would "
                                  f"get no examples); use train.global_batch_size={world_size} or fewer ranks")
            return
        per_pass = t.micro_batch_size * world_size
        if g % per_pass:
            works = [m for m in range(min(t.micro_batch_size, g // world_size), 0, -1) if g % (m * world_size) == 0]
            fix = (f"use train.micro_batch_size={works[0]}" if works else
                   f"use train.global_batch_size={-(-g // per_pass) * per_pass} (a multiple of {per_pass})")
            raise ConfigError(
                f"train.global_batch_size={g} is not divisible by train.micro_batch_size={t.micro_batch_size} x "
                f"world size {world_size} = {per_pass}; {fix} (or set train.micro_batch_tokens)"
            )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(configtools.to_dict(self), indent=2) + "\n")


def config_drift(saved: dict, current: dict) -> dict[str, tuple]:
    """{dotted key: (saved, current)} for trajectory keys that differ between two `to_dict` configs
    (the one a checkpoint was written with, this run's), RESUME_NEUTRAL_KEYS excluded."""
    changes = configtools.diff(saved, current)
    # metrics.* (where metrics are logged) never changes the trajectory
    return {k: v for k, v in changes.items() if k not in RESUME_NEUTRAL_KEYS and k.split(".")[0] != "metrics"}


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a RunConfig: defaults < file < overrides."""
    return configtools.load(RunConfig, path, overrides)
