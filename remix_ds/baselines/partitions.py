"""This rank's piece of every trainable parameter, as the ZeRO-3 optimizer owns it.

ZeRO-3 flattens each parameter and gives rank r the elements
``[r * partition_numel, (r + 1) * partition_numel)`` of it (the last partition zero-padded). The
optimizer keeps an fp32 master copy of that piece (`fp32_partitioned_groups_flat`) and, after the
backward, the reduced gradient of the same piece; DeepSpeed's `safe_get_local_fp32_param`,
`safe_get_local_grad` and `safe_set_local_grad` read and write them by parameter. A `Slot` names
one such piece: which parameter, where it sits in the flattened full tensor, how many of its
elements are real (not padding). Nothing here materializes a full parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Slot:
    name: str
    param: torch.nn.Parameter
    start: int
    """Offset of this rank's piece in the flattened full parameter."""
    real: int
    """Elements of the piece that belong to the parameter (the rest is padding); may be 0."""
    partition_numel: int
    """Length of the piece including padding (what the local fp32/grad tensors hold)."""
    numel: int
    """Elements of the full parameter."""
    shape: tuple[int, ...]


def _partition_rank(engine, param) -> int:
    opt = getattr(engine, "optimizer", None)
    if opt is not None and hasattr(opt, "_get_param_partition_rank"):
        return int(opt._get_param_partition_rank(param))
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def local_slots(engine) -> list[Slot]:
    """This rank's pieces of the engine's trainable parameters (ZeRO-3 only)."""
    slots = []
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        if not hasattr(p, "ds_id"):
            raise RuntimeError(f"parameter {name} is not ZeRO-3 partitioned: the EWC/KL baselines need deepspeed.config=zero3 "
                               "(or a ZeRO-3 JSON)")
        pn = int(p.partition_numel())
        start = _partition_rank(engine, p) * pn
        real = max(0, min(pn, int(p.ds_numel) - start))
        slots.append(Slot(name, p, start, real, pn, int(p.ds_numel), tuple(p.ds_shape)))
    return slots


def loss_scale(engine) -> float:
    """The fp16 dynamic loss scale the partitioned gradients carry (1 for bf16/fp32)."""
    return float(getattr(engine.optimizer, "loss_scale", 1.0) or 1.0)


def fp32_param(slot: Slot) -> torch.Tensor:
    """The optimizer's fp32 master piece (a view on GPU without offload), length partition_numel."""
    from deepspeed.utils import safe_get_local_fp32_param

    return safe_get_local_fp32_param(slot.param)


def get_grad(slot: Slot) -> torch.Tensor:
    """The reduced fp32 gradient piece (length partition_numel); only valid after a backward."""
    from deepspeed.utils import safe_get_local_grad

    return safe_get_local_grad(slot.param)


def set_grad(slot: Slot, value: torch.Tensor) -> None:
    from deepspeed.utils import safe_set_local_grad

    safe_set_local_grad(slot.param, value)
