"""The built-in generic corpus: a fixed text shipped with the package.

REMIX's generic-text mixing and the demo's stage 0 need pretraining-like text; the embedded default
needs no download. It is ``builtin_corpus/corpus.jsonl.gz`` beside this module: English prose from
the CPython 3.11.2 documentation (PSF License; source, licence and how it was made are in
``builtin_corpus/README.md``). Its sha256 is recorded here and checked on every build, and nothing
else is read, so the corpus (and every number that depends on it) is the same on every machine.

:func:`generic_corpus` tokenizes it into shards on first use and caches them under
``$REMIX_DS_CACHE/corpus/`` (default ``~/.cache/remix_ds``), keyed by the corpus's sha256 and the
tokenizer's vocab hash; later calls just open the shards. Several ranks may call it at once: each
builds into its own temp directory and the first atomic rename wins.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Iterator

from remix_ds.cachedir import build_once, cache_root
from remix_ds.data.shard_builder import tokenize_to_shards
from remix_ds.data.shards import ShardReader, tokenizer_fingerprint

BUILTIN_PATH = Path(__file__).with_name("builtin_corpus") / "corpus.jsonl.gz"
BUILTIN_SHA256 = "7af0c10fbb369779970ba25ffb9e258193dd83e119ee155244b717ac7a32b172"
# Bump when the tokenization of the corpus into shards changes, so cached shards are rebuilt.
CORPUS_VERSION = 3


def corpus_sha256() -> str:
    """The recorded sha256 of the shipped corpus file."""
    return BUILTIN_SHA256


def documents(max_bytes: int | None = None) -> Iterator[str]:
    """The corpus's documents in order (the first ones up to ``max_bytes`` of text, if given).

    Raises ValueError naming the file when its bytes do not match the recorded sha256.
    """
    data = BUILTIN_PATH.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != BUILTIN_SHA256:
        raise ValueError(f"{BUILTIN_PATH}: sha256 {digest[:16]}... does not match the recorded {BUILTIN_SHA256[:16]}... "
                         "(a damaged or edited install of the built-in corpus; reinstall remix-ds)")
    total = 0
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        text = json.loads(line)["text"]
        yield text
        total += len(text.encode())
        if max_bytes is not None and total >= max_bytes:
            return


def _corpus_key(fingerprint: dict, max_bytes: int | None) -> str:
    blob = json.dumps({"v": CORPUS_VERSION, "sha256": BUILTIN_SHA256, "vocab": fingerprint["vocab_hash"],
                       "eos": fingerprint["eos_id"], "max_bytes": max_bytes}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def corpus_dir(tokenizer, *, max_bytes: int | None = None) -> Path:
    """Where the cached shards of the built-in corpus for ``tokenizer`` live (may not exist yet).
    The name holds the corpus's sha256 prefix; the key, the tokenizer too."""
    key = _corpus_key(tokenizer_fingerprint(tokenizer), max_bytes)
    return cache_root() / "corpus" / f"builtin-{BUILTIN_SHA256[:12]}-{key}"


def generic_corpus(tokenizer, *, max_bytes: int | None = None, tokenizer_name: str | None = None,
                   progress: bool = False) -> ShardReader:
    """Open the built-in generic corpus for ``tokenizer``, building and caching its shards on first use.

    Returns a :class:`ShardReader` checked against ``tokenizer`` (fully checksummed: the corpus is a
    few MB, about 0.8M tokens). ``max_bytes`` keeps only the first documents (tests and quick benchmarks).
    """
    final = corpus_dir(tokenizer, max_bytes=max_bytes)
    if not (final / "manifest.json").is_file():
        build_once(final, lambda tmp: tokenize_to_shards(
            documents(max_bytes), tmp, tokenizer, tokenizer_name=tokenizer_name,
            extra={"sources": [f"builtin:{BUILTIN_PATH.name}"], "corpus_sha256": BUILTIN_SHA256,
                   "max_bytes": max_bytes, "corpus_version": CORPUS_VERSION},
            progress=progress, desc="building generic corpus",
        ), marker="manifest.json")
    return ShardReader(final, tokenizer, verify="full")
