"""`forgetting measure` under 2 ZeRO-3 ranks (real deepspeed launcher, gloo on CPU) gives the same
matrix as one process: NLLs and embeddings are sharded over ranks and gathered, rank 0 writes.

Also the launcher's target: ``deepspeed --num_gpus 2 tests/test_forgetting_zero3.py key=value ...``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # launches deepspeed / subprocesses


def overrides_for(root, out) -> list[str]:
    return [
        f"output_dir={out}",
        "upstream.kind=examples", f"upstream.source.dataset={root / 'up.jsonl'}", "upstream.num_examples=21",
        f"tasks=[{{dataset: {root / 'a.jsonl'}}}, {{dataset: {root / 'b.jsonl'}}}]",
        "measure.steps=2", "measure.lr=1e-3", "measure.at_fractions=[0.5]", "measure.embed_batch_size=4",
        "finetune.train.global_batch_size=8", "finetune.train.micro_batch_size=4",
        "finetune.train.progress_bar=false", "finetune.train.tensorboard=false",
        "finetune.optim.warmup_ratio=0.0", "finetune.data.max_seq_len=128",
        "finetune.eval.max_batch_tokens=256", "finetune.eval.max_seq_len=64",
    ]


def write_data(root) -> None:
    words = "apple river music table green light stone happy quick seven water paper".split()
    rows = {
        "up": [{"id": f"u{i}", "prompt": f"Say {words[i % 12]} {i}", "answer": f"{words[(3 * i) % 12]} {i}"} for i in range(21)],
        "a": [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(16)],
        # 16 rows: a multiple of micro-batch x ranks, so both layouts see the same rows per step
        "b": [{"prompt": f"Capitalize {w} {i}", "answer": f"{w.upper()} {i}"} for i, w in enumerate(words + words[:4])],
    }
    for name, rs in rows.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))


def test_two_zero3_ranks_match_one_process(tmp_path, run_deepspeed):
    from remix_ds.forgetting.config import load_forgetting_config
    from remix_ds.forgetting.measure import measure
    from remix_ds.forgetting.store import load_matrix

    write_data(tmp_path)
    run_deepspeed([__file__, *overrides_for(tmp_path, tmp_path / "two")], num_ranks=2, timeout=600)
    two = load_matrix(tmp_path / "two")
    one = measure(load_forgetting_config(None, overrides_for(tmp_path, tmp_path / "one")), log=lambda *a: None)
    assert two.task_names == one.task_names == ["a", "b"] and two.example_ids == one.example_ids
    assert two.done.all() and np.abs(one.z).max() > 1e-3
    assert two.nll_before == pytest.approx(one.nll_before, abs=1e-5)
    assert two.z == pytest.approx(one.z, abs=2e-4)  # same steps on the same examples, other reduction order
    assert two.z_at[1] == pytest.approx(one.z_at[1], abs=2e-4)
    assert two.example_embeddings == pytest.approx(one.example_embeddings, abs=1e-4)
    assert two.task_embeddings == pytest.approx(one.task_embeddings, abs=1e-4)
    assert not list((tmp_path / "two").rglob(".tmp-*"))


if __name__ == "__main__":  # one rank under the deepspeed launcher
    from remix_ds.forgetting.config import load_forgetting_config
    from remix_ds.forgetting.measure import measure

    measure(load_forgetting_config(None, [a for a in sys.argv[1:] if not a.startswith("--local_rank")]))
