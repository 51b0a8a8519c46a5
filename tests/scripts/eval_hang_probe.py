"""Fault injection for the evaluator under 2-rank ZeRO-3: unequal per-rank work, back-to-back
evaluations after training steps, engine and bare module (issue 15, item 2).

    deepspeed --num_gpus 2 tests/scripts/eval_hang_probe.py OUT_DIR MODEL_DIR

21 examples on 2 ranks: 11 on rank 0, 10 on rank 1. The fused token budget is chosen so rank 0
runs 2 forward passes and rank 1 one; with ``batch_size=10`` generation runs 2 ``generate``
calls on rank 0 and 1 on rank 1. Before each pair of evaluations the engine takes one training step. Writes
``rank<R>.json``: per variant the two evaluations' rows (rank 0) and metrics, the per-rank
number of fused passes and generate calls, and the probe losses around everything.
"""

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from eval_tiny import KVR, zero3_engine  # noqa: E402

from remix_ds.data.datasets import generate_kvr  # noqa: E402
from remix_ds.eval.config import EvalConfig  # noqa: E402
from remix_ds.eval.fused import num_fused_batches  # noqa: E402
from remix_ds.eval.items import make_items  # noqa: E402
from remix_ds.eval.runner import evaluate  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
out, model_dir = Path(args[0]), args[1]
from remix_ds.engine import dist as _dist  # noqa: E402

_dist.init_distributed("gloo")  # as the package does (it also unlinks DeepSpeed's CPU shm buffer)
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
out.mkdir(parents=True, exist_ok=True)

engine, tok, hf_ds = zero3_engine(model_dir)

examples = generate_kvr(KVR)[:21]
everything = make_items(examples, tok)
mine = [it for i, it in enumerate(everything) if i % world == rank]
shares = [[it for i, it in enumerate(everything) if i % world == r] for r in range(world)]


def passes(budget: int) -> list[int]:
    return [num_fused_batches(engine.module, share, 64, budget) for share in shares]


# The case: a token budget giving 2 fused forwards on rank 0 and 1 on rank 1 (deterministic,
# the same on every rank). Old code: DeepSpeed's root hook ran reset_step() (2 broadcasts) on each of
# the first two forwards after the trace was invalidated, so rank 1 went on to the rows' all-gather.
budget = next(b for b in range(16, 4096, 4) if passes(b) == [2, 1])
batch = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


def probe_loss() -> float:
    with torch.no_grad():
        return float(engine(input_ids=batch, labels=batch, use_cache=False).loss)


def train_step() -> float:
    loss = engine(input_ids=batch, labels=batch, use_cache=False).loss
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


auto = EvalConfig(max_batch_tokens=budget, max_seq_len=64)
gen = EvalConfig(mode="generate", batch_size=10, max_new_tokens=6, max_batch_tokens=budget, max_seq_len=64)
lockstep = EvalConfig(mode="generate", gather_params=False, batch_size=10, max_new_tokens=6,
                      max_batch_tokens=budget, max_seq_len=64)
variants = [("engine_auto", engine, auto), ("module_auto", engine.module, auto),
            ("engine_generate", engine, gen), ("module_generate", engine.module, gen),
            ("engine_lockstep", engine, lockstep)]

record = {"losses": [probe_loss()], "variants": {}}
for name, m, cfg in variants:
    record["losses"].append(train_step())
    runs = [evaluate(m, tok, examples, cfg, rank, world) for _ in range(2)]
    record["variants"][name] = {
        "rows": [r.rows for r in runs], "metrics": [r.metrics for r in runs],
        "n_fused": num_fused_batches(engine.module, mine, cfg.max_seq_len, cfg.max_batch_tokens),
        "n_generate": math.ceil(len(mine) / cfg.batch_size) if cfg.mode == "generate" else 0,
        "training_after": engine.module.training,
    }
# Same weights, gathered vs partitioned: the hooks are intact and the verdicts agree.
same = [evaluate(engine, tok, examples, gen, rank, world), evaluate(engine.module, tok, examples, lockstep, rank, world)]
record["same_weights"] = [r.rows for r in same]
record["losses"].append(train_step())
record["losses"].append(probe_loss())
(out / f"rank{rank}.json").write_text(json.dumps(record))
