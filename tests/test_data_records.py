"""Records, dataset registry (each converter on a local file with the hub's fields), splits, bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from remix_ds.config import load_config
from remix_ds.configtools import ConfigError
from remix_ds.data.config import KVRConfig, SourceConfig
from remix_ds.data.datasets import REGISTRY, generate_kvr, known_datasets, load_examples
from remix_ds.data.loader import build_train_loader
from remix_ds.data.records import DataError, Example, read_rows
from helpers import bpe_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


HUB_ROWS = {  # one row per dataset, with the hub dataset's own field names
    "popqa": {"id": 7, "question": "What is George Rankin's occupation?", "possible_answers": '["politician", "political leader"]'},
    "triviaqa": {"question_id": "tc_1", "question": "Who wrote Hamlet?", "answer": {"value": "Shakespeare", "aliases": ["William Shakespeare"]}},
    "lama": {"uuid": "u1", "template": "[X] is the capital of [Y] .", "sub_label": "Paris", "obj_label": "France"},
    "entityqa": {"question": "Where was Ada Lovelace born?", "answers": ["London"]},
    "webqa": {"question": "what country is paris in?", "answers": ["France", "French Republic"]},
    "ultrachat": {"id": "3", "data": ["Hi there", "Hello!", "Tell me a joke", "No."]},
    "evolcode": {"instruction": "Write add(a, b).", "output": "def add(a, b):\n    return a + b"},
    "apps": {"problem_id": 1, "question": "Add two numbers.", "solutions": json.dumps(["print(sum(map(int, input().split())))"]),
             "input_output": json.dumps({"inputs": ["1 2"], "outputs": ["3"]}), "starter_code": "", "difficulty": "introductory"},
    "gsm8k": {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
    "math": {"problem": "What is $1+1$?", "solution": "We have $1+1=\\boxed{2}$."},
}

EXPECTED = {
    "popqa": ("What is George Rankin's occupation?\nThe answer is: ", "politician"),
    "triviaqa": ("Who wrote Hamlet?\nThe answer is: ", "Shakespeare"),
    "lama": ("Paris is the capital of", "France"),
    "entityqa": ("Where was Ada Lovelace born?", "London"),
    "webqa": ("what country is paris in?", "France"),
    "evolcode": ("Write add(a, b).", "def add(a, b):\n    return a + b"),
    "apps": ("Question:\n Add two numbers.\nUse Standard Input format\nAnswer:\n", "print(sum(map(int, input().split())))"),
    "gsm8k": ("Tom has 2 apples and buys 3. How many?", "2 + 3 = <<2+3=5>>5\n#### 5"),
    "math": ("What is $1+1$?", "We have $1+1=\\boxed{2}$."),
}


def test_registry_lists_all_paper_datasets():
    assert set(known_datasets()) == {"kvr", "popqa", "triviaqa", "lama", "entityqa", "webqa", "ultrachat", "evolcode",
                                     "apps", "gsm8k", "math"}
    assert REGISTRY["popqa"].hub_id == "akariasai/PopQA" and REGISTRY["gsm8k"].hub_config == "main"


@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_each_dataset_converts_local_rows_with_hub_fields(tmp_path, name):
    f = write_jsonl(tmp_path / f"{name}.jsonl", [HUB_ROWS[name]])
    (ex,) = load_examples(SourceConfig(dataset=name, data_files=f))
    assert ex.source == name
    if name == "ultrachat":
        assert [m["role"] for m in ex.messages] == ["user", "assistant", "user", "assistant"]
        assert ex.messages[3]["content"] == "No."
    else:
        assert (ex.prompt, ex.answer) == EXPECTED[name]
    if name == "popqa":
        assert ex.aliases == ("politician", "political leader")


def test_apps_call_based_and_starter_code(tmp_path):
    row = dict(HUB_ROWS["apps"], starter_code="def f(x):", input_output=json.dumps({"fn_name": "f"}))
    (ex,) = load_examples(SourceConfig(dataset="apps", data_files=write_jsonl(tmp_path / "a.jsonl", [row])))
    assert ex.prompt == "Question:\n Add two numbers.\n\nSTARTER CODE:\ndef f(x):\nUse Call-Based format\nAnswer:\n"


def test_kvr_is_deterministic_distinct_and_configurable():
    a, b = generate_kvr(KVRConfig()), generate_kvr(KVRConfig())
    assert len(a) == 2000 and [x.answer for x in a] == [x.answer for x in b]
    keys = [x.prompt.split()[4] for x in a]
    assert len(set(keys)) == 2000 and all(len(k) == 8 and k.isalnum() and k.upper() == k for k in keys)
    assert a[0].prompt == f"The value of key {keys[0]} is?"
    c = generate_kvr(KVRConfig(num_pairs=5, key_len=3, value_len=2, alphabet="ab", seed=1))
    assert len(c) == 5 and all(set(x.answer) <= {"a", "b"} and len(x.answer) == 2 for x in c)
    assert [x.answer for x in generate_kvr(KVRConfig(seed=1))] != [x.answer for x in a]


def reference_kvr(cfg):
    """generate_kvr with a per-row Python join (the joined strings must not change)."""
    import numpy as np

    rng = np.random.default_rng(cfg.seed)
    alphabet = np.array(list(dict.fromkeys(cfg.alphabet)))
    keys, seen = [], set()
    while len(keys) < cfg.num_pairs:
        need = cfg.num_pairs - len(keys)
        for k in map("".join, alphabet[rng.integers(0, len(alphabet), size=(2 * need, cfg.key_len))]):
            if k not in seen:
                seen.add(k)
                keys.append(k)
                if len(keys) == cfg.num_pairs:
                    break
    values = map("".join, alphabet[rng.integers(0, len(alphabet), size=(cfg.num_pairs, cfg.value_len))])
    return [(f"The value of key {k} is?", v) for k, v in zip(keys, values)]


@pytest.mark.parametrize("kw", [{}, dict(num_pairs=3000, key_len=3, alphabet="abcdefghijklmnopqrstuvwxyz", seed=4),
                                dict(num_pairs=300, key_len=5, value_len=1, alphabet="\u00e9\U0001f600x\x00 ", seed=2),
                                dict(num_pairs=50, key_len=6, value_len=3, alphabet="ab ")])
def test_kvr_keys_and_values_are_the_per_row_joins(kw):
    cfg = KVRConfig(**kw)
    assert [(x.prompt, x.answer) for x in generate_kvr(cfg)] == reference_kvr(cfg)


def test_split_heldout_and_subsample(tmp_path):
    f = write_jsonl(tmp_path / "g.jsonl", [{"id": f"r{i}", "prompt": f"q{i}", "answer": f"a{i}"} for i in range(20)])
    train = load_examples(SourceConfig(dataset=f, num_examples=5, heldout_size=3))
    held = load_examples(SourceConfig(dataset=f, num_examples=5, heldout_size=3), split="heldout")
    assert len(train) == 5 and len(held) == 3 and not {x.id for x in train} & {x.id for x in held}
    assert [x.id for x in train] == [x.id for x in load_examples(SourceConfig(dataset=f, num_examples=5, heldout_size=3))]
    first = load_examples(SourceConfig(dataset=f, num_examples=4, subsample_seed=None))
    assert [x.id for x in first] == ["r0", "r1", "r2", "r3"]  # file order, as the reference
    with pytest.raises(DataError, match="cannot take num_examples=30"):
        load_examples(SourceConfig(dataset=f, num_examples=30))


def test_local_formats_json_and_parquet(tmp_path):
    rows = [{"prompt": "q", "answer": "a"}, {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "answer": "a", "aliases": ["A"]}]), tmp_path / "d.parquet")
    assert len(load_examples(SourceConfig(dataset=str(tmp_path / "d.json")))) == 2
    (ex,) = load_examples(SourceConfig(dataset=str(tmp_path / "d.parquet")))
    assert (ex.prompt, ex.answer, ex.aliases) == ("q", "a", ("A",))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "c", "answer": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        read_rows(p)


def test_missing_field_is_named(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"question": "q?", "answers": ["x"]}])
    with pytest.raises(DataError, match="missing field 'possible_answers'"):
        load_examples(SourceConfig(dataset="popqa", data_files=f))
    g = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "q"}])
    with pytest.raises(DataError, match=r"g\.jsonl:1: missing field 'answer'"):
        load_examples(SourceConfig(dataset=g))


def test_empty_dataset_and_unknown_name(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_examples(SourceConfig(dataset=str(tmp_path / "e.jsonl")))
    with pytest.raises(DataError, match="unknown dataset 'poqa'; known datasets: apps, entityqa, evolcode, gsm8k"):
        load_examples(SourceConfig(dataset="poqa"))


def test_bad_data_fails_in_build_train_loader_before_training(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "answer": "b"}\nnot json\n')
    cfg = load_config(None, [f"data.dataset={p}"]).data
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        build_train_loader(cfg, bpe_tokenizer(), micro_batch_size=2, rank=0, world_size=1, seed=0)


def test_example_and_config_validation():
    with pytest.raises(DataError, match="either prompt\\+answer or messages"):
        Example(id="x", source="s", prompt="p")
    with pytest.raises(DataError, match="no assistant turn"):
        Example(id="x", source="s", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ConfigError, match="data.mix.generic_ratio"):
        load_config(None, ["data.mix.generic_ratio=-1"])
    with pytest.raises(ConfigError, match="data.key_span_delimiters"):
        load_config(None, ["data.key_span_delimiters=['@', '@']"])
