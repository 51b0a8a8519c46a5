"""EWC + KL through the real Trainer (any world size) and what the baseline tests check.

    deepspeed --num_gpus 2 tests/scripts/baselines_probe.py OUT CONFIG [overrides...]
    python tests/scripts/baselines_probe.py OUT CONFIG [overrides...]          # world of one

Needs regularize.ewc.lam > 0 and regularize.kl.beta > 0 in the overrides. Writes to OUT (rank 0):
  state.pt   {"fisher": {name: full}, "anchor": {name: full}} gathered from the ZeRO-3 pieces
  probe.json penalty at the anchor, at anchor + delta and + 2 delta (delta = shift(name, index)),
             the closed-form check of the gradient edit, and the KL right after setup
Metrics rows (reg/ewc/penalty, reg/kl/kl) land in RUN_DIR/metrics.jsonl as usual.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as tdist
from deepspeed.utils import safe_set_local_fp32_param

from remix_ds.baselines import build_regularizers, partitions
from remix_ds.config import load_config
from remix_ds.engine import dist
from remix_ds.engine.trainer import Trainer
from remix_ds.eval.hook import build_eval_hooks


def shift(numel: int, seed: int) -> torch.Tensor:
    """A deterministic per-parameter shift of the full flattened tensor (same on any world size)."""
    return 1e-2 * torch.sin(torch.arange(numel, dtype=torch.float64) * 0.37 + seed).float()


def gather_full(slot, piece) -> torch.Tensor:
    parts = [None] * dist.world_size()
    mine = (slot.start, piece[: slot.real].cpu())
    if dist.world_size() > 1:
        tdist.all_gather_object(parts, mine)
    else:
        parts = [mine]
    full = torch.zeros(slot.numel)
    for start, t in parts:
        full[start: start + len(t)] = t
    return full


argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
out = Path(argv[0])
cfg = load_config(argv[1], argv[2:])
trainer = Trainer(cfg, eval_hooks=build_eval_hooks(cfg), regularizers=build_regularizers(cfg))
out.mkdir(parents=True, exist_ok=True)
ewc = next(r for r in trainer.regularizers if r.name == "ewc")
kl = next(r for r in trainer.regularizers if r.name == "kl")
probe = {}
try:
    fisher = {s.name: gather_full(s, f) for s, f in zip(ewc.slots, ewc.fisher)}
    anchor = {s.name: gather_full(s, a) for s, a in zip(ewc.slots, ewc.anchor)}
    if dist.is_main():
        torch.save({"fisher": fisher, "anchor": anchor}, out / "state.pt")
    probe["penalty_at_anchor"] = ewc.penalty()
    # theta = anchor + c * delta on the fp32 master pieces, then back to the anchor
    for c in (1.0, 2.0):
        for k, (s, a) in enumerate(zip(ewc.slots, ewc.anchor)):
            d = torch.zeros(s.partition_numel)
            d[: s.real] = shift(s.numel, k)[s.start: s.start + s.real]
            safe_set_local_fp32_param(s.param, a + c * d.to(a.device))
        probe[f"penalty_shift_{c:g}"] = ewc.penalty()
    for s, a in zip(ewc.slots, ewc.anchor):
        safe_set_local_fp32_param(s.param, a.clone())
    probe["penalty_restored"] = ewc.penalty()
    probe["shift_seeds"] = {s.name: k for k, s in enumerate(ewc.slots)}

    # The gradient edit of step 2 must add exactly lam F (theta - theta*) to the reduced pieces.
    original = ewc.before_optimizer_step
    seen = {"err": 0.0, "norm": 0.0, "calls": 0}

    def checked():
        before = [partitions.get_grad(s).clone() for s in ewc.slots]
        original()
        seen["calls"] += 1
        for s, b, f, a in zip(ewc.slots, before, ewc.fisher, ewc.anchor):
            want = ewc.lam * f * (partitions.fp32_param(s).detach().float() - a)
            got = partitions.get_grad(s).detach() - b
            seen["err"] = max(seen["err"], float((got - want).abs().max()))
            seen["norm"] = max(seen["norm"], float(want.abs().max()))

    ewc.before_optimizer_step = checked
    trainer.fit()
    err, norm = dist.all_reduce_sum([seen["err"], seen["norm"]], trainer.device)
    probe.update(edit_max_abs_err=err, edit_max_abs=norm, edit_calls=seen["calls"])
    # KL of the trained model vs the frozen one on a fresh batch, and frozen vs itself
    batch = trainer._to_device(trainer._next_step_batches()[0])
    with torch.no_grad():
        probe["kl_after_training"] = dist.all_reduce_sum([float(kl.kl_of(batch))], trainer.device)[0]
    if dist.is_main():
        (out / "probe.json").write_text(json.dumps(probe, indent=1))
finally:
    trainer.close()
