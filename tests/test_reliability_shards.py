"""Shard manifests that list a shard twice or lack keys, and a .bin that no longer fits its .idx."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from remix_ds.data.shard_builder import build_shards
from remix_ds.data.shards import ShardError, ShardReader


@pytest.fixture
def shards(tmp_path, sp_tok):
    rng = np.random.default_rng(0)
    words = "the of and river city music capital born value key answer question".split()
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, size=int(rng.integers(20, 120))))}) + "\n"
                           for _ in range(200)))
    out = tmp_path / "s"
    build_shards([str(src)], out, sp_tok, max_tokens_per_shard=6000, progress=False)
    return out


def _edit_manifest(folder, edit) -> None:
    path = folder / "manifest.json"
    man = json.loads(path.read_text())
    edit(man)
    path.write_text(json.dumps(man))


def test_a_shard_listed_twice_is_refused_not_counted_twice(shards, sp_tok):
    n = ShardReader(shards, sp_tok).num_documents
    _edit_manifest(shards, lambda m: m["shards"].append(m["shards"][0]))
    with pytest.raises(ShardError) as e:
        ShardReader(shards, sp_tok)
    k = len(json.loads((shards / "manifest.json").read_text())["shards"]) - 1
    assert str(e.value) == (f"{shards / 'manifest.json'}: shards[{k}] names 'shard_00000' again (first in shards[0]): "
                            "its documents would be counted twice")
    assert n > 0


@pytest.mark.parametrize("edit, says", [
    (lambda m: m.pop("shards"), "manifest key 'shards' is missing"),
    (lambda m: m["shards"][0].pop("num_documents"), "shards[0] lacks num_documents"),
    (lambda m: m["shards"][1]["bin"].pop("sha256"), "shards[1] lacks bin.sha256"),
    (lambda m: m.pop("tokenizer"), "manifest key 'tokenizer' must hold vocab_hash, eos_id, vocab_size and name"),
])
def test_a_manifest_without_a_key_is_one_line(shards, sp_tok, edit, says):
    _edit_manifest(shards, edit)
    with pytest.raises(ShardError) as e:
        ShardReader(shards, sp_tok)
    assert str(e.value) == f"{shards / 'manifest.json'}: {says}"


def _tokens(path):
    return np.fromfile(path, dtype="<u2")


@pytest.mark.parametrize("how", ["rotate", "reverse_documents", "other_shard"])
def test_a_bin_that_no_longer_fits_its_idx_is_caught_by_default(shards, sp_tok, how):
    """Same size, same id range, same hashes of the .idx: the default open (verify='index') used to train on it."""
    b0 = shards / "shard_00000.bin"
    r = ShardReader(shards, sp_tok)
    t = _tokens(b0)
    if how == "rotate":
        t = np.roll(t, 7)
    elif how == "reverse_documents":
        bounds = r._shards[0].doc_bounds
        t = np.concatenate([t[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 2, -1, -1)])
    else:  # another shard's tokens cut to this size
        t = np.concatenate([_tokens(shards / "shard_00001.bin"), _tokens(shards / "shard_00002.bin")])[: len(t)]
    assert len(t) == len(_tokens(b0))
    t.astype("<u2").tofile(b0)
    with pytest.raises(ShardError) as e:
        ShardReader(shards, sp_tok)
    msg = str(e.value)
    assert msg.startswith(f"{b0}: document ") and f"should end with the EOS id {sp_tok.eos_token_id} at token " in msg
    assert msg.endswith("sampled document ends differ): the .bin does not fit its .idx (swapped, rotated or replaced shard)")
    ShardReader(shards, sp_tok, verify="none")  # the explicit opt-out still opens it
    with pytest.raises(ShardError, match="sha256 does not match"):
        ShardReader(shards, sp_tok, verify="full")


def test_intact_shards_pass_and_in_document_swaps_still_need_full(shards, sp_tok, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    assert ShardReader(copy, sp_tok).num_documents == ShardReader(shards, sp_tok, verify="full").num_documents
