"""Stage stream + train loader: rank sharding, per-epoch reshuffle, replay, resumption."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from remix_ds.config import load_config
from remix_ds.data.config import DataConfig, KVRConfig, ReplayConfig
from remix_ds.data.loader import build_train_loader
from remix_ds.data.mixing import mix_count


def kvr_cfg(n=53, **kw) -> DataConfig:
    return DataConfig(kvr=KVRConfig(num_pairs=n), max_seq_len=128, **kw)


def loaders(cfg, bpe_tok, world, micro, seed=0):
    return [build_train_loader(cfg, bpe_tok, micro_batch_size=micro, rank=r, world_size=world, seed=seed) for r in range(world)]


@pytest.mark.parametrize("world,micro", [(1, 4), (2, 4), (3, 2), (4, 5)])
def test_every_row_seen_once_per_epoch_across_ranks(bpe_tok, world, micro):
    cfg = kvr_cfg(53)
    ls = loaders(cfg, bpe_tok, world, micro)
    bpe = ls[0].batches_per_epoch
    assert all(l.batches_per_epoch == bpe for l in ls)
    assert bpe == -(-53 // (micro * world))
    for epoch in range(2):
        seen, n_examples, n_sup = Counter(), 0, 0
        for l in ls:
            for step in range(bpe):
                rows = l.rows_for(epoch, step)
                assert len(rows) <= micro
                seen.update(r.id for r in rows)
                batch = next(l)
                assert batch["num_examples"] == len(rows)
                n_examples += batch["num_examples"]
                n_sup += batch["num_supervised"]
                # the batch holds exactly these rows' tokens
                assert batch["num_tokens"] == sum(len(r) for r in rows)
            assert l.epoch == epoch + 1 and l.step_in_epoch == 0
        assert len(seen) == 53 and set(seen.values()) == {1}
        assert n_examples == 53
        # every kvr answer is 8 characters + EOS: supervised count is the dataset's, not a sample's
        assert n_sup == sum(r.num_supervised for r in ls[0].stream.dataset)


def test_short_last_step_gives_empty_batch_not_deadlock(bpe_tok):
    ls = loaders(kvr_cfg(3), bpe_tok, world=4, micro=2)
    batches = [next(l) for l in ls]
    assert [b["num_examples"] for b in batches] == [0, 1, 1, 1]
    empty = batches[0]
    assert empty["num_supervised"] == 0 and empty["num_tokens"] == 0
    assert empty["input_ids"].shape == (1, 1) and (empty["labels"] == -100).all()
    assert empty["cu_seq_lens_q"].tolist() == [0, 1]


def test_optimizer_step_rows_do_not_depend_on_world_size(bpe_tok):
    cfg = kvr_cfg(40)
    one = loaders(cfg, bpe_tok, world=1, micro=8)[0]
    two = loaders(cfg, bpe_tok, world=2, micro=2)
    # global batch 8: one micro-step of W=1, M=8 == two micro-steps of W=2, M=2
    for step in range(5):
        ref = {r.id for r in one.rows_for(0, step)}
        got = {r.id for l in two for s in (2 * step, 2 * step + 1) for r in l.rows_for(0, s)}
        assert got == ref


def test_reshuffled_every_epoch_by_seed_plus_epoch(bpe_tok):
    l = loaders(kvr_cfg(30), bpe_tok, world=1, micro=30)[0]
    e0 = [r.id for r in l.rows_for(0, 0)]
    e1 = [r.id for r in l.rows_for(1, 0)]
    assert sorted(e0) == sorted(e1) and e0 != e1
    # epoch e of seed s uses default_rng(s + e): seed 1 epoch 0 == seed 0 epoch 1
    l1 = loaders(kvr_cfg(30), bpe_tok, world=1, micro=30, seed=1)[0]
    assert [r.id for r in l1.rows_for(0, 0)] == e1
    ids = [r.id for r in l.stream.dataset]
    perm = np.random.default_rng(0 + 1).permutation(30)
    assert e1 == [ids[i] for i in perm]


def test_reference_compat_one_order_and_eos_padding(bpe_tok):
    cfg = kvr_cfg(30, reference_compat=True)
    l = loaders(cfg, bpe_tok, world=1, micro=4)[0]
    assert [r.id for r in l.rows_for(0, 0)] == [r.id for r in l.rows_for(3, 0)]
    rows = l.rows_for(0, 0)
    batch = next(l)
    L = max(len(r) for r in l.stream.dataset)
    assert batch["input_ids"].shape == (4, L)
    eos = bpe_tok.eos_token_id
    for i, r in enumerate(rows):
        n = len(r)
        assert batch["input_ids"][i, :n].tolist() == r.input_ids.tolist()
        assert (batch["input_ids"][i, n:] == eos).all() and (batch["labels"][i, n:] == eos).all()
        assert batch["position_ids"][i].tolist() == list(range(L))
    assert batch["num_supervised"] == sum(r.num_supervised for r in rows) + sum(L - len(r) for r in rows)


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("consumed", [3, 7, 14])  # mid-epoch, just before / at an epoch boundary (bpe = 7)
def test_resume_sees_the_same_batches(bpe_tok, consumed):
    cfg = kvr_cfg(53)
    a = build_train_loader(cfg, bpe_tok, micro_batch_size=4, rank=1, world_size=2, seed=5)
    assert a.batches_per_epoch == 7
    _take(a, consumed)
    state = json.loads(json.dumps(a.state_dict()))  # plain JSON-able ints
    expected = _take(a, 9)
    b = build_train_loader(cfg, bpe_tok, micro_batch_size=4, rank=1, world_size=2, seed=5)
    b.load_state_dict(state)
    assert (b.epoch, b.step_in_epoch) == (consumed // 7, consumed % 7)
    for x, y in zip(expected, _take(b, 9)):
        _same(x, y)


def test_resume_with_other_world_size_and_mismatch_errors(bpe_tok):
    cfg = kvr_cfg(48)
    a = loaders(cfg, bpe_tok, world=2, micro=2)
    for l in a:
        _take(l, 3)  # 12 rows consumed
    b = build_train_loader(cfg, bpe_tok, micro_batch_size=4, rank=0, world_size=1, seed=0)
    b.load_state_dict(a[0].state_dict())
    assert b.step_in_epoch == 3
    expect = {r.id for l in a for r in l.rows_for(0, 3)}  # rows 12..15 of the epoch order
    assert {r.id for r in b.rows_for(0, 3)} == expect
    c = build_train_loader(cfg, bpe_tok, micro_batch_size=5, rank=0, world_size=1, seed=0)
    with pytest.raises(ValueError, match="not a multiple"):
        c.load_state_dict(a[0].state_dict())
    d = build_train_loader(kvr_cfg(49), bpe_tok, micro_batch_size=2, rank=0, world_size=2, seed=0)
    with pytest.raises(ValueError, match="rows per epoch"):
        d.load_state_dict(a[0].state_dict())


def test_replay_rows_redrawn_every_epoch_from_the_earlier_dataset(bpe_tok, tmp_path):
    stage_a = tmp_path / "a.jsonl"
    stage_a.write_text("".join(json.dumps({"prompt": f"fact {i}?", "answer": f"A{i}"}) + "\n" for i in range(40)))
    stage_b = tmp_path / "b.jsonl"
    stage_b.write_text("".join(json.dumps({"id": f"b{i}", "prompt": f"new {i}?", "answer": f"B{i}"}) + "\n" for i in range(100)))
    cfg = DataConfig(dataset=str(stage_b), max_seq_len=64, replay=[ReplayConfig(dataset=str(stage_a), ratio=0.1)])
    l = build_train_loader(cfg, bpe_tok, micro_batch_size=110, rank=0, world_size=1, seed=0)
    assert l.stream.counts() == {"dataset": 100, "generic": 0, "random": 0, "replay": 10}
    epochs = [[r.id for r in l.rows_for(e, 0)] for e in range(4)]
    replayed = [{i for i in ids if not i.startswith("b")} for ids in epochs]
    assert all(len(r) == 10 for r in replayed)  # without replacement within an epoch
    assert all(r <= {str(i) for i in range(40)} for r in replayed)
    assert len(set.union(*replayed)) > 10  # redrawn: not the same 10 facts each epoch
    assert all(sum(i.startswith("b") for i in ids) == 100 for ids in epochs)


def test_mix_count_matches_reference_floor():
    assert mix_count(2.0, 2000) == 4000
    assert mix_count(0.01, 2000) == 20
    assert mix_count(0.025, 2000) == 50
    assert mix_count(0.3, 10) == 3


def test_data_section_loads_from_run_config_overrides():
    cfg = load_config(None, ["data.replay=[{dataset: kvr, ratio: 0.05}]", "data.mix.generic_ratio=2", "data.kvr.num_pairs=10"])
    assert cfg.data.replay[0].ratio == 0.05 and cfg.data.mix.generic_ratio == 2.0 and cfg.data.kvr.num_pairs == 10


def test_generic_completion_and_random_raw_rows(bpe_tok, shard_corpus):
    from remix_ds.data.config import MixConfig

    mix = MixConfig(generic_ratio=2.0, generic_corpus=shard_corpus, random_ratio=1.0, raw_words=12, random_vocab_size=300)
    cfg = DataConfig(kvr=KVRConfig(num_pairs=20), max_seq_len=512, mix=mix)
    l = build_train_loader(cfg, bpe_tok, micro_batch_size=8, rank=0, world_size=1, seed=0)
    assert l.stream.counts() == {"dataset": 20, "generic": 40, "random": 20, "replay": 0}
    assert l.stats["rows_per_epoch"] == 80 and l.stats["dropped_dataset"] == 0
    g = l.stream.generic[0]
    prompt = bpe_tok.decode(g.input_ids[g.labels == -100].tolist())
    answer = bpe_tok.decode(g.input_ids[g.labels != -100][:-1].tolist())
    assert prompt.startswith("<|user|>\nComplete the following partial passage:\n\n")
    assert len(prompt.split("\n\n", 1)[1].replace("<|assistant|>", "").split()) == 50
    assert len(answer.split()) == 50 and g.labels[-1] == bpe_tok.eos_token_id
    r = l.stream.random[0]
    assert len(bpe_tok.decode(r.input_ids.tolist()).split()) == 12  # 12 words, loss on all but the first token
    assert r.labels[0] == -100 and (r.labels[1:] == r.input_ids[1:]).all()
    # mixed rows are fixed across epochs (a dataset), the order is not
    again = build_train_loader(cfg, bpe_tok, micro_batch_size=8, rank=0, world_size=1, seed=0)
    assert [x.input_ids.tolist() for x in again.stream.generic] == [x.input_ids.tolist() for x in l.stream.generic]
    kinds = [x.id.split("-")[0] for x in l.rows_for(0, 0) + l.rows_for(0, 1)]
    assert len(set(kinds)) > 1  # interleaved, not blocks


def test_generic_raw_windows_and_random_completion(bpe_tok, shard_corpus):
    from remix_ds.data.config import MixConfig

    mix = MixConfig(generic_ratio=1.0, generic_corpus=shard_corpus, generic_format="raw", raw_tokens=64,
                    random_ratio=0.5, random_format="completion", prompt_words=5, answer_words=4, random_vocab_size=300)
    l = build_train_loader(DataConfig(kvr=KVRConfig(num_pairs=10), mix=mix), bpe_tok, micro_batch_size=4, rank=0, world_size=1, seed=0)
    assert l.stream.counts() == {"dataset": 10, "generic": 10, "random": 5, "replay": 0}
    assert all(len(x) == 64 and x.num_supervised == 63 for x in l.stream.generic)
    r = l.stream.random[0]
    assert len(bpe_tok.decode(r.input_ids[r.labels != -100][:-1].tolist()).split()) == 4


# ----------------------------------------------------------------------------- stage build (issue 14)


def reference_generic_rows(cfg, tokenizer, count):
    """generic_rows before issue 14 (decode every drawn document): the benchmark's "before" column."""
    from remix_ds.bench.checkout import baseline

    decode_all_generic_rows = baseline("stage").decode_all_generic_rows

    try:
        return decode_all_generic_rows(cfg, tokenizer, count)
    except RuntimeError as e:  # not enough long-enough documents for this setting
        raise AssertionError("reference could not draw") from e


@pytest.mark.parametrize("which", ["tiny", "bpe"])
def test_generic_rows_identical_to_decoding_every_document(which, tiny_tokenizer, bpe_tok, shard_corpus):
    from remix_ds.data.config import MixConfig
    from remix_ds.data.generic import generic_rows

    tok, corpus = (tiny_tokenizer, "builtin") if which == "tiny" else (bpe_tok, shard_corpus)
    for words, max_len in [((50, 50), 512), ((20, 10), 512), ((50, 50), 150)]:  # 150: some rows too long
        mix = MixConfig(generic_ratio=1.0, generic_corpus=corpus, prompt_words=words[0], answer_words=words[1], seed=3)
        cfg = DataConfig(kvr=KVRConfig(num_pairs=10), max_seq_len=max_len, mix=mix)
        n = 120 if max_len == 512 else 8
        try:
            ref, ref_drop = reference_generic_rows(cfg, tok, n)
        except AssertionError:
            continue
        got, drop = generic_rows(cfg, tok, n)
        assert drop == ref_drop
        assert [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in got] == \
               [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in ref]


def test_generic_rows_of_repeated_documents_identical_to_decoding_every_document(tiny_tokenizer):
    """More draws than the built-in corpus has documents: each document is tokenized once and its row
    repeated; rows, ids and the too-long count are those of tokenizing every drawn document."""
    from remix_ds.data.config import MixConfig
    from remix_ds.data.generic import generic_rows

    for n, max_len in [(1500, 512), (400, 240)]:
        cfg = DataConfig(kvr=KVRConfig(num_pairs=10), max_seq_len=max_len, mix=MixConfig(generic_ratio=1.0, seed=5))
        ref, ref_drop = reference_generic_rows(cfg, tiny_tokenizer, n)
        got, drop = generic_rows(cfg, tiny_tokenizer, n)
        assert drop == ref_drop and (drop > 0) is (max_len == 240)
        assert len({x.input_ids.tobytes() for x in got}) < n  # documents did repeat
        assert [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in got] == \
               [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in ref]


@pytest.mark.parametrize("which,max_len", [("tiny", 512), ("tiny", 240), ("bpe", 512)])
def test_fresh_generic_rows_identical_to_tokenizing_each_decoded_document(which, max_len, tiny_tokenizer, bpe_tok,
                                                                          shard_corpus):
    """redraw=epoch rows == each drawn document decoded, cut to its first words and tokenized whole;
    a row that does not fit is replaced by the unit one pass later."""
    from remix_ds.data.config import MixConfig
    from remix_ds.data.generic import GenericRows, completion_examples
    from remix_ds.data.tokenize import tokenize_for

    tok, corpus = (tiny_tokenizer, "builtin") if which == "tiny" else (bpe_tok, shard_corpus)
    mix = MixConfig(generic_ratio=1.0, generic_corpus=corpus, redraw="epoch", seed=2)
    cfg = DataConfig(kvr=KVRConfig(num_pairs=10), max_seq_len=max_len, mix=mix)
    g = GenericRows(cfg, tok, 700)
    need = mix.prompt_words + mix.answer_words

    def reference(unit):
        words = tok.decode(g._reader.document(int(unit)), skip_special_tokens=True).split()
        if len(words) < need:
            return None
        rows, _ = tokenize_for(completion_examples([words[:need]], cfg, "generic"), cfg, tok, "answer")
        return rows[0] if rows else None

    for epoch in (0, 3):
        slots = np.arange(0, 700, 3)
        got = g.rows(epoch, 0, slots)
        want = []
        for s in slots.tolist():
            k = 0
            while (row := reference(g.units(epoch, np.array([s + k * len(g._units)]))[0])) is None:
                k += 1
            want.append((f"generic-e{epoch}-{s}", row.input_ids.tolist(), row.labels.tolist()))
        assert [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in got] == want
    assert (g.substituted > 0) is (max_len == 240)


def test_word_counts_from_ids_equal_decoding_on_the_whole_corpus(tiny_tokenizer, sp_tok, bpe_tok):
    from remix_ds.data import corpus
    from remix_ds.data.doc_words import WordCounter, fast_batch_decode

    for tok in (tiny_tokenizer, sp_tok, bpe_tok):
        reader = corpus.generic_corpus(tok, max_bytes=300_000)
        docs = list(reader.iter_documents())
        texts = tok.batch_decode([d.tolist() for d in docs], skip_special_tokens=True)
        assert fast_batch_decode(tok, docs) == texts
        counter = WordCounter(tok)
        assert counter.exact
        exact = np.array([len(t.split()) for t in texts])
        counts, cut = counter.count_and_cut(docs, 100)
        assert (counts == exact).all() and exact.max() > 100
        for d, t, c in zip(docs, texts, cut):  # the cut keeps the first 100 words whole
            assert tok.decode(d[:c].tolist(), skip_special_tokens=True).split()[:100] == t.split()[:100]
        # non-ASCII text: byte tokens are unsafe and such documents are decoded
        ids = tok.encode("naïve café — ünïcode\u00a0words here", add_special_tokens=False)
        assert counter.count([np.array(ids)])[0] == len(tok.decode(ids, skip_special_tokens=True).split())
        # words from the per-token pieces == split() of the decoded text (cut documents too)
        assert counter.words(docs) == [t.split() for t in texts]
        assert counter.words([d[:c] for d, c in zip(docs, cut)]) == \
               [t.split() for t in tok.batch_decode([d[:c].tolist() for d, c in zip(docs, cut)], skip_special_tokens=True)]
        odd = [np.array(ids), np.array(tok.encode("a</s>b <s> x\n\ny\t z", add_special_tokens=True)), np.array(ids[:3])]
        assert counter.words(odd) == [tok.decode(d.tolist(), skip_special_tokens=True).split() for d in odd]
