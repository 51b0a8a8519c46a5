"""Fault injection for data, shards and key_spans (issue 15, items 3, 6, 7).

Each test injects one fault and asserts the exact behaviour: the one-line error names the file
and its *file* line (blank lines counted) and the cause, or the documented fallback happens.
docs/reliability.md (second half) is the fault matrix that points here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from remix_ds.data.config import DataConfig, SourceConfig
from remix_ds.data.datasets import load_examples
from remix_ds.data.records import DataError, Example, read_rows
from remix_ds.data.shard_builder import build_shards
from remix_ds.data.shards import ShardError, ShardReader
from remix_ds.data.tokenize import IGNORE, tokenize_examples
from remix_ds.configtools import ConfigError
from remix_ds.errors import RemixError


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, RemixError)
    return msg


# ----------------------------------------------------------------------------- records (item 3)


def test_non_utf8_byte_names_file_line_and_column(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"prompt": "a", "answer": "b"}\n\n{"prompt": "caf\xe9", "answer": "c"}\n')
    with pytest.raises(DataError) as e:
        read_rows(p)
    assert one_line(e) == f"{p}:3: not valid UTF-8 (byte 0xe9 at column 16); re-encode the file as UTF-8"
    j = tmp_path / "bad.json"
    j.write_bytes(b'[\n {"prompt": "a", "answer": "b"},\n {"prompt": "\xff", "answer": "c"}\n]\n')
    with pytest.raises(DataError, match=rf"^{j}:3: not valid UTF-8 \(byte 0xff at column 14\)"):
        read_rows(j)


def _rows(tmp_path, rows_or_lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in rows_or_lines))
    return str(p)


GOOD = {"prompt": "Who wrote Hamlet?", "answer": "Shakespeare"}


@pytest.mark.parametrize("bad, cause", [
    ({"prompt": "q", "answer": ""}, "field 'answer' is empty"),
    ({"prompt": "q", "answer": "  \n\t"}, "field 'answer' is whitespace-only"),
    ({"prompt": "   ", "answer": "a"}, "field 'prompt' is whitespace-only"),
    ({"prompt": "q", "answer": {"value": "Paris"}}, "field 'answer' must be a string, got dict {'value': 'Paris'}"),
    ({"prompt": "q", "answer": ["Paris"]}, "field 'answer' must be a string, got list ['Paris']"),
    ({"prompt": 7, "answer": "a"}, "field 'prompt' must be a string, got int 7"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
     "messages[1] (assistant) content is empty or whitespace-only"),
])
def test_bad_prompt_or_answer_is_refused_at_its_file_line(tmp_path, bad, cause):
    f = _rows(tmp_path, [GOOD, "\n", "\n", bad, GOOD])  # the bad record sits on file line 4
    with pytest.raises(DataError) as e:
        load_examples(SourceConfig(dataset=f))
    assert one_line(e) == f"{f}:4: {cause}"


def test_missing_field_reported_at_file_line_not_row_index(tmp_path):
    f = _rows(tmp_path, [GOOD, "\n", GOOD, {"prompt": "q"}])  # row 2, file line 4
    with pytest.raises(DataError) as e:
        load_examples(SourceConfig(dataset=f))
    assert one_line(e) == f"{f}:4: missing field 'answer' (row has: prompt)"
    # Registered datasets read from data_files too (popqa fields), and .json lists.
    g = _rows(tmp_path, [{"question": "q", "possible_answers": ["x"]}, "\n", {"question": "q"}], "p.jsonl")
    with pytest.raises(DataError, match=rf"^{g}:3: missing field 'possible_answers'"):
        load_examples(SourceConfig(dataset="popqa", data_files=g))
    j = tmp_path / "d.json"
    j.write_text('[\n  {"prompt": "a", "answer": "b"},\n\n  {"prompt": "c"}\n]\n')
    with pytest.raises(DataError, match=rf"^{j}:4: missing field 'answer'"):
        load_examples(SourceConfig(dataset=str(j)))


def test_triviaqa_dict_answer_value_must_be_text(tmp_path):
    f = _rows(tmp_path, [{"question": "q", "answer": {"value": 3, "aliases": []}}], "t.jsonl")
    with pytest.raises(DataError) as e:
        load_examples(SourceConfig(dataset="triviaqa", data_files=f))
    assert one_line(e) == f"{f}:1: field 'answer.value' must be a string, got int 3"


def test_on_bad_record_drop_skips_and_counts(tmp_path):
    f = _rows(tmp_path, [GOOD, {"prompt": "q", "answer": ""}, {"prompt": "q", "answer": {"a": 1}},
                         dict(GOOD, id="last")])
    got = load_examples(SourceConfig(dataset=f, subsample_seed=None, on_bad_record="drop"))
    assert [ex.answer for ex in got] == ["Shakespeare", "Shakespeare"] and got[1].id == "last"
    assert got.dropped == [f"{f}:2: field 'answer' is empty",
                           f"{f}:3: field 'answer' must be a string, got dict {{'a': 1}}"]
    with pytest.raises(ConfigError, match=r"data\.on_bad_record must be 'error' or 'drop', got 'skip'"):
        DataConfig(on_bad_record="skip")


def test_dropped_bad_records_reach_the_stage_stats(tmp_path, tiny_tokenizer):
    from remix_ds.data.mixing import build_stage_stream

    f = _rows(tmp_path, [GOOD, {"prompt": "q", "answer": " "}, dict(GOOD, id="last")])
    cfg = DataConfig(dataset=f, subsample_seed=None, on_bad_record="drop")
    stream = build_stage_stream(cfg, tiny_tokenizer, seed=0)
    assert stream.dropped["bad_records"] == 1 and len(stream.dataset) == 2


# ----------------------------------------------------------------------------- special-token text


SPECIAL_TEXT = "a </s> b <s> c <unk> d <|endoftext|> e"


@pytest.mark.parametrize("which", ["sp_tok", "bpe_tok"])
def test_special_token_text_in_data_is_encoded_as_text(request, which):
    tok = request.getfixturevalue(which)
    specials = set(tok.all_special_ids)
    ex = Example(id="x", source="t", prompt=SPECIAL_TEXT, answer=SPECIAL_TEXT)
    (t,) = tokenize_examples([ex], tok, mode="answer").examples
    ids = t.input_ids.tolist()
    # Only the real BOS (first, when the tokenizer adds one) and the real EOS (last) are special.
    real = ([ids[0]] if tok.bos_token_id is not None and ids[0] == tok.bos_token_id and which == "sp_tok" else [])
    assert [i for i in ids if i in specials] == real + [tok.eos_token_id]
    assert ids[-1] == tok.eos_token_id and t.labels[-1] == tok.eos_token_id
    assert SPECIAL_TEXT in tok.decode(ids)


@pytest.mark.parametrize("which", ["sp_tok", "bpe_tok"])
def test_build_shards_encodes_special_token_text_as_text(tmp_path, request, which):
    tok = request.getfixturevalue(which)
    src = _rows(tmp_path, [{"text": SPECIAL_TEXT}, {"text": "plain words"}], "docs.jsonl")
    build_shards([src], tmp_path / "s", tok, progress=False)
    r = ShardReader(tmp_path / "s", tok)
    doc = r.document(0).tolist()
    specials = set(tok.all_special_ids)
    assert [i for i in doc if i in specials] == [tok.eos_token_id] and doc[-1] == tok.eos_token_id
    assert tok.decode(doc[:-1]) .strip() == SPECIAL_TEXT


# ----------------------------------------------------------------------------- shards (item 6)


@pytest.fixture
def shard_dir(tmp_path, sp_tok):
    rng = np.random.default_rng(0)
    words = "the of and river city music capital born value key answer question".split()
    docs = [{"text": " ".join(rng.choice(words, size=int(rng.integers(20, 120))))} for _ in range(200)]
    src = _rows(tmp_path, docs, "corpus.jsonl")
    return src, tmp_path


def test_max_tokens_per_shard_holds_to_a_document(shard_dir, sp_tok):
    src, tmp = shard_dir
    m = build_shards([src], tmp / "s", sp_tok, max_tokens_per_shard=3000, progress=False)
    r = ShardReader(tmp / "s", sp_tok, verify="full")
    sizes = [s["num_tokens"] for s in m["shards"]]
    assert len(sizes) > 3 and max(sizes) <= 3000 and sum(sizes) == r.num_tokens
    # Each shard closed at the document that would have passed the limit.
    lengths, d = r.doc_lengths, 0
    for s in m["shards"][:-1]:
        d += s["num_documents"]
        assert s["num_tokens"] + lengths[d] > 3000
    # One document longer than the limit gets a shard of its own.
    m2 = build_shards([src], tmp / "s2", sp_tok, max_tokens_per_shard=10, progress=False)
    assert [s["num_documents"] for s in m2["shards"]] == [1] * 200


def test_flipped_bin_bytes_in_range_need_full_verify(shard_dir, sp_tok):
    src, tmp = shard_dir
    build_shards([src], tmp / "s", sp_tok, progress=False)
    b = tmp / "s" / "shard_00000.bin"
    raw = bytearray(b.read_bytes())
    raw[0:2], raw[2:4] = raw[2:4], raw[0:2]  # swap two tokens: same size, same id range
    b.write_bytes(bytes(raw))
    ShardReader(tmp / "s", sp_tok)  # default verify="index": documented not to hash the .bin
    with pytest.raises(ShardError) as e:
        ShardReader(tmp / "s", sp_tok, verify="full")
    assert one_line(e) == f"{b}: sha256 does not match manifest.json (corrupt shard)"


def test_token_ids_beyond_the_vocabulary_are_refused_on_open(shard_dir, sp_tok):
    src, tmp = shard_dir
    m = build_shards([src], tmp / "s", sp_tok, progress=False)
    b = tmp / "s" / "shard_00000.bin"
    raw = bytearray(b.read_bytes())
    raw[10:12] = (len(sp_tok) + 5).to_bytes(2, "little")  # uint16 id past the vocabulary
    b.write_bytes(bytes(raw))
    with pytest.raises(ShardError) as e:
        ShardReader(tmp / "s", sp_tok)
    assert one_line(e).startswith(f"{b}: holds token id {len(sp_tok) + 5} outside the recorded range")
    # A manifest that itself records an out-of-vocabulary id (e.g. built with a bigger tokenizer
    # but relabelled): the range check against the tokenizer refuses it, naming the file.
    mpath = tmp / "s" / "manifest.json"
    man = json.loads(mpath.read_text())
    man["shards"][0]["max_id"] = len(sp_tok) + 5
    mpath.write_text(json.dumps(man))
    with pytest.raises(ShardError) as e:
        ShardReader(tmp / "s", sp_tok)
    assert one_line(e) == (f"{b}: token id {len(sp_tok) + 5} is outside the tokenizer's vocabulary [0, {len(sp_tok)}) "
                           "(shards built with another tokenizer, or corrupt)")
    assert m["shards"][0]["max_id"] < len(sp_tok)


def test_bare_megatron_prefix_gets_an_exact_range_check(shard_dir, sp_tok):
    src, tmp = shard_dir
    build_shards([src], tmp / "s", sp_tok, progress=False)
    (tmp / "s" / "manifest.json").unlink()
    prefix = tmp / "s" / "shard_00000"
    assert ShardReader(prefix, sp_tok).num_documents == 200
    b = prefix.with_name("shard_00000.bin")
    raw = bytearray(b.read_bytes())
    raw[-4:-2] = (60_000).to_bytes(2, "little")
    b.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=rf"^{b}: token id 60000 is outside the tokenizer's vocabulary"):
        ShardReader(prefix, sp_tok)


# ----------------------------------------------------------------------------- key_spans (item 7)


def trimmed_bytelevel_bpe():
    """A byte-level BPE (ByteLevel pre-tokenizer, ByteLevel post-processor with trim_offsets=True)
    trained on lowercase text, so " Curie" splits into a whitespace-only "Ġ" with an empty offset."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    words = "marie discovered polonium radium science the of and answer question who what in".split()
    rng = np.random.default_rng(0)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(rng.choice(words, 8)) for _ in range(500)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_key_spans_exact_with_trimmed_offsets():
    tok = trimmed_bytelevel_bpe()
    enc = tok("Marie Curie", return_offsets_mapping=True)
    assert (6, 6) in enc["offset_mapping"]  # the fault: a real token with an empty offset
    ex = Example(id="k", source="t", prompt="Who discovered polonium?",
                 answer="In 1898 [[Marie Curie discovered polonium]] in Paris.")
    (t,) = tokenize_examples([ex], tok, mode="key_spans").examples
    sup = t.input_ids[t.labels != IGNORE].tolist()
    assert tok.decode(sup) == "Marie Curie discovered polonium"
    assert t.labels[-1] == IGNORE and t.input_ids[-1] == tok.eos_token_id  # EOS carries no loss


@pytest.mark.parametrize("which", ["sp_tok", "bpe_tok"])
def test_key_spans_special_tokens_from_the_mask(request, which):
    tok = request.getfixturevalue(which)
    ex = Example(id="k", source="t", prompt="[[the capital]] of", answer="[[paris]] france")
    (t,) = tokenize_examples([ex], tok, mode="key_spans").examples
    specials = set(tok.all_special_ids)
    sup = t.input_ids[t.labels != IGNORE].tolist()
    assert not specials & set(sup)
    assert tok.decode(sup).replace(" ", "") == "thecapitalparis"
