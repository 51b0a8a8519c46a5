"""Prediction-weighted replay in the mixer: softmax(score / T) draws, weights files, token-window pools."""

from __future__ import annotations

import json

import numpy as np
import pytest

from remix_ds.configtools import ConfigError
from remix_ds.data.config import DataConfig, KVRConfig, ReplayConfig
from remix_ds.data.loader import build_train_loader
from remix_ds.data.mixing import StageStream, build_stage_stream
from remix_ds.data.replay_rows import softmax
from remix_ds.data.records import DataError
from remix_ds.data.tokenize import from_token_ids


def write_pool(path, n=12):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"up-{i}", "prompt": f"Recall item {i}", "answer": f"value {i}"}) + "\n")
    return path


def test_softmax_is_stable_and_normalized():
    p = softmax(np.array([1000.0, 1000.1, 999.9]), 0.1)
    assert p.sum() == pytest.approx(1.0)
    assert p == pytest.approx(np.exp([0.0, 1.0, -1.0]) / np.exp([0.0, 1.0, -1.0]).sum())


def test_weighted_pool_draws_follow_softmax_of_scores(bpe_tok, tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    scores = {f"up-{i}": 0.02 * i for i in range(12)}  # larger predicted forgetting for larger i
    scores["not-in-pool"] = 5.0  # extra ids are ignored
    (tmp_path / "w.json").write_text(json.dumps(scores))
    replay = ReplayConfig(dataset=str(pool), subsample_seed=None, ratio=2.0, weights_file=str(tmp_path / "w.json"),
                          temperature=0.1)
    cfg = DataConfig(kvr=KVRConfig(num_pairs=20), max_seq_len=128, replay=[replay])
    stream = build_stage_stream(cfg, bpe_tok, seed=0)
    ids = [ex.id for ex in stream.replay_pools[0]]
    expected = softmax(np.array([scores[i] for i in ids]), 0.1)
    assert stream.replay_probs[0] == pytest.approx(expected)
    assert stream.replay_counts == [40]
    counts = np.zeros(12)
    for epoch in range(300):
        np.add.at(counts, stream.replay_draw(epoch, 0), 1)
    freq = counts / counts.sum()
    assert np.abs(freq - expected).max() < 0.015  # 12,000 draws: sampling error ~0.004
    order = [int(i.split("-")[1]) for i in ids]
    assert np.corrcoef(np.array(order), freq)[0, 1] > 0.9  # more forgetting -> replayed more often
    assert freq[order.index(11)] > 4 * freq[order.index(0)]
    # Deterministic per (seed, epoch), different across epochs; the replayed rows are in the epoch.
    assert np.array_equal(stream.replay_draw(3, 0), build_stage_stream(cfg, bpe_tok, seed=0).replay_draw(3, 0))
    assert not np.array_equal(stream.replay_draw(3, 0), stream.replay_draw(4, 0))
    epoch_ids = [r.id for r in stream.epoch_items(0)]
    assert sum(i.startswith("up-") for i in epoch_ids) == 40


def test_uniform_pool_is_unchanged_without_weights(bpe_tok, tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    cfg = DataConfig(kvr=KVRConfig(num_pairs=24), max_seq_len=128,
                     replay=[ReplayConfig(dataset=str(pool), subsample_seed=None, ratio=0.5)])
    stream = build_stage_stream(cfg, bpe_tok, seed=0)
    assert stream.replay_probs == [None]
    draw = stream.replay_draw(0, 0)
    assert sorted(draw.tolist()) == list(range(12))  # one whole pass, without replacement


def test_weights_file_errors(bpe_tok, tmp_path):
    pool = write_pool(tmp_path / "pool.jsonl")
    (tmp_path / "w.json").write_text(json.dumps({"up-0": 1.0}))
    cfg = DataConfig(kvr=KVRConfig(num_pairs=8), max_seq_len=128,
                     replay=[ReplayConfig(dataset=str(pool), subsample_seed=None, ratio=1.0,
                                          weights_file=str(tmp_path / "w.json"))])
    with pytest.raises(DataError, match="no score for 11 pool rows"):
        build_stage_stream(cfg, bpe_tok, seed=0)
    (tmp_path / "w.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        build_stage_stream(cfg, bpe_tok, seed=0)
    with pytest.raises(ConfigError, match=r"data.replay\[0\].temperature"):
        DataConfig(replay=[ReplayConfig(temperature=0.0)])
    with pytest.raises(DataError, match="probabilities"):
        StageStream(dataset=[from_token_ids(np.arange(4), "a")], replay_pools=[[from_token_ids(np.arange(4), "b")]],
                    replay_counts=[1], replay_probs=[np.array([0.5, 0.5])])


def test_token_window_pool_trains_every_token(bpe_tok, tmp_path):
    tokens = np.arange(5 * 16, dtype=np.int32).reshape(5, 16) % 500
    ids = np.array([f"window-{i}" for i in (3, 9, 27, 81, 243)])
    np.savez(tmp_path / "pool.npz", ids=ids, tokens=tokens)
    (tmp_path / "w.json").write_text(json.dumps({i: float(k) for k, i in enumerate(ids)}))
    cfg = DataConfig(kvr=KVRConfig(num_pairs=10), max_seq_len=128,
                     replay=[ReplayConfig(dataset=str(tmp_path / "pool.npz"), ratio=1.0,
                                          weights_file=str(tmp_path / "w.json"), temperature=1.0)])
    loader = build_train_loader(cfg, bpe_tok, micro_batch_size=4, rank=0, world_size=1, seed=0)
    pool = loader.stream.replay_pools[0]
    assert [p.id for p in pool] == ids.tolist()
    for p, t in zip(pool, tokens):
        assert np.array_equal(p.input_ids, t)
        assert p.labels[0] == -100 and np.array_equal(p.labels[1:], t[1:])
    assert loader.stream.replay_probs[0] == pytest.approx(softmax(np.arange(5.0), 1.0))
    assert loader.rows_per_epoch == 20
    np.savez(tmp_path / "bad.npz", tokens=tokens)
    cfg.replay[0].dataset = str(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="token-window pool"):
        build_stage_stream(cfg, bpe_tok, seed=0)
