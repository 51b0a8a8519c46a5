"""Elastic weight consolidation (Kirkpatrick et al., 2017) on ZeRO-3 partitions.

    penalty(theta) = lam / 2 * sum_i F_i (theta_i - theta*_i)^2        d penalty / d theta_i = lam F_i (theta_i - theta*_i)

theta* are the weights the stage starts from (stage 1's result), F the diagonal empirical Fisher
of that model on D_A: the mean over N examples of the squared gradient of each example's loss
(`fisher_reduction=sum`: the example's answer log-likelihood, sum of its supervised-token NLLs;
`mean`: per token). Units: the penalty is added to the step objective whose main part is the
mean NLL per supervised token; `reg/ewc/penalty` is logged in those units (lam included).

ZeRO-3: each rank keeps F and theta* only for its own fp32 master piece of every parameter
(remix_ds.baselines.partitions). The penalty needs no autograd: right before the optimizer step
the closed-form gradient lam F (theta - theta*) is added to the reduced gradient pieces
(times the fp16 loss scale, if any), so gradient clipping and AdamW see main + penalty gradient
exactly as if the penalty had been backpropagated. No rank ever holds a full parameter.

Fisher under data parallelism: DeepSpeed averages gradients over ranks, and the mean of squares
is not the square of a mean, so all ranks process the *same* example in lockstep (one
forward/backward per example, `num_examples` in total), each squaring its own gradient piece.
That is a one-time cost at the start of the stage; the result is stored (store.py) and reused
on resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from remix_ds.baselines import partitions, store
from remix_ds.data.packing import pack
from remix_ds.data.tokenize import tokenize_examples
from remix_ds.engine import dist
from remix_ds.engine.hooks import Regularizer
from remix_ds.engine.loss import token_loss_sum
from remix_ds.eval.data import load_eval_set

KINDS = ["fisher", "anchor"]


# ---- the maths, on plain tensors (pieces or whole parameters alike) ----------------------------
def ewc_penalty(thetas: Sequence[torch.Tensor], fishers: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                lam: float) -> torch.Tensor:
    """lam / 2 * sum F (theta - theta*)^2, accumulated in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for t, f, a in zip(thetas, fishers, anchors):
        d = t.detach().float() - a
        total = total + torch.dot((f * d).flatten().double(), d.flatten().double()).cpu()
    return 0.5 * lam * total


def ewc_grads(thetas, fishers, anchors, lam: float) -> list[torch.Tensor]:
    """The closed-form gradient lam F (theta - theta*) per tensor."""
    return [lam * f * (t.detach().float() - a) for t, f, a in zip(thetas, fishers, anchors)]


# ---- Fisher estimate on the engine ------------------------------------------------------------
def loss_sum(trainer, batch: dict) -> torch.Tensor:
    """The trainer's summed token loss of a batch (same path as training, fused loss included)."""
    fused = getattr(trainer.cfg.model, "fused_loss", None)
    if fused is None:
        return token_loss_sum(trainer.engine, batch, trainer.attn)
    return token_loss_sum(trainer.engine, batch, trainer.attn, fused)


def compute_fisher(trainer, examples, slots, reduction: str = "sum") -> list[torch.Tensor]:
    """Diagonal empirical Fisher pieces (length partition_numel, fp32, on the engine's device).

    Call on all ranks with the same examples: one forward/backward per example in lockstep.
    Leaves the engine's gradients cleared (the next backward overwrites, never accumulates).
    """
    cfg, engine = trainer.cfg, trainer.engine
    toks = tokenize_examples(examples, trainer.tokenizer, mode="answer", prompt_format=cfg.data.prompt_format,
                             max_len=cfg.data.max_seq_len).examples
    if not toks:
        raise ValueError("regularize.ewc: no D_A example fits data.max_seq_len; nothing to estimate the Fisher on")
    pad = trainer.tokenizer.pad_token_id
    fisher = [torch.zeros(s.partition_numel, dtype=torch.float32, device=trainer.device) for s in slots]
    inv_scale2 = 1.0 / partitions.loss_scale(engine) ** 2
    # With optimizer offload the fp32 gradient pieces are only written at an accumulation boundary.
    # (Offload is not exercised by the CPU tests.)
    offload = bool(getattr(engine.optimizer, "offload_optimizer", False))
    if offload:
        engine.set_gradient_accumulation_boundary(True)
    engine.optimizer.zero_grad()
    for ex in toks:
        batch = trainer._to_device(pack([ex], len(ex), pad))
        loss = loss_sum(trainer, batch)
        if reduction == "mean":
            loss = loss / max(int(batch["num_supervised"]), 1)
        # every rank backpropagates the same example: the rank-average DeepSpeed takes is this example's gradient
        engine.backward(loss, scale_wrt_gas=False)
        for f, s in zip(fisher, slots):
            if s.real:
                g = partitions.get_grad(s)
                f.addcmul_(g, g, value=inv_scale2)
        engine.optimizer.zero_grad()  # micro_step_id = 0: the next backward overwrites the pieces
    if offload:
        engine.set_gradient_accumulation_boundary(None)  # back to counting micro-steps
    for f, s in zip(fisher, slots):
        f.div_(len(toks))
        f[s.real:] = 0  # padding
    return fisher


class EWCRegularizer(Regularizer):
    """`regularize.ewc`: adds lam F (theta - theta*) to the partitioned gradients before each step."""

    name = "ewc"

    def __init__(self, cfg):
        self.cfg = cfg
        self.lam = float(cfg.lam)

    def setup(self, trainer) -> None:
        t0 = time.perf_counter()
        self.trainer, self.engine = trainer, trainer.engine
        self.slots = partitions.local_slots(self.engine)
        folder = Path(self.cfg.state_dir or trainer.out / "ewc")
        self.state_dir = folder
        if not store.exists(folder):
            start = time.perf_counter()
            examples = load_eval_set(self.cfg.dataset, trainer.cfg.eval, trainer.cfg.data, n=self.cfg.num_examples).examples
            fisher = compute_fisher(trainer, examples, self.slots, self.cfg.fisher_reduction)
            anchor = [partitions.fp32_param(s).detach().clone() for s in self.slots]
            info = self._info(trainer) | {"num_examples": len(examples)}
            store.save(folder, self.slots, {"fisher": fisher, "anchor": anchor}, info)
            if dist.is_main():
                print(f"[remix-ds] EWC: Fisher of {len(examples)} examples of {self.cfg.dataset} in "
                      f"{time.perf_counter() - start:.1f}s -> {folder}", flush=True)
        stored = store.read_meta(folder)["info"]
        stale = {k: (stored.get(k), v) for k, v in self._info(trainer).items() if v not in ("", None) and stored.get(k) not in (None, v)}
        if stale:
            raise ValueError(f"regularize.ewc: {folder} was computed for other settings {stale} (stored, now); "
                             "remove it or set regularize.ewc.state_dir")
        state = store.load(folder, self.slots, KINDS, device=trainer.device)
        self.fisher, self.anchor = state["fisher"], state["anchor"]
        self._penalty = torch.zeros((), dtype=torch.float64)
        self.setup_s = time.perf_counter() - t0

    def _info(self, trainer) -> dict:
        """What the stored Fisher depends on (checked when a stored state is reused)."""
        return {"dataset": self.cfg.dataset, "fisher_reduction": self.cfg.fisher_reduction,
                "requested_examples": self.cfg.num_examples if self.cfg.dataset else None,
                "model": trainer.cfg.model.init_from or trainer.cfg.model.name_or_path}

    def penalty_and_grads(self, apply: bool) -> torch.Tensor:
        """This rank's share of the penalty at the current fp32 weights; with `apply`, add its
        gradient to the reduced gradient pieces (call only between the last backward and the step)."""
        total = torch.zeros((), dtype=torch.float64)
        scale = self.lam * partitions.loss_scale(self.engine)
        for s, f, a in zip(self.slots, self.fisher, self.anchor):
            if not s.real:
                continue
            d = partitions.fp32_param(s).detach().float() - a  # (partition_numel,)
            fd = f * d
            total += torch.dot(fd.double(), d.double()).cpu()
            if apply:
                g = partitions.get_grad(s)
                g.add_(fd, alpha=scale)
                partitions.set_grad(s, g)
        return 0.5 * self.lam * total

    def before_optimizer_step(self) -> None:
        self._penalty = self.penalty_and_grads(apply=True)

    def end_step(self) -> dict[str, float]:
        value = dist.all_reduce_sum([float(self._penalty)], self.trainer.device)[0]
        return {"reg/ewc/penalty": value}

    def penalty(self) -> float:
        """The global penalty at the current weights (collective; changes nothing)."""
        return dist.all_reduce_sum([float(self.penalty_and_grads(apply=False))], self.trainer.device)[0]
