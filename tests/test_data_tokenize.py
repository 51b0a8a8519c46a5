"""Tokenization and loss masks on two real tokenizers (sentencepiece and byte-level BPE)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from remix_ds.data.formats import render_plain
from remix_ds.data.records import DataError, Example
from remix_ds.data.tokenize import IGNORE, encode_prompt_answer, pad_id, tokenize_examples
from helpers import CountingTokenizer, tokenizers

TOKENIZERS = tokenizers()
ANSWERS = ["Paris", "8GTF0LDD", "George Rankin (politician)", "two, three and 12345!", " leading and trailing "]


def pair(i: int, answer: str, prompt: str | None = None) -> Example:
    return Example(id=str(i), source="t", prompt=prompt or f"The value of key K{i} is?", answer=answer)


def runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of supervised positions."""
    on = np.concatenate([[False], labels != IGNORE, [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    return list(zip(edges[::2], edges[1::2]))


@pytest.fixture(params=sorted(TOKENIZERS))
def tok(request):
    return TOKENIZERS[request.param]


def test_answer_mode_supervises_exactly_answer_and_eos(tok):
    exs = [pair(i, a) for i, a in enumerate(ANSWERS)]
    res = tokenize_examples(exs, tok, mode="answer")
    assert res.dropped == 0 and [t.id for t in res.examples] == [e.id for e in exs]
    for ex, t in zip(exs, res.examples):
        assert t.input_ids.dtype == np.int32 and t.labels.dtype == np.int32
        assert len(t.input_ids) == len(t.labels) and t.labels[0] == IGNORE
        sup = t.labels[t.labels != IGNORE]
        assert sup[-1] == tok.eos_token_id
        assert tok.decode(sup[:-1].tolist()) == ex.answer.strip()  # contents are stripped (open-instruct)
        # supervised labels are the input ids themselves (unshifted), one contiguous run at the end
        assert runs(t.labels) == [(len(t) - len(sup), len(t))]
        assert (t.labels[t.labels != IGNORE] == t.input_ids[t.labels != IGNORE]).all()
        prompt_text = tok.decode(t.input_ids[t.labels == IGNORE].tolist(), skip_special_tokens=True)
        assert prompt_text.strip() == f"<|user|>\n{ex.prompt}\n<|assistant|>"


def test_eval_encoding_matches_training_sequence(tok):
    exs = [pair(i, a) for i, a in enumerate(ANSWERS)]
    train = tokenize_examples(exs, tok, mode="answer").examples
    for pa, t in zip(encode_prompt_answer(exs, tok), train):
        assert np.concatenate([pa.prompt_ids, pa.answer_ids]).tolist() == t.input_ids.tolist()
        assert pa.answer_ids.tolist() == t.labels[t.labels != IGNORE].tolist()
    if tok.bos_token_id is not None and tok("x")["input_ids"][0] == tok.bos_token_id:
        assert train[0].input_ids[0] == tok.bos_token_id  # BOS only at the start, once
        assert (train[0].input_ids == tok.bos_token_id).sum() == 1


def test_multi_turn_chat_trains_every_assistant_turn(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of England?"},
        {"role": "assistant", "content": "London, the city"},
    ]
    ex = Example(id="c", source="chat", messages=msgs)
    t = tokenize_examples([ex], tok).examples[0]
    r = runs(t.labels)
    assert len(r) == 2
    decoded = [tok.decode(t.input_ids[a:b - 1].tolist()) for a, b in r]
    assert decoded == ["Paris", "London, the city"]
    assert all(t.input_ids[b - 1] == tok.eos_token_id for _, b in r)
    pa = encode_prompt_answer([ex], tok)[0]
    assert tok.decode(pa.answer_ids[:-1].tolist()) == "London, the city"
    assert np.concatenate([pa.prompt_ids, pa.answer_ids]).tolist() == t.input_ids.tolist()
    assert [s.text for s in render_plain(msgs)][:1] == ["<|system|>\nBe brief.\n<|user|>\nCapital of France?\n<|assistant|>\n"]


def test_all_mode_trains_every_token_but_the_first(tok):
    t = tokenize_examples([pair(0, "Paris")], tok, mode="all").examples[0]
    assert t.labels[0] == IGNORE
    assert (t.labels[1:] == t.input_ids[1:]).all()


def test_key_spans_supervise_only_marked_text(tok):
    ex = Example(id="k", source="t", prompt="Where is the [[Eiffel Tower]]?", answer="It is in [[Paris]], France.")
    t = tokenize_examples([ex], tok, mode="key_spans").examples[0]
    spans = [tok.decode(t.input_ids[a:b].tolist()).strip() for a, b in runs(t.labels)]
    assert spans == ["Eiffel Tower", "Paris"]
    full = tok.decode(t.input_ids.tolist(), skip_special_tokens=True)
    assert "[[" not in full and "]]" not in full and "Paris" in full
    assert t.labels[-1] == IGNORE  # EOS carries no loss in key_spans mode
    custom = Example(id="k2", source="t", prompt="q", answer="a <b>keep</b> z")
    t2 = tokenize_examples([custom], tok, mode="key_spans", key_span_delimiters=("<b>", "</b>")).examples[0]
    assert [tok.decode(t2.input_ids[a:b].tolist()).strip() for a, b in runs(t2.labels)] == ["keep"]


@pytest.mark.parametrize("text,msg", [("a [[b", "never closed"), ("a ]] b", "unbalanced"), ("[[a [[b]] c]]", "nested")])
def test_key_span_markers_must_balance(text, msg):
    tok = TOKENIZERS["bytelevel_bpe"]
    with pytest.raises(DataError, match=msg):
        tokenize_examples([Example(id="bad", source="t", prompt="q", answer=text)], tok, mode="key_spans")


def test_too_long_examples_are_dropped_and_counted_not_truncated(tok):
    exs = [pair(0, "short"), pair(1, " ".join(["word"] * 300)), pair(2, "also short")]
    res = tokenize_examples(exs, tok, max_len=64)
    assert [t.id for t in res.examples] == ["0", "2"]
    assert res.dropped == 1 and res.dropped_ids == ["1"]
    full = tokenize_examples(exs[1:2], tok).examples[0]
    assert len(full) > 64  # would not fit: dropped whole


def test_tokenizes_in_batches_not_per_example():
    tok = TOKENIZERS["bytelevel_bpe"]
    calls = []

    exs = [pair(i, f"V{i}") for i in range(500)]
    res = tokenize_examples(exs, CountingTokenizer(tok, calls))
    assert len(res.examples) == 500
    assert len(calls) == 2 and sorted(calls) == [500, 500]  # first segments, then the rest


def test_chat_template_format():
    tok = copy.deepcopy(TOKENIZERS["bytelevel_bpe"])
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    ex = pair(0, "Paris", prompt="Capital of France?")
    t = tokenize_examples([ex], tok, prompt_format="chat_template").examples[0]
    (a, b), = runs(t.labels)
    assert tok.decode(t.input_ids[a:b].tolist()) == "Paris<|end|>"
    assert tok.decode(t.input_ids[:a].tolist()) == "<|user|>Capital of France?<|end|>\n<|assistant|>"
    pa = encode_prompt_answer([ex], tok, prompt_format="chat_template")[0]
    assert pa.prompt_ids.tolist() == t.input_ids[:a].tolist()
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_examples([ex], TOKENIZERS["bytelevel_bpe"], prompt_format="chat_template")


def test_pad_id_is_the_pad_token_else_eos(tok):
    from types import SimpleNamespace

    assert pad_id(SimpleNamespace(pad_token_id=5, eos_token_id=2)) == 5
    assert pad_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # 0 is a real id, not "unset"
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    with pytest.raises(DataError, match="no eos_token"):
        pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))
    expected = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    assert pad_id(tok) == expected and isinstance(pad_id(tok), int)
