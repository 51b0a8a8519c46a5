"""Experiment config: a grid of D_A (stage-1 factoids) x D_B (stage-2 data) x strategy [x loss mode].

    remix-ds experiment configs/paper/kvr.yaml [a.b=value ...]

`run` is an ordinary run config (model, optim, train, deepspeed, data, eval): the base of every
stage. The runner derives each stage's config from it (dataset, mixing, replay, eval sets,
output folder, early stop) and writes it to the stage folder, so a stage can be rerun by hand
with `remix-ds train STAGE_DIR/stage_config.json`.

Strategies are short specs, joined by `+`:

- `none`: plain sequential fine-tuning;
- `random@1`, `random@2`, `random@12`: random-word sequences mixed into stage 1, stage 2 or both,
  at `mix_ratio` rows per dataset row (`random@1=0.5` sets the ratio);
- `generic@1`, `generic@2`, `generic@12`: generic pretraining text, likewise;
- `replay=0.1`: 10% of D_A replayed into stage 2 (rows per D_B row per epoch);
- `schedule=pooled|stratified`, `redraw=stage|epoch|step`: how both stages mix (data.mix.schedule /
  data.mix.redraw; default: run.data.mix's), e.g. `generic@12+schedule=stratified+redraw=epoch`;
- `ewc=LAMBDA`: EWC in stage 2 with the diagonal Fisher of the stage-1 model on D_A;
- `kl=BETA`, `kl:DATA=BETA`: KL to the frozen stage-1 model in stage 2, over the stage-2 batch or
  DATA (`generic` or a dataset) (remix_ds/baselines).

E.g. `random@1+generic@2` (the paper's combination), `replay=0.1+random@1` or `ewc=1000`.

`stage2_sweep` adds a stage-2 strength axis: a list of named settings `{name, epochs, overrides}`
(e.g. `{name: lr3e-4, overrides: [optim.lr=3e-4]}`, `{name: ep2, epochs: 2}`); every cell then runs
stage 2 once per setting from the same shared stage-1 model, and `remix-ds frontier GRID_DIR`
reports EM(D_A) against EM(D_B) along it (remix_ds/experiments/frontier.py).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

from remix_ds import configtools
from remix_ds.baselines.strategies import parse_term
from remix_ds.config import RunConfig
from remix_ds.configtools import ConfigError
from remix_ds.data.config import KVRConfig, LossMode


@dataclass
class DatasetSpec:
    """One D_A or D_B entry of the grid."""

    name: str = ""
    """Label in tables, file names and eval metric names (unique within data_a + data_b)."""
    dataset: str = "kvr"
    """Registered dataset, a local .jsonl/.json/.parquet file, `kvr` (generated) or `generic` (passages of the generic corpus)."""
    data_files: str | None = None
    """Local file with the registered dataset's own fields (offline copy of the hub data)."""
    num_examples: int = 0
    """Examples trained on (0: all). `kvr` and `generic` generate exactly this many (default 2000 / 64)."""
    heldout_size: int = 0
    """Examples set aside before subsampling (never trained)."""
    subsample_seed: int | None = 0
    """Seed of the shuffle before the split; null keeps file order (the reference takes the first rows)."""
    kvr: KVRConfig | None = None
    """Generator of a `kvr` dataset (default: run.data.kvr with seed + index in the grid)."""
    prompt_words: int = 24
    """`generic`: words of the passage shown in the prompt."""
    answer_words: int = 6
    """`generic`: words of the continuation to memorize."""
    max_new_tokens: int = 0
    """Generation budget when this set is scored as D_B at the end (0: run.eval.max_new_tokens); MATH/APPS answers are long."""

    def validate(self, prefix: str) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"{prefix}.name must be a non-empty label of letters, digits, '_', '.', '-', got {self.name!r}")
        if self.num_examples < 0 or self.heldout_size < 0 or self.prompt_words < 1 or self.answer_words < 1:
            raise ConfigError(f"{prefix}: num_examples/heldout_size must be >= 0, prompt_words/answer_words >= 1")
        if self.max_new_tokens < 0:
            raise ConfigError(f"{prefix}.max_new_tokens must be >= 0, got {self.max_new_tokens}")


@dataclass
class Stage0Config:
    """Optional short pretraining of the base model on the generic corpus (cached; for random-init toys)."""

    epochs: float = 0.0
    """Passes over the stage-0 passages (0: no stage 0, stages start from run.model)."""
    num_passages: int = 2000
    """Generic-corpus passages trained on (all tokens, `all` loss mode)."""
    passage_words: int = 64
    """Words per passage."""
    lr: float = 3e-3
    """Peak learning rate of stage 0."""
    overrides: list[str] = field(default_factory=list)
    """Extra dotted run-config overrides for stage 0."""


@dataclass
class Stage1Config:
    """Stage 1: memorize D_A until EM(D_A) reaches the threshold, or max_epochs."""

    max_epochs: float = 20.0
    """Upper bound on stage-1 epochs (the cosine schedule spans these)."""
    em_threshold: float = 1.0
    """Stop once the evaluator's EM(D_A) reaches this (checked at every eval)."""
    eval_every: int = 0
    """Evaluate D_A every N optimizer steps (0: about once per epoch)."""
    overrides: list[str] = field(default_factory=list)
    """Extra dotted run-config overrides for every stage-1 run."""


@dataclass
class Stage2Config:
    """Stage 2: train on D_B for `epochs` (or until the loss rule stops it), tracking EM(D_A)."""

    epochs: float = 20.0
    """Stage-2 epochs: all of them (`stop: fixed`), or the cap within which `stop: loss` ends the stage; the cosine
    schedule always spans all of them."""
    stop: Literal["fixed", "loss"] = "fixed"
    """`fixed`: train every epoch. `loss`: the REMIX reference's `sc=loss` (its PopQA/TriviaQA stage 2): stop once
    `stop_loss_steps` optimizer steps had a training loss (mean over all ranks) below `stop_loss`, counted
    cumulatively, never reset."""
    stop_loss: float = 1e-4
    """Loss threshold of `stop: loss`."""
    stop_loss_steps: int = 10
    """Below-threshold optimizer steps that end the stage under `stop: loss`."""
    eval_every: int = 0
    """Evaluate D_A (and D_B) every N optimizer steps for the forgetting curve (0: about once per epoch)."""
    eval_b: Literal["every_eval", "end"] = "every_eval"
    """Score D_B at every stage-2 eval, or only once on the final export (generation-judged chat/code/math sets are costly)."""
    overrides: list[str] = field(default_factory=list)
    """Extra dotted run-config overrides for every stage-2 run."""


@dataclass
class Stage2Setting:
    """One point of the stage-2 strength axis (`stage2_sweep`): stage 1 is shared, stage 2 differs."""

    name: str = ""
    """Label: the cell-key suffix `__<name>` and the results' `stage2_setting` column (e.g. lr3e-4, ep2)."""
    epochs: float | None = None
    """Stage-2 epochs at this point (null: stage2.epochs); the cosine schedule spans them."""
    overrides: list[str] = field(default_factory=list)
    """Dotted run-config overrides for stage 2 only, applied after stage2.overrides, e.g. optim.lr=3e-4."""


@dataclass
class AnalysisConfig:
    """Post-hoc analyses on the exported models of every cell."""

    logit_lens: bool = True
    """Layer analysis: per memorized factoid, the layer where the gold first token becomes top-1."""
    lens_max_examples: int = 256
    """Factoids per model analysed by the logit lens (the first N memorized)."""
    preservation: bool = True
    """Minimal-change check on held-out generic text: NLL change, changed continuations, EOS rate."""
    preservation_set: str = "builtin"
    """`builtin` (held-out passages of the built-in generic corpus) or a .jsonl file of {"text"} rows."""
    preservation_n: int = 32
    """Held-out passages scored."""
    preservation_tokens: int = 64
    """Tokens per passage scored for NLL."""
    prompt_words: int = 16
    """Words of a passage used as the prompt of a greedy continuation."""
    max_new_tokens: int = 24
    """Greedy continuation budget; answers without EOS within it count as `cannot stop`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where analyses load exported models (`auto`: cuda when available)."""
    preserve_bench: list[str] = field(default_factory=list)
    """Question sets (jsonl with prompt/answer, or NAME[:heldout]) answered greedily by the base model and each cell's stage-1 and stage-2 models, compared as `remix-ds preserve` does (pq_* columns)."""
    preserve_max_new_tokens: int = 32
    """Greedy answer budget of the preserve_bench comparison."""
    keep_models: Literal["none", "stage1", "all"] = "stage1"
    """What stays on disk once a cell's evaluations and analyses are written (done.json): `none` deletes its stage-2
    export and each stage-1 export once every cell built on it is done; `stage1` keeps the stage-1 exports; `all`
    keeps everything. Except with `all`, a finished stage's checkpoints go as soon as it is done (prune.py)."""


@dataclass
class SlurmConfig:
    """`scheduler.kind: slurm`: the sbatch resources of every job (stage 0, each stage 1, each cell), via submitit."""

    partition: str = ""
    """sbatch --partition (empty: the cluster's default partition)."""
    account: str = ""
    """sbatch --account (empty: the user's default account)."""
    qos: str = ""
    """sbatch --qos (empty: none)."""
    time_min: int = 240
    """sbatch --time in minutes per job; a job that runs out is signalled 90 s before, requeued and resumes from its checkpoint."""
    max_timeouts: int = 3
    """How often one job may time out and requeue itself before it counts as failed (preemptions do not count)."""
    nodes: int = 1
    """Nodes per job; > 1 runs the stages' deepspeed launcher over a hostfile of the allocation's nodes."""
    gpus_per_node: int = 0
    """sbatch --gpus-per-node (0: CPU jobs, the stages use the configured `launcher`)."""
    cpus_per_task: int = 0
    """sbatch --cpus-per-task (one task per node; 0: the cluster's default)."""
    mem_gb: int = 0
    """sbatch --mem in GB per node (0: the cluster's default)."""
    constraint: str = ""
    """sbatch --constraint, e.g. `h100` (empty: none)."""
    additional: dict[str, str] = field(default_factory=dict)
    """Other sbatch options by their long name, e.g. {exclusive: "", reservation: "grid"} (written as #SBATCH --key=value)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in each job before the task, e.g. `module load cuda/12.4`, `source ~/venv/bin/activate`."""
    poll_s: float = 10.0
    """Seconds between two looks at the queue (squeue) while `remix-ds experiment` waits for the jobs."""

    def __post_init__(self):
        if self.time_min < 1 or self.nodes < 1:
            raise ConfigError(f"scheduler.slurm.time_min and scheduler.slurm.nodes must be >= 1, got {self.time_min}, {self.nodes}")
        for key in ("max_timeouts", "gpus_per_node", "cpus_per_task", "mem_gb"):
            if getattr(self, key) < 0:
                raise ConfigError(f"scheduler.slurm.{key} must be >= 0, got {getattr(self, key)}")
        if self.poll_s <= 0:
            raise ConfigError(f"scheduler.slurm.poll_s must be > 0, got {self.poll_s}")
        if "dependency" in self.additional:
            raise ConfigError("scheduler.slurm.additional.dependency: the scheduler sets each job's dependencies itself")


@dataclass
class SchedulerConfig:
    """How the grid's jobs (stage 0, each shared stage 1, each cell) run (remix_ds/experiments/scheduler.py)."""

    kind: Literal["serial", "local", "slurm"] = "serial"
    """`serial`: one job after another in this process (the launcher runs each stage); `local`: up to
    max_concurrent jobs at once as subprocesses, each on its own device group and master port; `slurm`:
    one Slurm job per job, cells `afterok` on their stage 1 (scheduler.slurm)."""
    max_concurrent: int = 0
    """Jobs running at once under `local` (0: as many as the device groups allow; on CPU, 2)."""
    gpus_per_cell: int = 1
    """Devices per job under `local` (GPUs; on CPU: ranks, one process each)."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """`slurm`: every job's sbatch resources (partition, account, time, nodes, GPUs; remix_ds/experiments/slurm.py)."""

    def __post_init__(self):
        if self.max_concurrent < 0:
            raise ConfigError(f"scheduler.max_concurrent must be >= 0 (0: as many as fit), got {self.max_concurrent}")
        if self.gpus_per_cell < 1:
            raise ConfigError(f"scheduler.gpus_per_cell must be >= 1, got {self.gpus_per_cell}")


@dataclass
class ExperimentConfig:
    """A REMIX grid: every D_A x D_B x strategy x loss mode cell, two stages each."""

    output_dir: str = "runs/experiment"
    """Grid folder: stage folders, cells, results table, report, plots."""
    run: RunConfig = field(default_factory=RunConfig)
    """Base run config of every stage (model, optim, train, deepspeed, data, eval)."""
    data_a: list[DatasetSpec] = field(default_factory=list)
    """Stage-1 factoid sets (D_A)."""
    data_b: list[DatasetSpec] = field(default_factory=list)
    """Stage-2 sets (D_B)."""
    strategies: list[str] = field(default_factory=lambda: ["none"])
    """Strategy specs (see the module docstring), e.g. none, random@1, generic@12, replay=0.1, random@1+generic@2."""
    loss_modes: list[LossMode] = field(default_factory=list)
    """Loss modes to cross with the grid (empty: just run.data.loss_mode): answer, all, key_spans (a set's own [[...]] marks; a set without marks has each whole answer marked: answer without EOS, logged), surprise (the tokens each stage's starting model does not predict)."""
    seeds: list[int] = field(default_factory=list)
    """Seed axis (empty: one run per cell, run.train.seed / run.data.mix.seed as given). Each seed runs every cell
    once (keys and folders `..__s<seed>`, its own stage-1 runs) with train.seed and data.mix.seed of both stages set
    to it: data order, mixing draws. The factoids (D_A / D_B files), stage 0 and the base model are the same for
    every seed, so comparisons pair the same factoid across strategies and seeds (docs/grids.md)."""
    mix_ratio: float = 2.0
    """Default rows mixed per dataset row for random@/generic@ specs (the reference's mix_ratio)."""
    stage0: Stage0Config = field(default_factory=Stage0Config)
    """Optional generic-corpus pretraining of the base model."""
    stage1: Stage1Config = field(default_factory=Stage1Config)
    """Stage-1 length and early stop."""
    stage2: Stage2Config = field(default_factory=Stage2Config)
    """Stage-2 length and evaluation cadence."""
    stage2_sweep: list[Stage2Setting] = field(default_factory=list)
    """Stage-2 strength axis: every cell runs stage 2 once per setting from the same stage-1 model (empty: one stage 2 per cell, as `stage2` says)."""
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    """Logit lens and preservation check."""
    launcher: str = "inprocess"
    """`inprocess` (stages run in this process), `subprocess` (one python process per stage) or `deepspeed --num_gpus N [...]`."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """Serial or concurrent jobs (`scheduler.kind=local scheduler.max_concurrent=2`); see docs/grids.md."""
    retry_failed: bool = True
    """On rerun, run again cells that failed before (finished cells are always skipped)."""
    data_dir: str | None = None
    """Folder built by `remix-ds prepare-data` (manifest.json): registered D_A / D_B sets without data_files read
    DATA_DIR/<dataset>.jsonl (D_A: the yet-to-learn file once filter-known recorded one); every cell records the
    manifest's sha256."""
    require_filtered: bool = False
    """D_A sets drawn from a source (popqa, triviaqa, ...) must be filter-known yet-to-learn files; generated kvr is exempt."""

    def __post_init__(self):
        if not self.data_a or not self.data_b:
            raise ConfigError("data_a and data_b need at least one dataset each")
        names = [d.name for d in self.data_a + self.data_b]
        for i, d in enumerate(self.data_a):
            d.validate(f"data_a[{i}]")
        for i, d in enumerate(self.data_b):
            d.validate(f"data_b[{i}]")
        if len(set(names)) != len(names):
            raise ConfigError(f"dataset names in data_a + data_b must be unique, got {names}")
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies must be non-empty and without duplicates, got {self.strategies}")
        for s in self.strategies:
            parse_strategy(s, self.mix_ratio)
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be distinct integers >= 0, got {self.seeds}")
        if len(set(self.loss_modes)) != len(self.loss_modes):
            raise ConfigError(f"loss_modes has duplicates: {self.loss_modes}")
        if self.mix_ratio < 0 or not 0 < self.stage1.em_threshold <= 1:
            raise ConfigError("mix_ratio must be >= 0 and stage1.em_threshold in (0, 1]")
        if self.stage1.max_epochs <= 0 or self.stage2.epochs <= 0:
            raise ConfigError("stage1.max_epochs and stage2.epochs must be > 0")
        if self.stage2.stop_loss <= 0 or self.stage2.stop_loss_steps < 1:
            raise ConfigError(f"stage2.stop_loss must be > 0 and stage2.stop_loss_steps >= 1, got "
                              f"{self.stage2.stop_loss} and {self.stage2.stop_loss_steps}")
        launcher_argv(self.launcher)
        self._validate_sweep()

    def stage2_setting(self, name: str | None) -> Stage2Setting | None:
        """The sweep point called `name` (None: no sweep)."""
        return None if name is None else next(st for st in self.stage2_sweep if st.name == name)

    def _validate_sweep(self) -> None:
        names = [st.name for st in self.stage2_sweep]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage2_sweep names must be unique, got {names}")
        base = configtools.to_dict(self.run)
        for i, st in enumerate(self.stage2_sweep):
            where = f"stage2_sweep[{i}]"
            if not st.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", st.name):
                raise ConfigError(f"{where}.name must be a non-empty label of letters, digits, '_', '.', '-', got {st.name!r}")
            if st.epochs is not None and st.epochs <= 0:
                raise ConfigError(f"{where}.epochs must be > 0, got {st.epochs}")
            try:  # a bad key fails here, not after stage 1 has trained
                overrides = list(self.stage2.overrides) + list(st.overrides)
                configtools.from_dict(RunConfig, configtools.apply_overrides(copy.deepcopy(base), overrides))
            except ConfigError as e:
                raise ConfigError(f"{where}.overrides ({st.name}): {e}") from None


@dataclass(frozen=True)
class Strategy:
    """A parsed strategy spec: mixing ratios per stage and the D_A replay ratio in stage 2."""

    spec: str
    random: tuple[float, float] = (0.0, 0.0)
    generic: tuple[float, float] = (0.0, 0.0)
    replay: float = 0.0
    regularize: dict = field(default_factory=dict, hash=False)
    """Stage-2 baselines, e.g. {"ewc": {"lam": 1000.0}} (remix_ds.baselines.strategies)."""
    schedule: str | None = None
    """data.mix.schedule of both stages (None: run.data.mix.schedule)."""
    redraw: str | None = None
    """data.mix.redraw of both stages (None: run.data.mix.redraw)."""

    def stage1_tag(self) -> str:
        """Names the stage-1 configuration (cells with equal tags share one stage-1 run)."""
        parts = [f"random{self.random[0]:g}"] if self.random[0] else []
        parts += [f"generic{self.generic[0]:g}"] if self.generic[0] else []
        parts += [self.schedule] if self.schedule else []
        parts += [f"redraw-{self.redraw}"] if self.redraw else []
        return "+".join(parts) or "plain"

    def mix_patch(self) -> dict:
        """The dotted data.mix keys this strategy sets in both stages."""
        patch = {"data.mix.schedule": self.schedule} if self.schedule else {}
        return patch | ({"data.mix.redraw": self.redraw} if self.redraw else {})

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.spec.replace("+", "__").replace("@", "-at").replace("=", "-"))


_TERM = re.compile(r"^(random|generic)@(1|2|12)(?:=([0-9.eE+-]+))?$|^replay=([0-9.eE+-]+)$|^none$")
_MIX_TERM = re.compile(r"^(schedule)=(pooled|stratified)$|^(redraw)=(stage|epoch|step)$")


def parse_strategy(spec: str, mix_ratio: float = 2.0) -> Strategy:
    """`random@1+generic@2` -> Strategy(random=(r, 0), generic=(0, r)); see the module docstring."""
    random, generic, replay, regularize = [0.0, 0.0], [0.0, 0.0], 0.0, {}
    mix: dict[str, str] = {}
    seen: dict[str, str] = {}

    def once(key: str, term: str) -> None:  # one term per role: `none+none`, `ewc=1+ewc=2` are mistakes
        if key in seen:
            raise ConfigError(f"strategies: {spec!r} has {term.strip()!r} and {seen[key]!r}, which set the same thing ({key})")
        seen[key] = term.strip()

    for term in spec.split("+"):
        baseline = parse_term(term)
        if baseline is not None:
            for name in baseline:
                once(name, term)
            regularize.update(baseline)
            continue
        mm = _MIX_TERM.match(term.strip())
        if mm:
            name, value = (mm.group(1), mm.group(2)) if mm.group(1) else (mm.group(3), mm.group(4))
            if name in mix:
                raise ConfigError(f"strategies: {spec!r} sets {name} twice")
            mix[name] = value
            continue
        m = _TERM.match(term.strip())
        if not m:
            raise ConfigError(f"strategies: cannot parse {spec!r} (term {term!r}); use none, random@1|2|12[=R], "
                              "generic@1|2|12[=R], replay=R, ewc=LAMBDA, kl[:DATA]=BETA, schedule=pooled|stratified, "
                              "redraw=stage|epoch|step joined by '+'")
        if term.strip() == "none":
            once("none", term)
            continue
        if m.group(4) is not None:
            once("replay", term)
            replay = float(m.group(4))
            continue
        ratio = float(m.group(3)) if m.group(3) else mix_ratio
        target = random if m.group(1) == "random" else generic
        for stage in m.group(2):
            once(f"{m.group(1)} in stage {stage}", term)
            target[int(stage) - 1] = ratio
    if min(*random, *generic, replay) < 0:
        raise ConfigError(f"strategies: negative ratio in {spec!r}")
    return Strategy(spec, tuple(random), tuple(generic), replay, regularize, mix.get("schedule"), mix.get("redraw"))


def launcher_argv(launcher: str) -> list[str] | None:
    """None for in-process; else the command prefix that runs one stage's module."""
    words = launcher.split()
    if words == ["inprocess"]:
        return None
    if words == ["subprocess"]:
        return []
    if words and words[0] == "deepspeed":
        return words
    raise ConfigError(f"launcher must be inprocess, subprocess or 'deepspeed --num_gpus N ...', got {launcher!r}")


def load_experiment(path=None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Defaults < file < dotted overrides (`run.optim.lr=1e-5`, `strategies=[none,random@1]`)."""
    return configtools.load(ExperimentConfig, path, overrides)
