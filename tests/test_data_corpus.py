"""The built-in generic corpus: a shipped text with a recorded sha256, cached shards keyed by it and the tokenizer."""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import sysconfig
from pathlib import Path

import pytest

from remix_ds.data import corpus
from remix_ds.data.shards import ShardReader
from helpers import REPO, bpe_tokenizer, sp_tokenizer


def test_shipped_bytes_match_the_recorded_sha256_and_readme():
    data = corpus.BUILTIN_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == corpus.BUILTIN_SHA256
    readme = (corpus.BUILTIN_PATH.parent / "README.md").read_text()
    assert corpus.BUILTIN_SHA256 in readme and "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in readme
    docs = list(corpus.documents())
    assert len(docs) == 2930 and sum(len(d.encode()) for d in docs) == 3_584_888
    assert docs == [json.loads(line)["text"] for line in gzip.decompress(data).decode().splitlines()]
    assert all(d.isascii() and len(d) >= 200 for d in docs)
    assert corpus.BUILTIN_PATH.resolve() == REPO / "remix_ds" / "data" / "builtin_corpus" / "corpus.jsonl.gz"


def test_max_bytes_keeps_the_first_documents():
    docs = list(corpus.documents())
    first = list(corpus.documents(max_bytes=10_000))
    assert first == docs[:len(first)] and sum(len(d.encode()) for d in first[:-1]) < 10_000 <= sum(
        len(d.encode()) for d in first)


def test_a_damaged_corpus_file_is_one_line_naming_it(tmp_path, monkeypatch):
    bad = tmp_path / "corpus.jsonl.gz"
    data = bytearray(corpus.BUILTIN_PATH.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(corpus, "BUILTIN_PATH", bad)
    with pytest.raises(ValueError, match=rf"^{bad}: sha256 .* does not match the recorded") as e:
        next(corpus.documents())
    assert "\n" not in str(e.value)


def test_generic_corpus_builds_once_and_caches(tmp_path, monkeypatch):
    sp = sp_tokenizer()
    monkeypatch.setenv("REMIX_DS_CACHE", str(tmp_path / "cache"))
    reader = corpus.generic_corpus(sp, max_bytes=20_000, tokenizer_name="sp")
    want = list(corpus.documents(max_bytes=20_000))
    assert isinstance(reader, ShardReader) and reader.num_documents == len(want) >= 5
    assert reader.path.parent == tmp_path / "cache" / "corpus"
    assert reader.path.name.startswith(f"builtin-{corpus.BUILTIN_SHA256[:12]}-")
    texts = [sp.decode(reader.document(i).tolist(), skip_special_tokens=True) for i in range(len(want))]
    assert [" ".join(t.split()) for t in texts] == [" ".join(t.split()) for t in want]
    assert reader.document(0)[-1] == sp.eos_token_id
    assert reader.manifest["corpus_sha256"] == corpus.BUILTIN_SHA256 and reader.manifest["tokenizer"]["name"] == "sp"

    # Second call opens the cache without building.
    def no_build(*a, **k):
        raise AssertionError("rebuilt a cached corpus")

    monkeypatch.setattr("remix_ds.data.corpus.tokenize_to_shards", no_build)
    again = corpus.generic_corpus(sp, max_bytes=20_000)
    assert again.path == reader.path and again.document(2).tolist() == reader.document(2).tolist()

    # Another tokenizer, another size or another shipped text gets its own cache entry.
    assert corpus.corpus_dir(bpe_tokenizer(), max_bytes=20_000) != reader.path
    assert corpus.corpus_dir(sp, max_bytes=30_000) != reader.path
    monkeypatch.setattr(corpus, "BUILTIN_SHA256", "0" * 64)
    assert corpus.corpus_dir(sp, max_bytes=20_000) != reader.path
    monkeypatch.undo()
    monkeypatch.setattr("remix_ds.data.corpus.tokenize_to_shards", no_build)
    monkeypatch.setenv("REMIX_DS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssertionError, match="rebuilt"):
        corpus.generic_corpus(bpe_tokenizer(), max_bytes=20_000)
    assert not list((tmp_path / "cache" / "corpus").glob(".tmp-*"))  # failed build cleaned up


def test_building_reads_no_installed_package_file(tmp_path, monkeypatch):
    """The corpus depends on nothing installed: a build (after a first one imported what it needs)
    opens the shipped file and its own cache only, and lists no folder of the standard library or
    site-packages."""
    sp = sp_tokenizer()
    monkeypatch.setenv("REMIX_DS_CACHE", str(tmp_path / "warm"))
    corpus.generic_corpus(sp, max_bytes=20_000)  # imports everything a build needs
    monkeypatch.setenv("REMIX_DS_CACHE", str(tmp_path / "cold"))
    opened: list[str] = []
    recording = [True]

    def hook(event, args):
        if recording[0] and event in ("open", "os.scandir", "os.listdir") and isinstance(args[0], (str, bytes, Path)):
            opened.append(str(args[0] if not isinstance(args[0], bytes) else args[0].decode()))

    sys.addaudithook(hook)
    try:
        corpus.generic_corpus(sp, max_bytes=20_000)
    finally:
        recording[0] = False
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "purelib", "platlib")}
    package = corpus.BUILTIN_PATH.parent.resolve()
    read = [Path(p).resolve() for p in opened]
    outside = [p for p in read if any(root == p or root in p.parents for root in installed) and package not in p.parents]
    assert corpus.BUILTIN_PATH.resolve() in read
    assert outside == []
