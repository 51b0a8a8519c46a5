"""Random-word sequences: ids equal tokenizing the joined words, on sentencepiece and byte-level BPE."""

from __future__ import annotations

import numpy as np
import pytest

from remix_ds.data.random_words import RandomWords, load_words
from helpers import tokenizers

TOKENIZERS = tokenizers()


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tok(request):
    return TOKENIZERS[request.param]


@pytest.fixture(scope="module")
def words():
    return load_words("wordfreq:en", 3000)


def test_ids_match_tokenizing_joined_words(tok, words):
    """The contract: ids == tokenizer(" ".join(words)) exactly, and decode gives the joined words back."""
    gen = RandomWords(tok, *words, min_words=1, max_words=20)
    batch = gen.sample(np.random.default_rng(0), 300)
    texts = [gen.text(batch, i) for i in range(len(batch))]
    ref = tok(texts, add_special_tokens=False)["input_ids"]
    for i, text in enumerate(texts):
        assert batch[i].tolist() == ref[i], text
        assert tok.decode(batch[i].tolist()) == text
    assert gen.agreement(tok, np.random.default_rng(1), 50) == 1.0
    # first word uses the initial form, later words the continuation form
    assert batch[0][: len(gen.word_ids(batch.word_indices[0], initial=True))].tolist() == gen.word_ids(
        batch.word_indices[0], initial=True).tolist()


def test_shapes_offsets_and_lengths(words):
    tok = TOKENIZERS["sentencepiece"]
    gen = RandomWords(tok, *words, min_words=3, max_words=7)
    batch = gen.sample(np.random.default_rng(5), 1000)
    assert len(batch) == 1000 and batch.ids.dtype == np.int32
    assert batch.offsets[0] == 0 and batch.offsets[-1] == len(batch.ids)
    n_words = np.diff(batch.word_offsets)
    assert n_words.min() == 3 and n_words.max() == 7  # both ends of the range are reachable
    assert [len(x) for x in batch.split()] == batch.lengths().tolist()
    assert batch.word_indices.max() < gen.vocab_size


def test_deterministic_by_seed(words):
    gen = RandomWords(TOKENIZERS["bytelevel_bpe"], *words)
    a = gen.sample(np.random.default_rng(42), 50)
    b = gen.sample(np.random.default_rng(42), 50)
    c = gen.sample(np.random.default_rng(43), 50)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
    assert not np.array_equal(a.word_indices[:20], c.word_indices[:20])
    assert gen.sample_one(np.random.default_rng(42)).tolist() == gen.sample(np.random.default_rng(42), 1).ids.tolist()


def test_max_tokens_keeps_a_word_prefix(tok, words):
    gen = RandomWords(tok, *words, min_words=10, max_words=30, max_tokens=24)
    full = RandomWords(tok, *words, min_words=10, max_words=30)
    a = gen.sample(np.random.default_rng(3), 200)
    b = full.sample(np.random.default_rng(3), 200)  # same draws before truncation
    assert a.lengths().max() <= 24
    assert (a.lengths() < b.lengths()).any()
    for i in range(200):
        kept = a.word_indices[a.word_offsets[i] : a.word_offsets[i + 1]].tolist()
        drawn = b.word_indices[b.word_offsets[i] : b.word_offsets[i + 1]].tolist()
        assert kept == drawn[: len(kept)] and len(kept) >= 1
        assert a[i].tolist() == b[i][: len(a[i])].tolist()
        if len(kept) < len(drawn):  # the next word would not have fit
            assert len(a[i]) + len(gen.word_ids(drawn[len(kept)])) > 24
    with pytest.raises(ValueError, match="shorter than the longest word"):
        RandomWords(tok, *words, max_tokens=1)


def test_frequency_weighting(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("# word count\ncommon 99\nrare 1\nnumber2 50\n")
    words, weights = load_words(str(f), 10)
    assert words == ["common", "rare"] and weights.tolist() == pytest.approx([0.99, 0.01])  # number2 is not alphabetic
    tok = TOKENIZERS["sentencepiece"]
    freq = RandomWords(tok, words, weights, weighting="frequency", min_words=50, max_words=50)
    share = (freq.sample(np.random.default_rng(0), 200).word_indices == 0).mean()
    assert 0.98 < share < 1.0
    uni = RandomWords(tok, words, weights, weighting="uniform", min_words=50, max_words=50)
    assert 0.45 < (uni.sample(np.random.default_rng(0), 200).word_indices == 0).mean() < 0.55
    with pytest.raises(ValueError, match="needs word weights"):
        RandomWords(tok, words, weighting="frequency")


def test_wordfreq_source(words):
    w, p = words
    assert len(w) == 3000 and w[:3] == ["the", "to", "and"]
    assert all(x.isascii() and x.isalpha() for x in w) and len(set(w)) == 3000
    assert p.sum() == pytest.approx(1.0) and p[0] > p[-1]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_words("missing.txt")
    with pytest.raises(ValueError, match="min_words <= max_words"):
        RandomWords(TOKENIZERS["sentencepiece"], w, min_words=5, max_words=4)
