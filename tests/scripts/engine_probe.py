"""Train with the real Trainer under the deepspeed launcher and record what the tests check.

    deepspeed --num_gpus 2 tests/scripts/engine_probe.py OUT_JSON_DIR CONFIG [overrides...]

Writes to OUT_JSON_DIR (rank 0 unless noted):
  step1_grads.pt        full gradients of a few parameters at the first optimizer step (before
                        clipping and the update), gathered across ZeRO-3 partitions
  step1_batches_R.pt    the micro-batches rank R trained on in the first step
  logits.pt             the engine's logits (ZeRO-3 forward) on a fixed input after training
"""

import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_grad

from remix_ds.baselines import build_regularizers
from remix_ds.config import load_config
from remix_ds.engine import dist
from remix_ds.engine.trainer import Trainer
from remix_ds.eval.hook import build_eval_hooks

PROBE_PARAMS = ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight")

argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the launcher adds it
out = Path(argv[0])
cfg = load_config(argv[1], argv[2:])
trainer = Trainer(cfg, eval_hooks=build_eval_hooks(cfg), regularizers=build_regularizers(cfg))
out.mkdir(parents=True, exist_ok=True)
engine = trainer.engine
params = dict(engine.module.named_parameters())
original_step = engine.step
original_next = trainer._next_step_batches
state = {"optimizer_steps": 0}


def next_batches():
    batches = original_next()
    if state["optimizer_steps"] == 0 and trainer.step == 0:
        torch.save(batches, out / f"step1_batches_{dist.rank()}.pt")
    return batches


def step_and_capture(*args, **kwargs):
    if engine.is_gradient_accumulation_boundary():
        if state["optimizer_steps"] == 0 and trainer.step == 0:
            grads = {name: safe_get_full_grad(params[name]) for name in PROBE_PARAMS}  # collective
            if dist.is_main():
                torch.save({k: v.detach().cpu().clone() for k, v in grads.items()}, out / "step1_grads.pt")
        state["optimizer_steps"] += 1
    return original_step(*args, **kwargs)


engine.step = step_and_capture
trainer._next_step_batches = next_batches
try:
    trainer.fit()
    engine.eval()
    ids = torch.arange(3, 40).view(1, -1) % len(trainer.tokenizer)
    with torch.no_grad():
        logits = engine(input_ids=ids, use_cache=False).logits
    if dist.is_main():
        torch.save({"input_ids": ids, "logits": logits.cpu()}, out / "logits.pt")
finally:
    trainer.close()
