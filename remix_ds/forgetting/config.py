"""Config of a forgetting-matrix study: the base run, the upstream set, the tasks, and the
settings of `measure`, `analyze`, `predict` and `replay-experiment`.

Loaded like a run config (YAML/JSON + dotted overrides, ``ConfigError`` naming the key)::

    output_dir: runs/forgetting
    finetune: {model: {name_or_path: tiny}, train: {global_batch_size: 32, micro_batch_size: 8}}
    upstream: {kind: windows, num_examples: 1000, corpus: builtin, window_tokens: 128}
    tasks:
      - {dataset: gsm8k, num_examples: 2000}
      - {name: code, dataset: evolcode, data_files: data/evol.jsonl, num_examples: 2000}
    measure: {steps: 1000, lr: 2.0e-6, at_fractions: [0.1]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from remix_ds import configtools
from remix_ds.config import RunConfig
from remix_ds.configtools import ConfigError
from remix_ds.data.config import SourceConfig
from remix_ds.data.config import LOCAL_SUFFIXES

Method = Literal["row_mean", "col_mean", "additive", "knn_baseline", "svd", "knn", "mf", "mf_refit", "random",
                 "emb_cos", "rep_dot", "grad_sim"]
# svd is not a default: its 1000 SGD epochs cost N x 1000 numpy steps per split and seed (paper.yaml lists it).
METHODS: tuple[str, ...] = ("row_mean", "col_mean", "additive", "knn_baseline", "knn", "mf", "mf_refit", "random",
                            "emb_cos", "rep_dot", "grad_sim")
BinaryMethod = Literal["random", "col_mean", "additive", "mf", "lmf", "lmf_additive", "lgmf", "lgmf_additive"]
BINARY_METHODS: tuple[str, ...] = ("random", "col_mean", "additive", "mf", "lmf", "lmf_additive", "lgmf",
                                   "lgmf_additive")
Arm = Literal["none", "uniform", "predicted", "oracle", "online"]


@dataclass
class UpstreamConfig:
    """The N upstream examples whose forgetting is measured (the matrix columns)."""

    kind: Literal["windows", "examples"] = "windows"
    """`windows`: token windows of pretraining shards, every token but the first counted; `examples`: instruction examples, answer tokens + EOS counted."""
    num_examples: int = 1000
    """N: number of upstream examples."""
    corpus: str = "builtin"
    """windows: `builtin` (the cached generic corpus) or a Megatron shard folder/prefix."""
    window_tokens: int = 128
    """windows: tokens per window."""
    seed: int = 0
    """windows: seed of which windows are drawn (distinct windows, without replacement)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """examples: the dataset; the first num_examples of its train split are used."""
    family: Literal["", "dolly", "tulu", "flan"] = ""
    """examples: take the upstream set from a task family's source (forgetting/tasks.py; the published Tulu held-out sample: tulu) instead of `source`; source.data_files: its local copy."""
    per_subset: int = 1000
    """family: at most this many rows per subset (published: <= 1000 per Tulu subset), after skip_per_subset; subsets are interleaved round-robin."""
    answer_tokens: Literal["final_turn_eos", "reference"] = "final_turn_eos"
    """examples: the tokens whose mean NLL is an example's score. `final_turn_eos` (ours): the final assistant turn + EOS (the evaluator's answer_nll); `reference` (the paper's get_ppl_arr): the tokens after the last assistant marker up to, not including, EOS, and chats with more than one assistant turn are left out (its legacy EOS finder makes them NaN, then drops the column)."""
    skip_per_subset: int = 0
    """family: rows of each subset skipped first; >= the same family's tasks' num_examples + heldout_size keeps the two disjoint."""

    def __post_init__(self):
        if self.num_examples < 2:
            raise ConfigError(f"upstream.num_examples must be >= 2, got {self.num_examples}")
        if self.window_tokens < 2:
            raise ConfigError(f"upstream.window_tokens must be >= 2, got {self.window_tokens}")
        self.source.validate("upstream.source")
        if self.per_subset < 1 or self.skip_per_subset < 0:
            raise ConfigError("upstream.per_subset must be >= 1 and upstream.skip_per_subset >= 0")


@dataclass
class TaskConfig(SourceConfig):
    """One fine-tuning task (a matrix row): a dataset and its split, as in the `data` section."""

    name: str = ""
    """Row label and file name; empty: the dataset name (a file's stem), or FAMILY-SUBSET."""
    family: Literal["", "dolly", "tulu", "flan"] = ""
    """A task family (forgetting/tasks.py): dolly (a `category`), tulu (a Tulu-v2 `dataset`), flan (a FLAN `task_name`); empty: `dataset` as in the data section. data_files: a local copy of the family's rows."""
    subset: str = ""
    """family: the subset, e.g. brainstorming (dolly), oasst1 (tulu), anli_r1 (flan)."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if bool(self.family) != bool(self.subset):
            raise ConfigError(f"{prefix}: family and subset go together (got family={self.family!r}, subset={self.subset!r})")

    def label(self) -> str:
        if self.name:
            return self.name
        if self.family:
            return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{self.family}-{self.subset}")
        path = Path(self.dataset)
        return path.stem if path.suffix.lower() in LOCAL_SUFFIXES else self.dataset


@dataclass
class MeasureConfig:
    """How each task row is measured (`remix-ds forgetting measure`)."""

    steps: int = 1000
    """Fine-tuning optimizer steps per task (sets finetune.train.max_steps)."""
    lr: float = 2e-6
    """Fine-tuning peak learning rate (sets finetune.optim.lr)."""
    at_fractions: list[float] = field(default_factory=lambda: [0.1])
    """Also measure the row after these fractions of the steps (the online variant reads 0.1)."""
    embed_task_examples: int = 256
    """Task embedding: mean over this many of the task's training examples."""
    embed_batch_size: int = 16
    """Sequences per forward pass when computing embeddings."""
    keep_task_runs: bool = False
    """Keep each task's run folder (checkpoint, metrics); false deletes it once the row is stored."""
    max_epochs: float = 0.0
    """Cap a task's steps at this many epochs of its training rows (published: 1000 steps capped at 3 epochs); 0: no cap."""

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"measure.steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"measure.lr must be > 0, got {self.lr}")
        if any(not 0 < f < 1 for f in self.at_fractions):
            raise ConfigError(f"measure.at_fractions must be in (0, 1), got {self.at_fractions}")
        if self.embed_task_examples < 1 or self.embed_batch_size < 1:
            raise ConfigError("measure.embed_task_examples and measure.embed_batch_size must be >= 1")
        if self.max_epochs < 0:
            raise ConfigError(f"measure.max_epochs must be >= 0, got {self.max_epochs}")
        if self.max_epochs and self.at_fractions:
            raise ConfigError("measure.max_epochs with measure.at_fractions: a capped task's intermediate row would sit at "
                              "another step than the others'; set measure.at_fractions=[] (the in-run online replay arm "
                              "needs none) or measure.max_epochs=0")

    def intermediate_steps(self) -> list[int]:
        """The steps strictly inside (0, steps) at which rows are also measured."""
        return sorted({s for s in (max(1, round(f * self.steps)) for f in self.at_fractions) if s < self.steps})


@dataclass
class AnalyzeConfig:
    """`remix-ds forgetting analyze`: spectrum, low-rank fits, heatmap, embedding similarity."""

    max_rank: int = 10
    """Report rank-k R^2 for k = 1..max_rank (capped at min(M, N))."""
    heatmap_max_columns: int = 2000
    """Heatmap: at most this many example columns (evenly spaced after sorting by b)."""

    def __post_init__(self):
        if self.max_rank < 1 or self.heatmap_max_columns < 1:
            raise ConfigError("analyze.max_rank and analyze.heatmap_max_columns must be >= 1")


@dataclass
class PredictConfig:
    """`remix-ds forgetting predict`: matrix completion for held-out tasks."""

    revealed: int = 30
    """k: entries of a held-out row revealed to the predictor (sampled without replacement)."""
    seeds: list[int] = field(default_factory=lambda: list(range(10)))
    """Seeds of the revealed-entry draws (the paper: 10); metrics are averaged per seed, then mean and std over seeds."""
    folds: int = 0
    """Task folds: each fold's rows are held out while the others train the predictor; 0: leave one task out."""
    variants: list[Literal["offline", "online"]] = field(default_factory=lambda: ["offline", "online"])
    """`offline`: revealed entries from the completed run; `online`: from the row measured at online_fraction."""
    online_fraction: float = 0.1
    """Which intermediate measurement the online variant reveals (one of measure.at_fractions)."""
    methods: list[Method] = field(default_factory=lambda: list(METHODS))
    """Predictors. Published (forgetting/published.py, refit per test row as the paper): additive (surprise BaselineOnly, SGD), knn_baseline (KNNBaseline, MSD, k 40), svd (biased SVD, 5 factors, 1000 SGD epochs; not a default: N x 1000 numpy steps per split and seed). Ours: row_mean, col_mean, knn (task-kNN on additive residuals), mf (biased MF, fold-in), mf_refit (biased MF by ridge ALS, refit per test row), random, emb_cos / rep_dot (cosine / dot product of base-model mean hidden states), grad_sim (cosine of projected LM-head gradients, OUT/features.npz); similarity methods without their inputs are skipped."""
    rank: int = 5
    """Biased MF: rank of u_i . v_j."""
    reg: float = 1.0
    """Biased MF: ridge penalty on factors (biases get reg * 0.01)."""
    iters: int = 20
    """Biased MF: alternating least-squares sweeps."""
    knn: int = 5
    """Task-kNN: neighbours (most similar training tasks by residual cosine on the revealed entries)."""
    top_fraction: float = 0.1
    """Top-k metrics: k = top_fraction x hidden entries (at least 1)."""
    reveal: Literal["shared", "reference", "per_task"] = "shared"
    """Revealed columns: `shared`: k distinct columns, the same for every test task within a seed; `reference`: the paper's draw, default_rng(seed).choice(N, k) with replacement (so <= k distinct), the same for every test task; `per_task`: drawn per (seed, task)."""
    splits: dict[str, list[str]] = field(default_factory=dict)
    """Named test splits {name: [task names or patterns such as dolly_*]}; training tasks = those no split names. Empty: predict.folds."""
    binary_eval_dir: str = ""
    """Binary matrix (1 - EM after on base-correct examples): a folder of per-example eval files base.jsonl and TASK.jsonl (id, correct); empty: the EM rows the study stored, if any."""
    binary_methods: list[BinaryMethod] = field(default_factory=lambda: list(BINARY_METHODS))
    """Predictors of the binary matrix. Published (refit per test row, logits): lgmf (logistic W.H, no biases, gradient ascent), lgmf_additive (logistic a_i + b_j). additive (as above). Ours: random, col_mean, mf, lmf (logistic MF with biases, L-BFGS, fold-in), lmf_additive (logistic additive)."""
    binary_rank: int = 5
    """Logistic MF: rank."""
    binary_reg: float = 1.0
    """Logistic MF: L2 penalty on the factors (biases get binary_reg * 0.01); the published 0.1 goes with early-stopped gradient ascent, a converged L-BFGS fit overfits with it."""
    binary_iters: int = 500
    """Logistic MF: L-BFGS iterations."""
    compare_to: str = "mf"
    """Paired tests over (task, seed): every other method against this one, Holm-corrected across methods."""
    alpha: float = 0.05
    """Significance level of the Holm-corrected paired tests."""

    def __post_init__(self):
        if self.revealed < 1:
            raise ConfigError(f"predict.revealed must be >= 1, got {self.revealed}")
        if not self.seeds:
            raise ConfigError("predict.seeds must not be empty")
        if self.folds < 0 or self.folds == 1:
            raise ConfigError(f"predict.folds must be 0 (leave one out) or >= 2, got {self.folds}")
        if self.rank < 1 or self.iters < 1 or self.knn < 1:
            raise ConfigError("predict.rank, predict.iters and predict.knn must be >= 1")
        if self.reg < 0:
            raise ConfigError(f"predict.reg must be >= 0, got {self.reg}")
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"predict.top_fraction must be in (0, 1], got {self.top_fraction}")
        if not self.methods or not self.variants:
            raise ConfigError("predict.methods and predict.variants must not be empty")
        if self.binary_rank < 1 or self.binary_iters < 1 or self.binary_reg < 0:
            raise ConfigError("predict.binary_rank and predict.binary_iters must be >= 1, predict.binary_reg >= 0")
        if self.compare_to not in self.methods:
            raise ConfigError(f"predict.compare_to={self.compare_to!r} is not in predict.methods {self.methods}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"predict.alpha must be in (0, 1), got {self.alpha}")


@dataclass
class ReplayExperimentConfig:
    """`remix-ds forgetting replay-experiment`: no / uniform / predicted / oracle replay on held-out tasks."""

    heldout_tasks: list[str] = field(default_factory=list)
    """Task names fine-tuned with replay (their rows never train the predictor); empty: the last num_heldout tasks."""
    num_heldout: int = 2
    """Held-out tasks when heldout_tasks is empty."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds (also seeds of the revealed entries); pairs for the test are (task, seed)."""
    arms: list[Arm] = field(default_factory=lambda: ["none", "uniform", "predicted", "oracle"])
    """Replay strategies compared."""
    ratio: float = 1 / 32
    """Replay rows per task row per epoch (floor, as data.replay[].ratio)."""
    temperature: float = 0.1
    """Weighted arms sample pool examples with probability softmax(z / temperature)."""
    pool_fraction: float = 0.5
    """Fraction of the N upstream examples that form the replay pool; the rest are the evaluation set, never replayed."""
    split_seed: int = 0
    """Seed of the pool / evaluation split."""
    method: Literal["svd", "additive", "knn", "mf"] = "mf"
    """Predictor of the `predicted` and `online` arms: `svd` (published: surprise's biased SVD refit on the training rows + the revealed row, forgetting/published.py; the paper config) or ours, fitted once and folding the row in: additive (least squares), knn, mf."""
    prediction_seed: int = -1
    """>= 0: every run seed uses this seed's predicted row (its revealed columns and, for svd, its init; the reference uses seed 0's predictions for every run); -1: each run seed reveals its own columns."""
    variant: Literal["offline", "online"] = "offline"
    """Revealed entries of the held-out task from the completed run or from the online_fraction measurement (predict.online_fraction)."""
    pool: Literal["heldout", "fraction"] = "heldout"
    """`heldout` (published): the pool is every upstream example except a held-out evaluation set of heldout_size, never replayed; `fraction` (ours): pool_fraction of the N examples."""
    heldout_size: int = 10000
    """pool=heldout: upstream examples held out for evaluation (the published 10,000); must be < upstream.num_examples."""
    draw: Literal["without_replacement", "with_replacement"] = "without_replacement"
    """`without_replacement` (published): floor(n x ratio) + 1 distinct pool examples drawn once per run with probability softmax(z / T) (uniform arm: uniformly); `with_replacement` (ours): floor(n x ratio) rows drawn i.i.d. again every epoch."""
    placement: Literal["interleave", "shuffle"] = "interleave"
    """`interleave` (published): one replay row after every round(1 / ratio) task rows, at fixed positions of each epoch's order; `shuffle` (ours): replay rows permuted in with the task rows."""
    scale_steps: bool = True
    """Replay arms train floor(measure.steps x (1 + ratio)) steps (published: replayed rows add steps); false: measure.steps."""
    save_every: int = 0
    """Checkpoint replay runs every this many steps and resume a killed one from its run folder (the online arm's switch state is kept beside); 0: no checkpoints, a killed run starts over."""
    online_mask: bool = True
    """`online` arm: phase B's prediction-weighted draw excludes the examples of phase A's draw (the paper config's enable_mask); false: no mask (what the reference's code does in a one-task run, where its record of replayed examples is still empty)."""
    switch_fraction: float = 0.1
    """`online` arm: train this fraction of the arm's steps with uniform replay, then probe predict.revealed pool examples (current vs initial weights), complete the row and replay by prediction for the rest."""

    def __post_init__(self):
        if not self.seeds or not self.arms:
            raise ConfigError("replay.seeds and replay.arms must not be empty")
        if self.num_heldout < 1:
            raise ConfigError(f"replay.num_heldout must be >= 1, got {self.num_heldout}")
        if not self.ratio > 0:
            raise ConfigError(f"replay.ratio must be > 0, got {self.ratio}")
        if not self.temperature > 0:
            raise ConfigError(f"replay.temperature must be > 0, got {self.temperature}")
        if not 0 < self.pool_fraction < 1:
            raise ConfigError(f"replay.pool_fraction must be in (0, 1), got {self.pool_fraction}")
        if len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"replay.arms has duplicates: {self.arms}")
        if not 0 < self.switch_fraction < 1:
            raise ConfigError(f"replay.switch_fraction must be in (0, 1), got {self.switch_fraction}")
        if self.heldout_size < 1 or self.save_every < 0:
            raise ConfigError(f"replay.heldout_size must be >= 1 and replay.save_every >= 0, got {self.heldout_size}, "
                              f"{self.save_every}")

    def legacy(self) -> bool:
        """True when every replay option is ours (the data layer's with-replacement, shuffled-in replay)."""
        return (self.pool, self.draw, self.placement, self.scale_steps) == ("fraction", "with_replacement", "shuffle", False)

    def arm_steps(self, steps: int) -> int:
        """Optimizer steps of a replay arm's run: floor(steps x (1 + ratio)) with scale_steps (1000 -> 1031 at 1/32)."""
        return int(steps * (1 + self.ratio) + 1e-9) if self.scale_steps else steps


@dataclass
class ForgettingConfig:
    """A forgetting-matrix study: Z[i, j] = NLL change of upstream example j after fine-tuning on task i."""

    output_dir: str = "runs/forgetting"
    """Study folder: config.json, base.npz, rows/, matrix.npz + matrix.json, analysis, predictions, replay runs."""
    finetune: RunConfig = field(default_factory=RunConfig)
    """Template of every task's run: model, optim, train batching, deepspeed, data packing, eval (fused-pass batching); the dataset, output_dir, lr and steps are set per task."""
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    """The N upstream examples (columns)."""
    tasks: list[TaskConfig] = field(default_factory=list)
    """The M fine-tuning tasks (rows)."""
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    """Fine-tuning length and rate, intermediate measurements, embeddings."""
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    """Spectrum and fits."""
    predict: PredictConfig = field(default_factory=PredictConfig)
    """Matrix completion for held-out tasks."""
    replay: ReplayExperimentConfig = field(default_factory=ReplayExperimentConfig)
    """The replay experiment."""

    def __post_init__(self):
        names = [t.label() for t in self.tasks]
        for i, (t, name) in enumerate(zip(self.tasks, names)):
            t.validate(f"tasks[{i}]")
            if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
                raise ConfigError(f"tasks[{i}].name {name!r}: use letters, digits and _ . + - (it names files)")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"tasks: duplicate task names {dup}; set tasks[].name")
        # measure.lr / measure.steps are the single source of truth; catch a conflicting template.
        default = RunConfig()
        if self.finetune.optim.lr not in (default.optim.lr, self.measure.lr):
            raise ConfigError(f"finetune.optim.lr={self.finetune.optim.lr} conflicts with measure.lr={self.measure.lr}; "
                              "set measure.lr")
        if self.finetune.train.max_steps not in (0, self.measure.steps):
            raise ConfigError(f"finetune.train.max_steps={self.finetune.train.max_steps} conflicts with "
                              f"measure.steps={self.measure.steps}; set measure.steps")

    def task_names(self) -> list[str]:
        return [t.label() for t in self.tasks]

    def require_tasks(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks is empty: list the fine-tuning tasks (tasks: [{dataset: ...}, ...])")


def load_forgetting_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ForgettingConfig:
    """Defaults < file < overrides; a study folder reads its saved config.json."""
    if path is not None and Path(path).is_dir():
        saved = Path(path) / "config.json"
        if not saved.is_file():
            raise ConfigError(f"{path}: a forgetting study folder holds config.json; none found")
        path = saved
    return configtools.load(ForgettingConfig, path, overrides)
