"""Completion rows from per-word ids (data/word_cache.py) == tokenizing each formatted row whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from remix_ds.data import formats
from remix_ds.data.records import Example
from remix_ds.data.tokenize import tokenize_examples
from remix_ds.data.word_cache import CompletionRows, unit_split_reason
from helpers import llama3_style

ODD = ["the", "cat's", "don't", "U.S.", "12345", "3.14", "(hello)", "\u2014", "na\u00efve", "\u65e5\u672c\u8a9e",
       "\U0001f600", "e\u0301", "</s>", "<s>", "<|endoftext|>", "<unk>", "\u2581", "\u2581x", "a\u2581b", "'s", "'ll",
       "x\u200by", "\ufeff", "--", "...", "\u03a9", "\ufb01", "<|user|>", "<|assistant|>", "\\n", "''", "\u00e9t\u00e9!",
       "1,000,000", "a'b'c", "\u0661\u0662", "\u200d"]


def word_rows(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    chars = list("abcdefXYZ0189.,;'!?-()\u00e9\u00df")
    rows = []
    for _ in range(n):
        k = int(rng.integers(1, 14))
        rows.append([str(rng.choice(ODD)) if rng.random() < 0.5 else "".join(rng.choice(chars, int(rng.integers(1, 9))))
                     for _ in range(k)])
    rows += [["a", " b"], ["x\ty", "z"], ["", "q", "r"], ["two  spaces", "w"], ["\n", "x", "y"]]  # not single words
    return rows


def whole_rows(rows, tok, p, a, max_len, instruction=formats.COMPLETION_INSTRUCTION, prompt_format="plain"):
    exs = [Example(id=f"g-{i}", source="g", prompt=formats.completion_prompt(w[:p], instruction), answer=" ".join(w[p:p + a]))
           for i, w in enumerate(rows)]
    res = tokenize_examples(exs, tok, mode="answer", prompt_format=prompt_format, max_len=max_len)
    return [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in res.examples], res.dropped


@pytest.mark.parametrize("which", ["tiny", "sentencepiece", "bytelevel", "llama3"])
def test_rows_identical_to_whole_row_tokenization(which, tiny_tokenizer, sp_tok, bpe_tok):
    tok = {"tiny": tiny_tokenizer, "sentencepiece": sp_tok, "bytelevel": bpe_tok}.get(which) or llama3_style(bpe_tok)
    assert unit_split_reason(tok) is None
    rows = word_rows(2500)
    for p, a, max_len in [(5, 4, 60), (1, 1, None), (3, 1, 40), (6, 20, None)]:
        rows_of = CompletionRows(tok)
        assert rows_of.fast
        got, dropped = rows_of.rows(rows, p, a, "g", max_len)
        ref, ref_dropped = whole_rows(rows, tok, p, a, max_len)
        assert dropped == ref_dropped
        assert [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in got] == ref
        again, _ = rows_of.rows(rows[::-1], p, a, "g", max_len)  # from the warm cache
        assert [x.input_ids.tolist() for x in again] == [x[1] for x in whole_rows(rows[::-1], tok, p, a, max_len)[0]]


def test_other_instruction_and_chat_template_fall_back(tiny_tokenizer):
    rows = word_rows(300, seed=1)
    r = CompletionRows(tiny_tokenizer, instruction="  Go on:  ")
    assert r.fast
    got, _ = r.rows(rows, 4, 3, "g", None)
    assert [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in got] == \
           whole_rows(rows, tiny_tokenizer, 4, 3, None, instruction="  Go on:  ")[0]
    assert CompletionRows(tiny_tokenizer, prompt_format="chat_template").reason == "prompt_format is chat_template"


def test_condition_read_from_the_tokenizer(tiny_tokenizer):
    """A piece with an interior '▁' (a merge across words), or a normalizer: rows are tokenized whole."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    spec["model"]["vocab"] = {**vocab, "e\u2581": len(vocab)}
    spec["model"]["merges"] = [["e", "\u2581"]] + spec["model"]["merges"]  # the first merge: across words
    bad = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>", eos_token="</s>")
    assert "interior" in unit_split_reason(bad)
    rows = [["the", "the", "the", "cat"], ["a", "the", "dog", "the"]] * 3
    r = CompletionRows(bad)
    assert not r.fast
    got, _ = r.rows(rows, 2, 2, "g", None)
    ref = whole_rows(rows, bad, 2, 2, None)[0]
    assert [x.input_ids.tolist() for x in got] == [x[1] for x in ref]
    assert any(len(vocab) in x[1] for x in ref)  # rows hold the cross-word piece: per-word ids would miss it

    spec = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    spec["normalizer"] = {"type": "NFC"}
    nfc = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>", eos_token="</s>")
    assert unit_split_reason(nfc) == "the tokenizer has a normalizer"


def test_random_completion_rows_use_the_same_path(tiny_tokenizer):
    from remix_ds.data.config import DataConfig, KVRConfig, MixConfig
    from remix_ds.data.random_rows import random_rows
    from remix_ds.data.random_words import RandomWords

    mix = MixConfig(random_ratio=1.0, random_format="completion", prompt_words=7, answer_words=5, random_vocab_size=500)
    cfg = DataConfig(kvr=KVRConfig(num_pairs=10), max_seq_len=40, mix=mix)
    got, dropped = random_rows(cfg, tiny_tokenizer, 400)
    gen = RandomWords.from_source(tiny_tokenizer, mix.random_word_source, mix.random_vocab_size, min_words=12, max_words=12)
    batch = gen.sample(np.random.default_rng([mix.seed, 0x7A4D]), 400)
    words = [gen.text(batch, i).split() for i in range(400)]
    ref, ref_dropped = whole_rows(words, tiny_tokenizer, 7, 5, 40)
    exs = [Example(id=f"random-{i}", source="random", prompt=formats.completion_prompt(w[:7]), answer=" ".join(w[7:12]))
           for i, w in enumerate(words)]
    res = tokenize_examples(exs, tiny_tokenizer, mode="answer", max_len=40)
    assert dropped == res.dropped == ref_dropped and len(got) == len(res.examples) > 0
    assert [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in got] == \
           [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in res.examples]
