"""Token-budget micro-batches (train.micro_batch_tokens): the plan (fast) and the real 2-rank ZeRO-3
engine with unequal micro-batch counts per rank in one step (slow: launches deepspeed)."""

import math
from collections import Counter

import pytest
import torch

from helpers import REPO, deepspeed_cmd, run_cmd
from remix_ds.data.config import DataConfig, KVRConfig
from remix_ds.data.loader import build_train_loader
from remix_ds.engine.metrics import read_metrics

CONFIG = str(REPO / "configs" / "tiny.yaml")
STEPS = 6
# The engine run: 32 KVR rows of 34-36 tiny-tokenizer tokens (no two share a 64-token row), budget
# 128 cells, 7 examples per step over 2 ranks: rank 0 gets 3 examples (three rows of <= 36 tokens:
# one micro-batch), rank 1 gets 4 (four rows need up to 144 cells: two) -> rank 0 pads with an
# empty one. Step 5 is the epoch's short last step (4 examples, one micro-batch per rank).
GLOBAL, BUDGET, SEQ = 7, 128, 64


def loaders(bpe_tok, world=2, n=32, budget=64, global_batch=5, seq=64):
    """bpe_tok rows are ~31 tokens: with one 64-token row per micro-batch, 2 vs 3 examples -> 1 vs 2 micro-batches."""
    cfg = DataConfig(kvr=KVRConfig(num_pairs=n), max_seq_len=seq)
    return [build_train_loader(cfg, bpe_tok, micro_batch_size=1, rank=r, world_size=world, seed=0,
                               micro_batch_tokens=budget, step_examples=global_batch) for r in range(world)]


@pytest.mark.parametrize("world,budget,global_batch", [(2, 64, 5), (3, 128, 32), (1, 256, 32), (4, 64, 7)])
def test_plan_covers_every_example_once_within_budget_and_equal_pass_counts(bpe_tok, world, budget, global_batch):
    ls = loaders(bpe_tok, world, n=53, budget=budget, global_batch=global_batch)
    steps = ls[0].batches_per_epoch
    assert steps == math.ceil(53 / global_batch) and all(l.batches_per_epoch == steps for l in ls)
    seen = Counter()
    for s in range(steps):
        per_rank = [l.next_step(1) for l in ls]
        assert len({len(x) for x in per_rank}) == 1  # the same number of forward/backward passes everywhere
        info = per_rank[0].info
        assert all(x.info == info for x in per_rank)  # every rank computed every rank's plan
        assert info["num_examples"] == sum(b["num_examples"] for x in per_rank for b in x)
        assert info["num_supervised"] == sum(b["num_supervised"] for x in per_rank for b in x)
        assert info["num_tokens"] == sum(b["num_tokens"] for x in per_rank for b in x)
        assert info["micro_batches"] == len(per_rank[0])
        assert info["real_micro_batches"] == sum(b["num_examples"] > 0 for x in per_rank for b in x)
        for x in per_rank:
            for b in x:
                assert b["input_ids"].numel() <= budget  # padded area within the token budget
                assert b["input_ids"].shape[1] <= ls[0].max_seq_len
        for r, l in enumerate(ls):
            seen.update(ex.id for ex in l.rows_for(0, s))
    assert len(seen) == 53 and set(seen.values()) == {1}


def test_unequal_micro_batch_counts_are_padded_with_empty_batches(bpe_tok):
    r0, r1 = (l.next_step(1) for l in loaders(bpe_tok))
    assert [b["num_examples"] for b in r0] == [2, 0] and [b["num_examples"] for b in r1] == [2, 1]
    empty = r0[1]
    assert empty["num_supervised"] == 0 and empty["loss_index"].numel() == 0
    assert r0.info["real_micro_batches"] == 3 and r0.info["micro_batches"] == 2


def test_fill_on_a_mixture_of_lengths(bpe_tok):
    """Full micro-batches (all but each rank's last) fill the budget to >= 95% with short rows."""
    ls = loaders(bpe_tok, world=2, n=200, budget=256, global_batch=64, seq=128)
    fills = [ls[0].next_step(1).info["fill_full"] for _ in range(3)]
    assert min(fills) >= 0.95, fills


def test_loss_index_gathers_exactly_the_supervised_positions(bpe_tok):
    from remix_ds.engine.loss import supervised_rows

    batch = loaders(bpe_tok)[1].next_step(1)[0]
    index, targets = batch["loss_index"], batch["loss_targets"]
    fallback = supervised_rows({"labels": batch["labels"]})
    assert torch.equal(index, fallback[0]) and torch.equal(targets, fallback[1])
    assert index.numel() == batch["num_supervised"]
    T = batch["labels"].shape[1]
    assert torch.equal(batch["labels"].reshape(-1)[index + 1], targets)  # position t predicts t + 1
    assert bool(((index % T) < T - 1).all())


def overrides(run_dir, *extra):
    return [
        f"train.output_dir={run_dir}",
        f"train.max_steps={STEPS}",
        "train.save_every=3",
        "train.progress_bar=false",
        f"train.global_batch_size={GLOBAL}",
        f"train.micro_batch_tokens={BUDGET}",
        "data.kvr.num_pairs=32",
        f"data.max_seq_len={SEQ}",
        *extra,
    ]


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    run_dir, probe = root / "run", root / "probe"
    proc = run_cmd(deepspeed_cmd([str(REPO / "tests/scripts/engine_probe.py"), str(probe), CONFIG,
                                  *overrides(run_dir)], num_ranks=2))
    return {"run": run_dir, "probe": probe, "stdout": proc.stdout}


@pytest.mark.slow
def test_two_ranks_unequal_counts_match_single_process_full_batch_gradient(token_run):
    from transformers import AutoModelForCausalLM

    from remix_ds.engine.loss import token_loss_sum
    from remix_ds.models import tiny_model_dir

    probe = token_run["probe"]
    per_rank = [torch.load(probe / f"step1_batches_{r}.pt", weights_only=False) for r in range(2)]
    real = [sum(b["num_examples"] > 0 for b in x) for x in per_rank]
    assert len(per_rank[0]) == len(per_rank[1]) == 2 and real == [1, 2]  # unequal, padded to the same passes
    batches = [b for x in per_rank for b in x]
    n = sum(int(b["num_supervised"]) for b in batches)
    assert n == per_rank[0].info["num_supervised"] > 0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    total = sum(token_loss_sum(model, b, "sdpa") for b in batches if b["num_examples"]) / n
    total.backward()
    want = {name: p.grad for name, p in model.named_parameters()}
    got = torch.load(probe / "step1_grads.pt")
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.slow
def test_token_budget_metrics_and_loss_falls(token_run):
    rows = read_metrics(token_run["run"] / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert [r["examples"] for r in rows] == [GLOBAL] * 4 + [4, GLOBAL]  # 32 rows: step 5 is the short one
    assert [r["micro_batches"] for r in rows] == [2, 2, 2, 2, 1, 2]
    assert all(0 < r["micro_batch_fill"] <= 1 for r in rows)
    assert all(0 <= r["loader_wait_frac"] < 1 and r["loader_wait_s"] >= 0 for r in rows)
    assert f"micro-batches of up to {BUDGET} token cells (rows x width, rows of at most {SEQ})" in token_run["stdout"]


@pytest.mark.slow
def test_token_budget_resume_reproduces_uninterrupted_losses(token_run, tmp_path):
    run_dir = tmp_path / "run"
    run_cmd(deepspeed_cmd(["remix_ds.train", CONFIG, *overrides(run_dir, "train.stop_at_step=3")], module=True))
    second = run_cmd(deepspeed_cmd(["remix_ds.train", CONFIG, *overrides(run_dir)], module=True))
    assert "at step 3" in second.stdout
    resumed = read_metrics(run_dir / "metrics.jsonl")
    reference = read_metrics(token_run["run"] / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (a["step"], a["loss"], b["loss"])
        assert a["supervised_tokens"] == b["supervised_tokens"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.slow
def test_no_device_sync_in_steady_state_steps_and_eval():
    """A few non-log steps and a fused evaluation under torch.cuda.set_sync_debug_mode."""
    from remix_ds.bench.syncdebug import run_sync_debug

    report = run_sync_debug(steps=3)
    assert report["step_syncs_remix"] == 0, report["step_sites"]
    assert report["eval_examples"] > 0 and report["eval_syncs_remix"] < report["eval_examples"], report["eval_sites"]
    assert report["ok"]
