"""The background loader: same steps as the synchronous loader, exact-resume state of consumed steps only."""

import time

import pytest
import torch

from remix_ds.data.config import DataConfig, KVRConfig
from remix_ds.data.loader import BackgroundLoader, build_train_loader


def make(bpe_tok, **kw):
    cfg = DataConfig(kvr=KVRConfig(num_pairs=21), max_seq_len=64)
    return build_train_loader(cfg, bpe_tok, micro_batch_size=2, rank=1, world_size=2, seed=3, **kw)


def same_step(a, b):
    assert len(a) == len(b) and a.info == b.info
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if torch.is_tensor(x[k]):
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


@pytest.mark.parametrize("mode", [{}, {"micro_batch_tokens": 64, "step_examples": 6}], ids=["examples", "tokens"])
def test_background_steps_equal_synchronous_steps_across_epochs(bpe_tok, mode):
    units = 1 if mode else 2
    sync, bg = make(bpe_tok, **mode), BackgroundLoader(make(bpe_tok, **mode), depth=3)
    try:
        for _ in range(3 * sync.batches_per_epoch):  # > 1 epoch in both modes
            same_step(bg.next_step(units), sync.next_step(units))
            assert bg.epoch == sync.epoch
    finally:
        bg.close()
    assert sync.epoch >= 1


def test_state_dict_reflects_consumed_not_prefetched_steps(bpe_tok):
    bg = BackgroundLoader(make(bpe_tok), depth=4)
    sync = make(bpe_tok)
    for _ in range(2):
        bg.next_step(2)
        sync.next_step(2)
    time.sleep(0.3)  # let the worker run ahead and fill its queue
    assert bg.loader.state_dict() != sync.state_dict()  # the worker is ahead ...
    assert bg.state_dict() == sync.state_dict()  # ... the saved state is not
    state = bg.state_dict()
    want = sync.next_step(2)
    resumed = BackgroundLoader(make(bpe_tok), depth=2)
    resumed.load_state_dict(state)
    same_step(resumed.next_step(2), want)
    # reloading while the worker runs: prefetched steps are dropped, the position is the saved one
    bg.load_state_dict(state)
    same_step(bg.next_step(2), want)
    bg.close()
    resumed.close()
    assert resumed.loader.state_dict() == resumed.state_dict()  # close() rewinds to the consumed position


def test_worker_error_reaches_the_caller(bpe_tok):
    loader = make(bpe_tok)

    def broken(units):
        raise RuntimeError("bad row in the stream")

    loader.next_step = broken
    bg = BackgroundLoader(loader)
    with pytest.raises(RuntimeError, match="bad row"):
        bg.next_step(2)


def test_wait_time_is_measured(bpe_tok):
    loader = make(bpe_tok)
    inner = loader.next_step

    def slow(units):
        time.sleep(0.05)
        return inner(units)

    loader.next_step = slow
    bg = BackgroundLoader(loader, depth=1)
    bg.next_step(2)
    first = bg.wait_s
    assert first >= 0.04  # nothing prefetched yet
    time.sleep(0.2)
    bg.next_step(2)
    assert bg.wait_s - first < 0.02  # prefetched while we slept
    bg.close()
