"""Replay as published (data.replay[].draw=once, data.replay_placement=interleave): held-out evaluation set outside the pool,
weighted draws without replacement, fixed interleaving positions, step scaling, the online switch."""

from __future__ import annotations

import numpy as np
import pytest

from remix_ds.configtools import ConfigError
from remix_ds.data.loader import TrainLoader
from remix_ds.data.layout import interleave_positions
from remix_ds.data.mixing import StageStream
from remix_ds.data.records import DataError
from remix_ds.data.tokenize import from_token_ids
from remix_ds.forgetting.config import load_forgetting_config
from remix_ds.forgetting.replay import pool_and_eval, split_heldout
from remix_ds.data.replay_rows import draw_without_replacement, published_count, softmax


def rows(prefix: str, n: int, length: int = 5):
    return [from_token_ids(np.arange(2, 2 + length) + i, f"{prefix}-{i}") for i in range(n)]


def stream(n_task=64, n_pool=40, probs=None, seed=3, **kw):
    base = StageStream(dataset=rows("task", n_task), replay_pools=[rows("up", n_pool)], replay_counts=[0],
                       replay_probs=[probs], seed=seed)
    return base.published(**{"ratio": 1 / 8, "draw": "without_replacement", "placement": "interleave",
                                             **kw})


def test_interleave_positions_are_exact():
    assert interleave_positions(10, 4, 3).tolist() == [3, 7, 11, 13]  # the 4th slot has no 3 task rows left: the end
    assert interleave_positions(64, 3, 32).tolist() == [32, 65, 66]
    assert published_count(64, 1 / 32) == 3 and published_count(2000, 1 / 32) == 63


def test_epoch_layout_interleaves_one_upstream_row_every_1_over_r_task_rows():
    s = stream()
    kinds, idx = s.layout(0, 8)
    assert s.replay_counts == [9] and len(kinds) == 64 + 9 == len(s)
    assert np.flatnonzero(kinds == 3).tolist() == [8, 17, 26, 35, 44, 53, 62, 71, 72]
    assert sorted(idx[kinds == 0].tolist()) == list(range(64))  # every task row once
    assert idx[kinds == 3].tolist() == s.fixed_draws[0].tolist()
    # Each epoch permutes the task rows; the replayed draw is the run's, at the same positions.
    k1, i1 = s.layout(1, 8)
    assert np.array_equal(k1, kinds) and not np.array_equal(i1[k1 == 0], idx[kinds == 0])
    assert np.array_equal(i1[k1 == 3], idx[kinds == 3])
    # shuffle (ours): the same rows, permuted in
    ks, is_ = stream(placement="shuffle").layout(0, 8)
    assert sorted(is_[ks == 3].tolist()) == sorted(idx[kinds == 3].tolist())
    assert np.flatnonzero(ks == 3).tolist() != np.flatnonzero(kinds == 3).tolist()


def test_sampling_never_draws_a_heldout_example_nor_one_twice():
    ids = [f"w-{i}" for i in range(200)]
    pool, heldout = split_heldout(200, 50, seed=0)
    assert len(pool) == 150 and len(heldout) == 50 and not set(pool) & set(heldout)
    assert sorted(np.concatenate([pool, heldout]).tolist()) == list(range(200))
    scores = np.random.default_rng(1).normal(size=len(pool))
    base = StageStream(dataset=rows("task", 800),
                       replay_pools=[[from_token_ids(np.arange(2, 7), ids[c]) for c in pool]], replay_counts=[0],
                       replay_probs=[softmax(scores, 0.1)], seed=0)
    for seed in range(5):
        base.seed = seed
        s = base.published(ratio=1 / 8, draw="without_replacement", placement="interleave")
        drawn = [s.replay_pools[0][i].id for i in s.replay_draw(0, 0)]
        assert len(drawn) == 101 == len(set(drawn))  # floor(800 / 8) + 1, all distinct
        assert not {int(i.split("-")[1]) for i in drawn} & set(heldout.tolist())
    # Weighted: softmax(z / T) concentrates the draw on the highest-scored examples.
    peaked = np.zeros(40)
    peaked[[3, 17, 29]] = 1.0  # weight e^10 against 1
    s = stream(probs=softmax(peaked, 0.1))
    assert {3, 17, 29} <= set(s.replay_draw(0, 0).tolist())
    with pytest.raises(DataError, match="distinct replay rows"):
        draw_without_replacement(5, 6, None, np.random.default_rng(0))


def test_switch_replaces_replay_rows_from_the_position_on_and_keeps_task_rows():
    s = stream()
    kinds, before = s.layout(0, 8)
    after = np.arange(39, 30, -1)
    s.set_switch(0, 30, [after])
    k2, i2 = s.layout(0, 8)
    slots = np.flatnonzero(kinds == 3)
    assert np.array_equal(k2, kinds) and np.array_equal(i2[kinds == 0], before[kinds == 0])
    assert i2[slots[slots < 30]].tolist() == before[slots[slots < 30]].tolist()
    assert i2[slots[slots >= 30]].tolist() == after[3:].tolist()  # slot j holds after[j]
    assert s.layout(1, 8)[1][s.layout(1, 8)[0] == 3].tolist() == after.tolist()  # later epochs: the new draw
    # Through the loader: two ranks together still see every task row once per epoch.
    seen = []
    for rank in range(2):
        loader = TrainLoader(s, micro_batch_size=4, rank=rank, world_size=2, max_seq_len=64, pad_id=0, eos_id=1)
        seen += [r.id for st in range(loader.batches_per_epoch) for r in loader.rows_for(0, st)]
    assert sorted(i for i in seen if i.startswith("task")) == sorted(f"task-{i}" for i in range(64))


def test_published_defaults_and_step_scaling(tmp_path):
    cfg = load_forgetting_config(None, [])
    rc = cfg.replay
    assert (rc.pool, rc.heldout_size, rc.draw, rc.placement, rc.scale_steps) == (
        "heldout", 10000, "without_replacement", "interleave", True)
    assert rc.arm_steps(1000) == 1031 and not rc.legacy()
    ours = load_forgetting_config(None, ["replay.pool=fraction", "replay.draw=with_replacement",
                                         "replay.placement=shuffle", "replay.scale_steps=false"]).replay
    assert ours.legacy() and ours.arm_steps(1000) == 1000
    assert load_forgetting_config(None, ["replay.ratio=1.0"]).replay.arm_steps(4) == 8
    pool, ev = pool_and_eval(ours, 50)
    assert len(pool) == 25 and len(ev) == 25
    with pytest.raises(ConfigError, match="replay.heldout_size=10000"):
        pool_and_eval(rc, 500)
    with pytest.raises(ConfigError, match="replay.switch_fraction"):
        load_forgetting_config(None, ["replay.switch_fraction=1.0"])


def test_published_replay_is_a_data_option_of_the_one_loader(tmp_path, bpe_tok):
    """data.replay[].draw=once + data.replay_placement=interleave: build_train_loader builds the published
    stream itself (the same rows as publishing a hand-built stream), so nothing replaces the loader."""
    import json

    from remix_ds.data.config import DataConfig, KVRConfig, MixConfig, ReplayConfig
    from remix_ds.data.loader import build_train_loader

    pool = tmp_path / "up.jsonl"
    pool.write_text("".join(json.dumps({"id": f"up-{i}", "prompt": f"q{i}?", "answer": f"a{i}"}) + "\n"
                            for i in range(40)))
    cfg = DataConfig(kvr=KVRConfig(num_pairs=64), max_seq_len=128, replay_placement="interleave",
                     replay=[ReplayConfig(dataset=str(pool), ratio=1 / 8, draw="once")])
    s = build_train_loader(cfg, bpe_tok, micro_batch_size=4, rank=0, world_size=1, seed=3).stream
    kinds, idx = s.layout(0, 8)
    assert s.replay_counts == [9] and np.flatnonzero(kinds == 3).tolist() == [8, 17, 26, 35, 44, 53, 62, 71, 72]
    plain = DataConfig(kvr=KVRConfig(num_pairs=64), max_seq_len=128, replay=[ReplayConfig(dataset=str(pool), ratio=1 / 8)])
    base = build_train_loader(plain, bpe_tok, micro_batch_size=4, rank=0, world_size=1, seed=3).stream
    hand = base.published(ratio=1 / 8, draw="without_replacement", placement="interleave")
    for epoch in (0, 1):
        assert [r.id for r in s.epoch_items(epoch)] == [r.id for r in hand.epoch_items(epoch)]
    with pytest.raises(ConfigError, match="data.mix.schedule=pooled"):
        DataConfig(replay_placement="interleave", mix=MixConfig(schedule="stratified"))
    with pytest.raises(ConfigError, match=r"data.replay\[0\].draw"):
        DataConfig(replay=[ReplayConfig(draw="twice")])
