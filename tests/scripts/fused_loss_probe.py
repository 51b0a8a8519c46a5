"""Plain vs fused loss on the same ZeRO-3 engine, same micro-batches, in one launch.

    deepspeed --num_gpus 2 tests/scripts/fused_loss_probe.py OUT_DIR CONFIG [overrides...]

Needs grad accumulation 1 (global batch = micro-batch x ranks): every backward is then an
accumulation boundary, so DeepSpeed reduce-scatters the gradients right away and
`safe_get_full_grad` can gather them; the optimizer's zero_grad clears them between the two
modes. No optimizer step is taken. Rank 0 writes OUT_DIR/result.pt:
  {mode: {"losses": [per micro-batch loss sums], "grads": {name: full gradient}}} for off and on,
  plus "lm_head_partitioned": whether the lm_head weight was a ZeRO-3 shard outside forward.
"""

import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_grad

from remix_ds.baselines import build_regularizers
from remix_ds.config import load_config
from remix_ds.engine import dist
from remix_ds.engine.loss import token_loss_sum
from remix_ds.engine.trainer import Trainer
from remix_ds.eval.hook import build_eval_hooks

PROBE_PARAMS = ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight",
                "lm_head.weight")

argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the launcher adds it
out = Path(argv[0])
cfg = load_config(argv[1], argv[2:])
trainer = Trainer(cfg, eval_hooks=build_eval_hooks(cfg), regularizers=build_regularizers(cfg))
assert trainer.gas == 1, "run with global_batch_size = micro_batch_size x world size"
engine = trainer.engine
params = dict(engine.module.named_parameters())
head = params["lm_head.weight"]
result = {"lm_head_partitioned": head.numel() == 0 and getattr(head, "ds_numel", 0) > 0}
batches = [trainer._to_device(b) for b in trainer._next_step_batches()]
n_sup = int(dist.all_reduce_sum([sum(int(b["num_supervised"]) for b in batches)], trainer.device)[0])
try:
    for mode in ("off", "on"):
        losses = []
        for mb in batches:
            loss = token_loss_sum(engine, mb, trainer.attn, mode)
            engine.backward(loss * trainer.world / n_sup, scale_wrt_gas=False)
            losses.append(loss.item())
        grads = {name: safe_get_full_grad(params[name]).detach().cpu().clone() for name in PROBE_PARAMS}  # collective
        engine.optimizer.zero_grad(set_to_none=True)
        result[mode] = {"losses": losses, "grads": grads}
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        torch.save(result, out / "result.pt")
finally:
    trainer.close()
