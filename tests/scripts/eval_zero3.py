"""Evaluate the trained tiny KVR model under 2-rank ZeRO-3 and record what the tests compare.

    deepspeed --num_gpus 2 tests/scripts/eval_zero3.py OUT_DIR MODEL_DIR

The model is loaded under ``zero.Init`` (every parameter partitioned: persistence threshold 0)
and wrapped in a DeepSpeed engine. Writes to OUT_DIR:
  <variant>.json         rank 0: rows of evaluate() for each variant
  hook_rank<R>.json      each rank: the eval hook's metrics and the module's mode around the call
  train_rank<R>.json     each rank: loss on a fixed batch before/after evaluation, after one step
  grad_<variant>.npy     rank 0: forgetting gradient features, partitioned (lockstep) and gathered
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from eval_tiny import KVR, zero3_engine  # noqa: E402

from remix_ds.config import RunConfig  # noqa: E402
from remix_ds.data.datasets import generate_kvr  # noqa: E402
from remix_ds.eval.config import EvalConfig  # noqa: E402
from remix_ds.eval.hook import build_eval_hook  # noqa: E402
from remix_ds.eval.runner import evaluate  # noqa: E402
from remix_ds.eval.items import make_items  # noqa: E402
from remix_ds.forgetting.similarity import lm_head_gradients  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
out, model_dir = Path(args[0]), args[1]
from remix_ds.engine import dist as _dist  # noqa: E402

_dist.init_distributed("gloo")  # as the package does (it also unlinks DeepSpeed's CPU shm buffer)
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
out.mkdir(parents=True, exist_ok=True)

engine, tok, hf_ds = zero3_engine(model_dir)
assert all(p.ds_numel > 0 and p.numel() == 0 for p in engine.module.parameters()), "expected partitioned params"

# 39 examples: uneven shards (20 / 19) exercise padding of lockstep passes.
examples = generate_kvr(KVR)[:39]
variants = {
    # engine given: TRL-style hook removal through the engine's optimizer.
    "engine_auto": (engine, EvalConfig(max_batch_tokens=128, max_seq_len=64)),
    # bare partitioned module (what the trainer passes): hooks removed from the module itself.
    "module_generate": (engine.module, EvalConfig(mode="generate", batch_size=4, max_new_tokens=8,
                                                  max_batch_tokens=128, max_seq_len=64)),
    # no gathering: partitioned forwards in lockstep (fused batches and synced generate steps).
    "lockstep_generate": (engine.module, EvalConfig(mode="generate", gather_params=False, batch_size=4,
                                                    max_new_tokens=8, max_batch_tokens=128, max_seq_len=64)),
}

batch = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


def probe_loss() -> float:
    return float(engine(input_ids=batch, labels=batch, use_cache=False).loss)


loss_before = probe_loss()
for name, (m, cfg) in variants.items():
    res = evaluate(m, tok, examples, cfg, rank, world)
    if rank == 0:
        (out / f"{name}.json").write_text(json.dumps(res.rows))
    assert (rank == 0) == bool(res.rows)

# Projected LM-head gradient features (forgetting/similarity.py), partitioned (lockstep) and gathered.
pairs = [(it.prompt_ids, it.answer_ids) for it in make_items(examples[:11], tok)]  # 11: uneven shards
for name, gather in [("lockstep", False), ("gathered", True)]:
    feats = lm_head_gradients(engine.module, pairs, EvalConfig(gather_params=gather), tok.pad_token_id or 0,
                              dims=(8, 4), seed=3, batch_size=2, rank=rank, world=world)
    if rank == 0:
        np.save(out / f"grad_{name}.npy", feats)

run_cfg = RunConfig()
run_cfg.data.kvr = KVR
run_cfg.data.subsample_seed = None  # generator order, so the hook scores kvr_examples()[:39]
run_cfg.eval = EvalConfig(datasets=["kvr"], n=39, write_rows=True)
hook = build_eval_hook(run_cfg, tok, rank, world)
was = engine.module.training
metrics = hook(engine.module, step=7, out_dir=out / "eval")
(out / f"hook_rank{rank}.json").write_text(json.dumps({"metrics": metrics, "train_before": was,
                                                       "train_after": engine.module.training}))

# Hooks restored: the partitioned engine still computes the same loss and can train a step.
loss_after = probe_loss()
loss = engine(input_ids=batch, labels=batch, use_cache=False).loss
engine.backward(loss)
engine.step()
loss_stepped = probe_loss()
(out / f"train_rank{rank}.json").write_text(json.dumps({"before": loss_before, "after": loss_after,
                                                        "stepped": loss_stepped}))
