"""`remix-ds bench data`: the JSON has every section with sane, measured values (quick sizes)."""

from __future__ import annotations

import functools
import json

import pytest

from remix_ds.bench.checkout import baseline
from remix_ds.bench import data as bench_data
from remix_ds.data import corpus



@pytest.fixture
def small_corpus(tmp_path, monkeypatch):
    """The built-in corpus capped at 200 kB in a private cache, so the test builds it in a second or two."""
    real = corpus.generic_corpus
    monkeypatch.setattr(corpus, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(corpus, "generic_corpus", functools.partial(real, max_bytes=200_000))
    return tmp_path / "cache"


def test_bench_data_quick(tmp_path, small_corpus):
    from remix_ds.models import load_tokenizer

    out = tmp_path / "bench.json"
    res = bench_data.run(out, quick=True)
    assert json.loads(out.read_text()) == res
    assert res["machine"]["cpu_count"] >= 1 and res["machine"]["python"]

    rw = res["random_words"]
    assert rw["ids_match_tokenizer"] == 1.0
    assert rw["vectorized"]["tokens_per_s"] > 0 and rw["naive_loop"]["tokens_per_s"] > 0
    assert rw["speedup"] == pytest.approx(rw["vectorized"]["tokens_per_s"] / rw["naive_loop"]["tokens_per_s"], rel=0.01)
    assert rw["speedup"] > 10  # the target is 100x; quick sizes on shared cores are noisy

    sr = res["shard_read"]
    assert str(small_corpus) in sr["corpus"] and sr["dtype"] == "uint16"
    assert sr["tokens"] > 10_000 and sr["random_windows"]["tokens_per_s"] > 0

    formats = res["mixer"]["formats"]
    assert set(formats) >= {"kvr_answer", "generic_completion", "generic_raw", "random_raw", "random_completion"}
    for stats in formats.values():
        assert stats["rows"] > 0 and 0 < stats["packing_efficiency"] <= 1 and 0 < stats["pad_to_longest_efficiency"] <= 1
    # raw generic windows are exactly raw_tokens long (128), so packing them is lossless
    assert formats["generic_raw"]["mean_tokens_per_row"] == 128.0 and formats["generic_raw"]["packing_efficiency"] == 1.0

    pk = res["pack"]  # the packer vs the one before issue 14, the flattening collator and group_by_length
    assert pk["flattening_collator"]["efficiency"] == 1.0 and pk["flattening_collator"]["rows"] == 1
    assert pk["remix_ds_pack"]["efficiency"] >= pk["before_issue14_pack"]["efficiency"] - 0.005
    assert pk["remix_ds_pack"]["efficiency"] > pk["group_by_length"]["efficiency"]
    assert pk["remix_ds_pack"]["varlen_attention_cells"] == pk["flattening_collator"]["varlen_attention_cells"]
    assert pk["flattening_collator"]["dense_attention_cells"] == pk["tokens"] ** 2
    assert rw["numpy_choice_table"]["tokens_per_s"] > 0 and rw["speedup_vs_numpy_choice_table"] > 0

    c = res["consumption"]
    assert c["loader_over_train"] == pytest.approx(c["loader_tokens_per_s"] / c["train_tokens_per_s"], rel=0.01)
    assert load_tokenizer("tiny").eos_token_id is not None


def test_naive_baseline_matches_tokenizer():
    from helpers import sp_tokenizer

    naive_random_words = baseline("random_words").naive_random_words

    tok = sp_tokenizer()
    ids = naive_random_words(tok, ["one", "two", "three"], 5, 2, 4, seed=0)
    assert len(ids) == 5
    for x in ids:
        text = tok.decode(x)
        assert 2 <= len(text.split()) <= 4 and set(text.split()) <= {"one", "two", "three"}
        assert tok(text, add_special_tokens=False)["input_ids"] == x


def test_cli_bench_data_parts(tmp_path, capsys):
    from remix_ds.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", "data", "--quick", "--parts", "random_words", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "random_words" in res and "shard_read" not in res and "mixer" not in res
    assert f"wrote {out}" in capsys.readouterr().out


def test_bench_stage_rows_identical_before_and_after(small_corpus):
    from remix_ds.models import load_tokenizer

    st = bench_data.bench_stage(load_tokenizer("tiny"), factoids=60)
    assert st["rows_identical"] and st["generic_rows"] == 60 and st["before_s"] > 0 and st["after_s"] > 0
    tr = st["tokenize_rows"]  # the tokenizing step alone: per-word units == whole rows
    assert tr["rows_identical"] and tr["rows"] == 60 and tr["fast_path"] == "exact" and tr["units_s"] > 0


def test_vectorized_numpy_baseline_draws_identical_ids():
    """The random-word rival is fair: same draws as RandomWords.sample, the same ids and offsets."""
    import numpy as np
    PaddedTable = baseline("random_words").PaddedTable

    from helpers import sp_tokenizer
    from remix_ds.data.random_words import RandomWords

    gen = RandomWords(sp_tokenizer(), ["one", "two", "three", "seventeen", "x"], min_words=2, max_words=9)
    batch = gen.sample(np.random.default_rng(5), 300)
    ids, offsets = PaddedTable(gen).sample(np.random.default_rng(5), 300)
    assert ids.dtype == batch.ids.dtype and np.array_equal(ids, batch.ids) and np.array_equal(offsets, batch.offsets)


def test_baselines_outside_a_checkout_stop_with_one_line(tmp_path, monkeypatch):
    import remix_ds.bench.checkout as bench

    monkeypatch.setattr(bench, "CHECKOUT", tmp_path)
    with pytest.raises(SystemExit, match=r"benchmarks/ of a source checkout.*pip install -e \.") as e:
        bench.baseline("stage")
    assert "\n" not in str(e.value)
