"""What `remix-ds experiment CONFIG --dry-run` computes besides the plan: each stage's batching under
the scheduler, the batch check, and the grid's peak disk use.

Batching per stage (stage 0 if configured, stage 1, stage 2 and each stage2_sweep setting, every one
with its own overrides applied): the world size its launcher gives (`serial`: the configured
`launcher`; `local`: scheduler.gpus_per_cell; `slurm`: nodes x gpus_per_node, or the `launcher` for
CPU jobs), examples per micro-batch per rank (or the token budget), gradient accumulation, examples
and at most how many tokens per optimizer step (every example is at most data.max_seq_len tokens;
the real count depends on the data); with train.micro_batch_tokens the micro-batches per rank and
step are at most ceil(examples per rank / rows per micro-batch), fewer when packing fits more. A
global batch the world size cannot divide is refused with RunConfig.validate's one line (the key
and a value that works), named by stage, before any work (dry run or not).

Peak disk (`disk_estimate`): the model's parameter count P from its config (instantiated on the
meta device, no weights read), an export of P x dtype bytes, a ZeRO checkpoint of
P x (dtype bytes + 12) (fp32 master weights and Adam's two moments; P x 12 for fp32 training).
A running stage holds at most max(keep_last + 1 checkpoints while a save replaces the oldest,
one checkpoint + its export at the end); finished stages keep what `analysis.keep_models` leaves
(prune.py): their exports until every cell built on them is done (`stage1`/`all`: for good), their
checkpoints only with `all`. At the peak: the stage-1 exports alive at once (all of them under
`local`/`slurm`, whose plan runs every stage 1 first; under `serial` the largest group of one
seed, loss mode and D_A when `none` prunes each group's exports before the next starts) plus the
jobs running at once (serial: 1; local: as many device groups as the node holds; slurm: every cell).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from remix_ds import configtools
from remix_ds.config import RunConfig
from remix_ds.configtools import ConfigError
from remix_ds.experiments.config import ExperimentConfig, launcher_argv

GB = 1e9
DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4, "auto": 2}
ADAM_FP32_BYTES = 12
"""Per parameter in a mixed-precision ZeRO checkpoint beside the low-precision weights: fp32 master, exp_avg, exp_avg_sq."""
NODE_GPUS_ASSUMED = 8
"""GPUs of the node the `local` scheduler is assumed to get when the dry run sees none here."""


@dataclass(frozen=True)
class StageBatching:
    stage: str
    world: int
    micro_batch: str
    grad_accum: str
    examples_per_step: int
    max_tokens_per_step: int
    """global batch x data.max_seq_len: every example is at most one row (the real count depends on the data)."""


def stage_runs(cfg: ExperimentConfig) -> list[tuple[str, RunConfig]]:
    """(label, the stage's run config with its overrides) for every kind of stage the grid trains."""
    base = configtools.to_dict(cfg.run)

    def derive(overrides) -> RunConfig:
        return configtools.from_dict(RunConfig, configtools.apply_overrides(copy.deepcopy(base), list(overrides)),
                                     source=f"{cfg.output_dir} (derived stage config)")

    out = []
    if cfg.stage0.epochs > 0:
        out.append(("stage 0", derive(cfg.stage0.overrides)))
    out.append(("stage 1", derive(cfg.stage1.overrides)))
    if cfg.stage2_sweep:
        out += [(f"stage 2 [{st.name}]", derive(list(cfg.stage2.overrides) + list(st.overrides))) for st in cfg.stage2_sweep]
    else:
        out.append(("stage 2", derive(cfg.stage2.overrides)))
    return out


def launcher_world(launcher: str) -> int:
    """Ranks the configured launcher starts on one node: --num_gpus N, --include localhost:a,b, else 1
    (inprocess, subprocess; a bare `deepspeed` takes every GPU of the node: those visible here)."""
    words = launcher_argv(launcher) or []
    for i, w in enumerate(words):
        flag, _, value = w.partition("=")
        value = value or (words[i + 1] if i + 1 < len(words) else "")
        if flag in ("--num_gpus", "--num-gpus"):
            return int(value)
        if flag == "--include":
            return len(value.split(":", 1)[-1].split(","))
    if words:
        import torch

        return max(1, torch.cuda.device_count())
    return 1


def world_size(cfg: ExperimentConfig) -> tuple[int, str]:
    """(ranks of every stage, where that number comes from) under the configured scheduler."""
    s = cfg.scheduler
    if s.kind == "local":
        return s.gpus_per_cell, f"scheduler.gpus_per_cell={s.gpus_per_cell}"
    if s.kind == "slurm" and (s.slurm.gpus_per_node or s.slurm.nodes > 1):  # several nodes: a hostfile slot per GPU (CPU: 1)
        n = s.slurm.nodes * max(1, s.slurm.gpus_per_node)
        return n, f"scheduler.slurm.nodes={s.slurm.nodes} x gpus_per_node={s.slurm.gpus_per_node}"
    return launcher_world(cfg.launcher), f"launcher={cfg.launcher!r}"


def batching(cfg: ExperimentConfig) -> list[StageBatching]:
    """Each stage's batching at the scheduler's world size; refuses (ConfigError, one line) a batch it cannot divide."""
    world, _ = world_size(cfg)
    rows = []
    for label, run in stage_runs(cfg):
        try:
            run.validate(world)
        except ConfigError as e:
            raise ConfigError(f"{label} at world size {world}: {e}") from None
        t = run.train
        if t.micro_batch_tokens:  # each example fills at most one packed row of max_seq_len tokens
            rows_per_micro = t.micro_batch_tokens // run.data.max_seq_len
            share = -(-t.global_batch_size // world)
            micro = f"<= {t.micro_batch_tokens} tokens ({rows_per_micro} rows)"
            gas = f"<= {-(-share // rows_per_micro)} ({share} examples/rank)"
        else:
            micro, gas = f"{t.micro_batch_size} examples", str(run.grad_accum(world))
        rows.append(StageBatching(label, world, micro, gas, t.global_batch_size, t.global_batch_size * run.data.max_seq_len))
    return rows


def batching_lines(cfg: ExperimentConfig) -> list[str]:
    world, source = world_size(cfg)
    lines = [f"batching ({cfg.scheduler.kind} scheduler; world size {world} from {source}):",
             f"  {'stage':<22}{'world':>6}  {'micro-batch/rank':<30}{'grad accum':<28}{'examples/step':>14}{'tokens/step (at most)':>23}"]
    for b in batching(cfg):
        lines.append(f"  {b.stage:<22}{b.world:>6}  {b.micro_batch:<30}{b.grad_accum:<28}{b.examples_per_step:>14}"
                     f"{b.max_tokens_per_step:>23,}")
    return lines


# ---- disk -----------------------------------------------------------------------------------------
KNOWN_SHAPES = {
    # the shape fields of the public config.json of the base models the paper configs name, so the estimate
    # needs neither the network nor the gated repository
    "meta-llama/Meta-Llama-3-8B": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
                                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                   "vocab_size": 128256, "tie_word_embeddings": False},
    "mistralai/Mistral-7B-v0.1": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                  "vocab_size": 32000, "tie_word_embeddings": False},
    "google/gemma-2-9b": {"model_type": "gemma2", "hidden_size": 3584, "intermediate_size": 14336,
                          "num_hidden_layers": 42, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                          "vocab_size": 256000, "tie_word_embeddings": True},
}


def parameter_count(run: RunConfig) -> int:
    """The model's parameters (tied weights once), from its config on the meta device: no weights read.
    A hub id is read from the local cache, else from KNOWN_SHAPES, else from the hub."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from remix_ds import models

    source = models.model_source(run.model)
    trust = run.model.trust_remote_code
    try:
        conf = AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=trust)
    except Exception:
        if source in KNOWN_SHAPES:
            shape = dict(KNOWN_SHAPES[source])
            conf = AutoConfig.for_model(shape.pop("model_type"), **shape)
        else:
            conf = AutoConfig.from_pretrained(source, trust_remote_code=trust)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf, trust_remote_code=trust)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class DiskEstimate:
    params: int
    export_bytes: float
    checkpoint_bytes: float
    running_stage_bytes: float
    stage1_alive: int
    jobs_at_once: int
    kept_bytes: float
    """Finished stages' files alive at the peak beside the running ones."""
    peak_bytes: float


def jobs_at_once(cfg: ExperimentConfig, n_cells: int) -> int:
    s = cfg.scheduler
    if s.kind == "serial":
        return 1
    if s.kind == "slurm":
        return n_cells
    if s.max_concurrent:
        return s.max_concurrent
    gpus = len([d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()])
    if not gpus:
        import torch

        gpus = torch.cuda.device_count() or NODE_GPUS_ASSUMED
    return max(1, gpus // s.gpus_per_cell)


def disk_estimate(cfg: ExperimentConfig, cells, params: int) -> DiskEstimate:
    """The grid's peak disk use (see the module docstring); `cells` as Grid.cells() plans them."""
    run = cfg.run
    e = DTYPE_BYTES.get(str(run.model.dtype), 2)
    export = params * e
    ckpt = params * (e + ADAM_FP32_BYTES if e < 4 else ADAM_FP32_BYTES)
    keep_last = run.train.keep_last
    saves_replace = run.train.save_every > 0  # a periodic save writes one more before it drops the oldest
    running = max((keep_last + (1 if saves_replace else 0)) * ckpt, ckpt + export)
    keep = cfg.analysis.keep_models
    s1_keys = {c.stage1_key for c in cells}
    if cfg.scheduler.kind == "serial" and keep == "none":
        groups: dict[tuple, set] = {}
        for c in cells:
            groups.setdefault((c.seed, c.loss_mode, c.d_a.name), set()).add(c.stage1_key)
        alive = max(len(g) for g in groups.values())
    else:
        alive = len(s1_keys)
    jobs = jobs_at_once(cfg, len(cells))
    finished_stage = export + (keep_last * ckpt if keep == "all" else 0)
    kept = alive * finished_stage
    if keep == "all":  # every finished cell's stage 2 stays: the peak is the end
        kept = len(s1_keys) * finished_stage + max(0, len(cells) - jobs) * finished_stage
    if cfg.stage0.epochs > 0:
        kept += finished_stage
    if any("ewc=" in s for s in cfg.strategies):  # the shared Fisher + anchor (fp32) in each stage-1 folder
        kept += len(s1_keys) * 2 * 4 * params
    return DiskEstimate(params, export, ckpt, running, alive, jobs, kept, kept + jobs * running)


def disk_lines(cfg: ExperimentConfig, cells) -> list[str]:
    try:
        params = parameter_count(cfg.run)
    except Exception as e:  # the dry run still lists the plan
        return [f"peak disk: unknown (cannot read the model config of {cfg.run.model.name_or_path}: "
                f"{type(e).__name__}: {str(e).splitlines()[0][:200]}; point run.model.name_or_path at a local copy)"]
    d = disk_estimate(cfg, cells, params)
    return [
        f"peak disk (analysis.keep_models={cfg.analysis.keep_models}): {d.peak_bytes / GB:,.0f} GB = "
        f"{d.jobs_at_once} running job(s) x {d.running_stage_bytes / GB:,.1f} GB + {d.kept_bytes / GB:,.1f} GB of finished stages "
        f"({d.stage1_alive} stage-1 export(s) alive)"
        + ("; Slurm may run every cell at once: fewer nodes, fewer running jobs" if cfg.scheduler.kind == "slurm" else ""),
        f"  model: {d.params:,} parameters, {cfg.run.model.dtype}: export {d.export_bytes / GB:,.1f} GB, "
        f"ZeRO checkpoint with optimizer state {d.checkpoint_bytes / GB:,.1f} GB "
        f"(train.keep_last={cfg.run.train.keep_last}, save_every={cfg.run.train.save_every})",
    ]
