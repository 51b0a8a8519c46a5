"""`batch_encode` reads ids straight from the Rust backend: exactly the HF wrapper call's ids."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from remix_ds.data.tokenize import batch_encode, rust_backend, tokenize_examples
from remix_ds.data.records import Example
from helpers import CountingTokenizer, llama3_style

TEXTS = ["Paris", "", " ", "  leading and trailing  ", "The value of key K12 is?", "two, three and 12345!",
         "</s> inside <s> text <unk> and <|endoftext|>", "<s>", "</s>", "a</s>b", "na\u00efve \u65e5\u672c\u8a9e \U0001f600",
         "tab\tnew\nline\r\n", "\u2581x a\u2581b", "e\u0301 \ufb01 \u200d", "1,000,000 U.S. don't",
         " ".join(f"w{i}" for i in range(600))]


@pytest.fixture(params=["tiny", "sentencepiece", "bytelevel", "llama3"])
def tok(request, tiny_tokenizer, sp_tok, bpe_tok):
    return {"tiny": tiny_tokenizer, "sentencepiece": sp_tok, "bytelevel": bpe_tok}.get(request.param) \
        or llama3_style(bpe_tok)


def wrapper_ids(tok, texts, add_special_tokens, split_special):
    return tok(list(texts), add_special_tokens=add_special_tokens, split_special_tokens=split_special)["input_ids"]


@pytest.mark.parametrize("add_special_tokens", [True, False])
@pytest.mark.parametrize("split_special", [True, False])
def test_rust_path_gives_the_wrapper_ids(tok, add_special_tokens, split_special):
    assert rust_backend(tok) is not None
    # alternate the two paths: each leaves encode_special_tokens where the other must reset it
    for _ in range(2):
        got = batch_encode(tok, TEXTS, add_special_tokens, split_special)
        want = wrapper_ids(tok, TEXTS, add_special_tokens, split_special)
        assert got == want
    special = set(tok.all_special_ids)
    text = f"{tok.eos_token} x"
    with_bos = batch_encode(tok, [text], True, split_special)[0]
    plain = batch_encode(tok, [text], False, split_special)[0]
    assert with_bos[len(with_bos) - len(plain):] == plain  # add_special_tokens adds a prefix (BOS) or nothing
    assert (tok.eos_token_id in plain) is (not split_special)  # special-token text: text when split, else the id
    assert not special & set(batch_encode(tok, TEXTS, False, True)[6])


def test_a_saved_truncation_or_padding_is_turned_off_as_the_wrapper_does(tok):
    a, b = copy.deepcopy(tok), copy.deepcopy(tok)
    for t in (a, b):
        t.backend_tokenizer.enable_truncation(4)
        t.backend_tokenizer.enable_padding(length=64, pad_id=t.eos_token_id)
    got = batch_encode(a, TEXTS, True, True)
    want = wrapper_ids(b, TEXTS, True, True)
    assert got == want
    assert max(len(x) for x in got) > 64 and min(len(x) for x in got) < 4  # neither truncated nor padded
    assert a.backend_tokenizer.truncation is None and a.backend_tokenizer.padding is None


def test_tokenized_examples_are_unchanged(tok):
    exs = [Example(id=str(i), source="t", prompt=f"Key K{i}: {t}?", answer=t or "x") for i, t in enumerate(TEXTS)]
    calls: list[int] = []
    wrapped = CountingTokenizer(tok, calls)  # not a TokenizersBackend: goes through the wrapper call
    assert rust_backend(wrapped) is None
    old = tokenize_examples(exs, wrapped, mode="answer")
    new = tokenize_examples(exs, tok, mode="answer")
    assert calls == [len(exs), len(exs)]
    assert [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in new.examples] == \
        [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in old.examples]


def test_a_class_that_overrides_the_encode_path_keeps_the_wrapper(tiny_tokenizer):
    class Custom(type(tiny_tokenizer)):
        def _encode_plus(self, *a, **kw):
            out = super()._encode_plus(*a, **kw)
            out["input_ids"] = [[7] + ids for ids in out["input_ids"]]
            return out

    tok = copy.deepcopy(tiny_tokenizer)
    tok.__class__ = Custom
    assert rust_backend(tok) is None
    assert batch_encode(tok, ["a b"], False) == [[7] + batch_encode(tiny_tokenizer, ["a b"], False)[0]]


def test_rows_equal_per_example_assembly(tok):
    """Rows laid out in one flat array == each example's segments tokenized and concatenated on their own."""
    from remix_ds.data.tokenize import IGNORE, render

    exs = [Example(id=str(i), source="t", prompt=f"Key K{i}: {t}?", answer=t or "x") for i, t in enumerate(TEXTS)]
    exs.append(Example(id="chat", source="t", messages=[
        {"role": "user", "content": "hi </s>"}, {"role": "assistant", "content": "one"},
        {"role": "user", "content": "again"}, {"role": "assistant", "content": "two <s>"}]))
    for mode in ("answer", "all"):
        for max_len in (None, 40):
            res = tokenize_examples(exs, tok, mode=mode, max_len=max_len)
            want, dropped = [], []
            for ex in exs:
                ids, labels = [], []
                for j, seg in enumerate(render(ex, tok)):
                    part = tok([seg.text], add_special_tokens=j == 0, split_special_tokens=True)["input_ids"][0]
                    part = part + ([tok.eos_token_id] if seg.eos else [])
                    ids += part
                    labels += part if mode == "all" or seg.supervised else [IGNORE] * len(part)
                if len(ids) < 2 or (max_len is not None and len(ids) > max_len):
                    dropped.append(ex.id)
                    continue
                want.append((ex.id, ids, [IGNORE] + labels[1:]))
            assert [(x.id, x.input_ids.tolist(), x.labels.tolist()) for x in res.examples] == want
            assert res.dropped_ids == dropped and (max_len is None or dropped)
            assert all(x.input_ids.dtype == np.int32 and x.labels.dtype == np.int32 for x in res.examples)
