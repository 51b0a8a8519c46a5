"""Derive the DeepSpeed config from the run config.

The JSON templates in ds_configs/ hold what is DeepSpeed's own business (ZeRO stage, offload,
bucket sizes). Everything the run config owns (batch sizes, grad accumulation, clipping, lr,
AdamW hyperparameters, precision) is written as "auto" and filled here. A template that spells
one of those out with a different value is an error: the run config is the single source of truth.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import torch

from remix_ds.config import RunConfig
from remix_ds.configtools import ConfigError

TEMPLATES = ("zero3", "zero3_offload", "zero2")


def template_path(name: str) -> Path:
    if name in TEMPLATES:
        return Path(str(resources.files("remix_ds.ds_configs").joinpath(f"{name}.json")))
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"deepspeed.config: {name!r} is neither a built-in template ({', '.join(TEMPLATES)}) "
                          "nor an existing JSON file")
    return path


def _fill(cfg: dict, path: tuple[str, ...], value, source: str) -> None:
    """Set cfg[path] to value; an existing non-"auto" value must agree."""
    node = cfg
    for part in path[:-1]:
        node = node.setdefault(part, {})
    key = path[-1]
    current = node.get(key, "auto")
    if current != "auto" and current != value:
        if isinstance(current, list) and isinstance(value, (list, tuple)) and list(current) == list(value):
            pass
        elif isinstance(current, (int, float)) and isinstance(value, (int, float)) and float(current) == float(value):
            pass
        else:
            raise ConfigError(
                f"{source}: {'.'.join(path)} = {current!r} disagrees with the run config ({value!r}); "
                "write \"auto\" there and set it in the run config"
            )
    node[key] = value


def build_ds_config(cfg: RunConfig, world_size: int, dtype: torch.dtype) -> dict:
    """The DeepSpeed config dict for this run and world size."""
    cfg.validate(world_size)
    source = template_path(cfg.deepspeed.config)
    try:
        template = json.loads(source.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"cannot parse DeepSpeed config {source}: {e}") from None
    ds = copy.deepcopy(template)
    src = str(source)
    if "scheduler" in ds:
        raise ConfigError(f"{src}: remove the \"scheduler\" block; the schedule comes from optim.schedule")
    if cfg.train.micro_batch_tokens:
        # NOTE: token-budget micro-batches vary in count per step; the trainer sets the accumulation
        # boundary itself (engine.set_gradient_accumulation_boundary), so DeepSpeed's batch numbers
        # are bookkeeping only: one "micro-batch" of the rank's share, no fixed accumulation.
        share = -(-cfg.train.global_batch_size // world_size)
        _fill(ds, ("train_batch_size",), share * world_size, src)
        _fill(ds, ("train_micro_batch_size_per_gpu",), share, src)
        _fill(ds, ("gradient_accumulation_steps",), 1, src)
    else:
        _fill(ds, ("train_batch_size",), cfg.train.global_batch_size, src)
        _fill(ds, ("train_micro_batch_size_per_gpu",), cfg.train.micro_batch_size, src)
        _fill(ds, ("gradient_accumulation_steps",), cfg.grad_accum(world_size), src)
    _fill(ds, ("gradient_clipping",), cfg.optim.grad_clip, src)
    _fill(ds, ("bf16", "enabled"), dtype == torch.bfloat16, src)
    _fill(ds, ("fp16", "enabled"), dtype == torch.float16, src)
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    if str(opt.get("type", "AdamW")).lower() != "adamw":
        raise ConfigError(f"{src}: optimizer.type must be AdamW (got {opt.get('type')!r})")
    _fill(ds, ("optimizer", "params", "lr"), cfg.optim.lr, src)
    _fill(ds, ("optimizer", "params", "betas"), list(cfg.optim.betas), src)
    _fill(ds, ("optimizer", "params", "eps"), cfg.optim.eps, src)
    _fill(ds, ("optimizer", "params", "weight_decay"), cfg.optim.weight_decay, src)
    zero = ds.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    # Without optimizer offload, torch's AdamW (fused kernels on CUDA) needs no JIT op build; with
    # offload DeepSpeed's CPU Adam is the fast path and is built once.
    opt["params"].setdefault("torch_adam", not offload)
    if dtype == torch.float16:
        ds["fp16"].setdefault("loss_scale", 0)
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
