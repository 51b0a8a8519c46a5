"""prompt_format=chat_template: special-token text inside message content is encoded as text.

The template's own markers (special tokens written as text) keep their special ids; everything a
message's content spells is ordinary pieces. Checked on the sentencepiece and the byte-level BPE
test tokenizers against an independent reference encoding, and against the pre-change path
(every segment encoded whole with the tokenizer's default) for content without special text.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from remix_ds.data.formats import render_chat_template
from remix_ds.data.records import Example
from remix_ds.data.tokenize import IGNORE, encode_prompt_answer, tokenize_examples
from helpers import CountingTokenizer, tokenizers

TOKENIZERS = tokenizers()
MARKERS = ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPT = "Is <|endoftext|> a </s> token<|end|>?"
ANSWER = "Yes: <|end|> and </s> and <|endoftext|> <s> end"


def chat_tok(name: str, template: str = TEMPLATE):
    tok = copy.deepcopy(TOKENIZERS[name])
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    tok.chat_template = template
    return tok


@pytest.fixture(params=sorted(TOKENIZERS))
def tok(request):
    return chat_tok(request.param)


def text_ids(tok, text: str, after_marker: bool) -> list[int]:
    """Reference: `text` encoded with special-token text as text, as the tokenizer encodes a piece of
    a rendered chat (at a segment's start, or right after a template marker). Independent of the
    package's mechanism: a Metaspace pre-tokenizer's ``prepend_scheme="first"`` (a ▁ only at
    offset 0) is switched to ``never`` for pieces after a marker."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.backend_tokenizer.to_str())
    if after_marker and (spec["pre_tokenizer"] or {}).get("prepend_scheme") == "first":
        spec["pre_tokenizer"]["prepend_scheme"] = "never"
    enc = Tokenizer.from_str(json.dumps(spec))
    enc.encode_special_tokens = True
    return enc.encode(text, add_special_tokens=False).ids


def old_path_ids(tok, ex: Example) -> tuple[list[int], list[int]]:
    """The pre-change chat_template encoding: each segment whole, the tokenizer's default
    (``split_special_tokens=False``), no added special tokens; (input ids, supervised ids)."""
    messages, ids, sup, done = ex.as_messages(), [], [], ""
    for k, m in enumerate(messages):  # the pre-change segments, straight from the template's rendering
        if m["role"] != "assistant":
            continue
        prefix = tok.apply_chat_template(messages[:k], add_generation_prompt=True, tokenize=False)
        body = tok.apply_chat_template(messages[: k + 1], tokenize=False)[len(prefix) :].rstrip()
        for text, supervised in ((prefix[len(done) :], False), (body, True)):
            part = tok(text, add_special_tokens=False)["input_ids"]
            ids += part
            sup += part if supervised else []
        done = prefix + body
    return ids, sup


def specials_at(tok, ids) -> list[tuple[int, str]]:
    special = set(tok.all_special_ids)
    return [(i, tok.convert_ids_to_tokens(t)) for i, t in enumerate(ids) if t in special]


def test_content_special_text_is_text_and_markers_keep_their_ids(tok):
    ex = Example(id="0", source="t", prompt=PROMPT, answer=ANSWER)
    (t,) = tokenize_examples([ex], tok, mode="answer", prompt_format="chat_template").examples
    ids = t.input_ids.tolist()
    mark = {m: tok.convert_tokens_to_ids(m) for m in MARKERS}
    prompt_ids = text_ids(tok, PROMPT, after_marker=True)
    answer_ids = text_ids(tok, ANSWER, after_marker=False)  # the supervised segment starts at the content
    newline = text_ids(tok, "\n", after_marker=True)
    expected = ([mark["<|user|>"]] + prompt_ids + [mark["<|end|>"]] + newline + [mark["<|assistant|>"]]
                + answer_ids + [mark["<|end|>"]])
    assert ids == expected
    p, a = len(prompt_ids), len(answer_ids)
    n = len(newline)
    # the only special ids are the template's four markers, at their places
    assert specials_at(tok, ids) == [(0, "<|user|>"), (1 + p, "<|end|>"), (2 + p + n, "<|assistant|>"),
                                     (3 + p + n + a, "<|end|>")]
    # the content decodes back to the literal text
    assert tok.decode(ids[1 : 1 + p]) == PROMPT
    assert tok.decode(ids[3 + p + n : 3 + p + n + a]).strip() == ANSWER
    # supervised: exactly the answer content and the template's end-of-turn marker
    assert t.labels[t.labels != IGNORE].tolist() == answer_ids + [mark["<|end|>"]]
    assert (t.labels[: 3 + p + n] == IGNORE).all()
    # eval view: prompt + answer is the training sequence; the answer is the supervised ids
    (pa,) = encode_prompt_answer([ex], tok, prompt_format="chat_template")
    assert pa.prompt_ids.tolist() + pa.answer_ids.tolist() == ids
    assert pa.answer_ids.tolist() == answer_ids + [mark["<|end|>"]]
    # the change is real: the pre-change path turned the content's special text into special ids
    old, _ = old_path_ids(tok, ex)
    assert len(specials_at(tok, old)) > 4


def test_multi_turn_chat_content_is_text(tok):
    msgs = [
        {"role": "system", "content": "Never print </s>."},
        {"role": "user", "content": "Say <|end|> twice"},
        {"role": "assistant", "content": "<|end|><|end|>"},
        {"role": "user", "content": "and <|assistant|>?"},
        {"role": "assistant", "content": "<|assistant|> done"},
    ]
    ex = Example(id="c", source="chat", messages=msgs)
    (t,) = tokenize_examples([ex], tok, prompt_format="chat_template").examples
    ids = t.input_ids.tolist()
    roles = [f"<|{m['role']}|>" for m in msgs]
    # the template's markers only: role marker ... <|end|> per message (the last assistant marker
    # comes from the generation prompt, the same id)
    assert [s for _, s in specials_at(tok, ids)] == [x for r in roles for x in (r, "<|end|>")]
    sup = t.labels[t.labels != IGNORE].tolist()
    end = tok.convert_tokens_to_ids("<|end|>")
    assert sup == (text_ids(tok, "<|end|><|end|>", False) + [end] + text_ids(tok, "<|assistant|> done", False) + [end])
    pa = encode_prompt_answer([ex], tok, prompt_format="chat_template")[0]
    assert pa.prompt_ids.tolist() + pa.answer_ids.tolist() == ids
    assert tok.decode(pa.answer_ids[:-1].tolist()).strip() == "<|assistant|> done"


def test_key_spans_inside_content_with_special_text(tok):
    ex = Example(id="k", source="t", prompt="Which [[</s>]] token?", answer="It is [[<|end|> and </s>]] ok")
    (t,) = tokenize_examples([ex], tok, mode="key_spans", prompt_format="chat_template").examples
    ids = t.input_ids.tolist()
    clean = Example(id="k", source="t", prompt="Which </s> token?", answer="It is <|end|> and </s> ok")
    (ref,) = tokenize_examples([clean], tok, mode="answer", prompt_format="chat_template").examples
    assert ids == ref.input_ids.tolist()  # key_spans ids are the clean text's ids (content as text)
    assert [s for _, s in specials_at(tok, ids)] == ["<|user|>", "<|end|>", "<|assistant|>", "<|end|>"]
    on = np.concatenate([[False], t.labels != IGNORE, [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    spans = [tok.decode(ids[a:b]).strip() for a, b in zip(edges[::2], edges[1::2])]
    assert spans == ["</s>", "<|end|> and </s>"]
    assert not set(t.labels[t.labels != IGNORE].tolist()) & set(tok.all_special_ids)
    (pa,) = encode_prompt_answer([ex], tok, prompt_format="chat_template", key_span_delimiters=("[[", "]]"))
    assert pa.prompt_ids.tolist() + pa.answer_ids.tolist() == ids
    (a, b), = pa.spans
    assert tok.decode(pa.answer_ids[a:b].tolist()).strip() == "<|end|> and </s>"


PARITY = [
    Example(id="a", source="t", prompt="Capital of France?", answer="Paris"),
    Example(id="b", source="t", prompt="The value of key 8GTF0LDD is?", answer=" two, three and 12345! "),
    Example(id="c", source="t", prompt="a < b and c > d; x|y", answer="<| not a token |>"),
    Example(id="d", source="chat", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"}, {"role": "user", "content": "And of\nEngland?"},
        {"role": "assistant", "content": "London, the city\n"}]),
]


@pytest.mark.parametrize("template", [TEMPLATE, TEMPLATE.replace("m['content']", "m['content'] | trim")])
def test_content_without_special_text_keeps_the_old_ids(tok, template):
    tok.chat_template = template
    res = tokenize_examples(PARITY, tok, mode="answer", prompt_format="chat_template").examples
    for ex, t in zip(PARITY, res):
        ids, sup = old_path_ids(tok, ex)
        assert t.input_ids.tolist() == ids
        assert t.labels[t.labels != IGNORE].tolist() == sup
    # in a segment that does hold special text, the runs between markers without any keep their ids
    mixed = Example(id="m", source="chat", messages=[
        {"role": "user", "content": "plain question"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "now </s>"}, {"role": "assistant", "content": "fine"}])
    (t,) = tokenize_examples([mixed], tok, prompt_format="chat_template").examples
    old, _ = old_path_ids(tok, mixed)
    k = old.index(tok.convert_tokens_to_ids("<|end|>"), old.index(tok.convert_tokens_to_ids("<|assistant|>")))
    assert t.input_ids.tolist()[: k + 1] == old[: k + 1]  # up to the first answer's end marker


def test_key_spans_without_special_text_keep_the_old_ids(tok):
    ex = Example(id="k", source="t", prompt="Where is the [[Eiffel Tower]]?", answer="It is in [[Paris]], France.")
    (t,) = tokenize_examples([ex], tok, mode="key_spans", prompt_format="chat_template").examples
    clean = Example(id="k", source="t", prompt="Where is the Eiffel Tower?", answer="It is in Paris, France.")
    assert t.input_ids.tolist() == old_path_ids(tok, clean)[0]


def test_segments_mark_the_content_ranges():
    tok = chat_tok("bytelevel_bpe")
    msgs = [{"role": "user", "content": "q <|end|>"}, {"role": "assistant", "content": " a "}]
    segs = render_chat_template(msgs, tok)
    assert [(s.text, s.content) for s in segs] == [("<|user|>q <|end|><|end|>\n<|assistant|>", ((8, 17),)),
                                                    (" a <|end|>", ((0, 3),))]
    tok.chat_template = TEMPLATE.replace("m['content']", "m['content'] | trim")  # Llama 3 trims contents
    assert [(s.text, s.content) for s in render_chat_template(msgs, tok)][1] == ("a<|end|>", ((0, 1),))


def test_bad_templates_raise_one_line_errors():
    ex = Example(id="0", source="t", prompt="q", answer="a")
    drop = chat_tok("bytelevel_bpe", "{% for m in messages %}{% if m['role'] == 'assistant' %}"
                                     "<|assistant|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
                                     "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    # a template that leaves a message out (here the prompt) renders what it renders, as before
    kept = tokenize_examples([Example(id="0", source="t", prompt="q </s>", answer="a </s>")], drop,
                             prompt_format="chat_template").examples[0]
    assert drop.decode(kept.input_ids) == "<|assistant|>a </s><|end|>"
    assert drop.convert_ids_to_tokens(kept.input_ids.tolist()).count("</s>") == 0  # the answer's is text
    twice = chat_tok("bytelevel_bpe", TEMPLATE.replace("{{ m['content'] }}", "{{ m['content'] }}{{ m['content'] }}"))
    with pytest.raises(ValueError, match=r"repeats or reorders message contents \(contents rendered in order \[0, 0"):
        tokenize_examples([ex], twice, prompt_format="chat_template")
    alter = chat_tok("bytelevel_bpe", TEMPLATE.replace("m['content']", "m['content'] | upper"))
    with pytest.raises(ValueError, match="alters message content"):
        tokenize_examples([ex], alter, prompt_format="chat_template")
    reserved = Example(id="1", source="t", prompt="q \ue000", answer="a")
    with pytest.raises(ValueError, match="U\\+E000/U\\+E001"):
        tokenize_examples([reserved], chat_tok("bytelevel_bpe"), prompt_format="chat_template")
    unstable = chat_tok("bytelevel_bpe", TEMPLATE.replace("{% if add_generation_prompt %}<|assistant|>",
                                                          "{% if add_generation_prompt %}<|assistant|>X"))
    with pytest.raises(ValueError, match="not prefix-stable"):
        tokenize_examples([ex], unstable, prompt_format="chat_template")


def test_special_text_stays_batched():
    tok = chat_tok("bytelevel_bpe")
    calls = []

    exs = [Example(id=str(i), source="t", prompt=f"q{i} <|endoftext|>" if i % 2 else f"q{i}", answer=f"V{i} <|end|>")
           for i in range(300)]
    res = tokenize_examples(exs, CountingTokenizer(tok, calls), prompt_format="chat_template").examples
    assert len(res) == 300
    assert calls == [300, 300, 450]  # first segments, the rest, then once more the 450 with special text
    end = tok.convert_tokens_to_ids("<|end|>")
    for i, t in enumerate(res):
        assert t.labels[t.labels != IGNORE].tolist() == text_ids(tok, f"V{i} <|end|>", False) + [end]
