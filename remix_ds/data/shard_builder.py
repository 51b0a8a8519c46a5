"""Text inputs -> tokenized Megatron shards (the library behind ``remix-ds build-shards``).

INPUT is a ``.jsonl``/``.json`` file (one object per line, or a JSON array), a ``.parquet``
file, a ``.txt``/``.md`` file, any of those gzipped (``.gz``), a directory (its supported files,
sorted), or ``hf:NAME[:CONFIG]`` for a Hugging Face hub dataset (``datasets.load_dataset`` in
streaming mode, ``split``). Documents keep their input order whatever ``workers`` is, so a
build is reproducible byte for byte.

:func:`build_shards` (inputs -> shards) and :func:`tokenize_to_shards` (any iterable of texts ->
shards; the built-in corpus in ``data/corpus.py`` uses it). The file format is ``data/shards.py``;
the command line is ``data/commands.py``.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import multiprocessing as mp
import os
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence

import numpy as np

from remix_ds.data.shards import ShardError, tokenizer_fingerprint, write_shard_dir

TextDocs = Literal["file", "blank-line", "line"]
_JSON_EXT = (".jsonl", ".json")
_TEXT_EXT = (".txt", ".md", ".text")
_PARQUET_EXT = (".parquet",)
HUB_PREFIX = "hf:"


# ----------------------------------------------------------------------------- input readers


def _strip_gz(name: str) -> str:
    return name[:-3] if name.endswith(".gz") else name


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _field(obj, field: str, where: str):
    if not isinstance(obj, dict):
        raise ShardError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if field not in obj:
        raise ShardError(f"{where}: no field {field!r} (fields: {', '.join(sorted(obj)) or 'none'}); "
                         "choose one with --text-field")
    value = obj[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ShardError(f"{where}: field {field!r} is a {type(value).__name__}, not text")
    return value


def _iter_json(path: Path, field: str) -> Iterator[str]:
    with _open_text(path) as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
        if first == "[":  # a JSON array of objects
            rows = json.loads(first + f.read())
            for i, row in enumerate(rows):
                yield _field(row, field, f"{path}[{i}]")
            return
        rest = first + f.readline()
        for lineno, line in enumerate(itertools.chain([rest], f), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ShardError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            yield _field(row, field, f"{path}:{lineno}")


def _iter_parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise ShardError(f"{path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                         "choose one with --text-field")
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            yield value or ""


def _iter_text(path: Path, text_docs: TextDocs) -> Iterator[str]:
    with _open_text(path) as f:
        if text_docs == "file":
            yield f.read()
        elif text_docs == "line":
            for line in f:
                yield line.rstrip("\n")
        else:  # paragraphs: documents are separated by one or more blank lines
            para: list[str] = []
            for line in f:
                if line.strip():
                    para.append(line)
                elif para:
                    yield "".join(para).rstrip("\n")
                    para = []
            if para:
                yield "".join(para).rstrip("\n")


def _iter_hub(spec: str, field: str, split: str) -> Iterator[str]:
    """``hf:NAME[:CONFIG]`` through ``datasets.load_dataset`` (streaming, so nothing is materialized)."""
    import datasets

    name, _, config = spec[len(HUB_PREFIX):].partition(":")
    ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
    for i, row in enumerate(ds):
        yield _field(row, field, f"{spec} ({split}) row {i}")


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Directories become their supported files (sorted); missing files raise ShardError."""
    out: list[str] = []
    for spec in inputs:
        if spec.startswith(HUB_PREFIX):
            out.append(spec)
            continue
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
            if not files:
                raise ShardError(f"{path}: directory holds no .jsonl/.json/.parquet/.txt/.md files")
            out.extend(str(p) for p in files)
        elif path.is_file():
            if _kind(path) is None:
                raise ShardError(f"{path}: unsupported input type (use .jsonl, .json, .parquet, .txt, .md, "
                                 "optionally .gz, or hf:NAME for a hub dataset)")
            out.append(spec)
        else:
            raise ShardError(f"{path}: input not found (for a Hugging Face hub dataset write {HUB_PREFIX}{spec})")
    return out


def _kind(path: Path) -> str | None:
    name = _strip_gz(path.name.lower())
    if name.endswith(_JSON_EXT):
        return "json"
    if name.endswith(_PARQUET_EXT) and not path.name.endswith(".gz"):
        return "parquet"
    if name.endswith(_TEXT_EXT):
        return "text"
    return None


def iter_input_texts(
    inputs: Sequence[str], text_field: str = "text", split: str = "train", text_docs: TextDocs = "blank-line"
) -> Iterator[str]:
    """Every document's text from ``inputs`` in order (see the module docstring for input kinds)."""
    for spec in expand_inputs(inputs):
        if spec.startswith(HUB_PREFIX):
            yield from _iter_hub(spec, text_field, split)
            continue
        path = Path(spec)
        kind = _kind(path)
        if kind == "json":
            yield from _iter_json(path, text_field)
        elif kind == "parquet":
            yield from _iter_parquet(path, text_field)
        else:
            yield from _iter_text(path, text_docs)


# ----------------------------------------------------------------------------- tokenization


def encode_documents(tokenizer, texts: Sequence[str], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize ``texts`` (no special tokens; special-token text inside a document is encoded as text)
    and append the real EOS id to each: (flat int64 ids, lengths)."""
    if not texts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    # verbose=False: documents longer than the model's context are expected here.
    ids = tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(
        itertools.chain.from_iterable(itertools.chain(x, (eos_id,)) for x in ids),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    return flat, lengths


_WORKER_TOKENIZER = None
_WORKER_EOS = None


def _worker_init(tokenizer, eos_id: int) -> None:
    global _WORKER_TOKENIZER, _WORKER_EOS
    # Processes give the parallelism; the Rust thread pool on top would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER, _WORKER_EOS = tokenizer, eos_id


def _worker_encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    flat, lengths = encode_documents(_WORKER_TOKENIZER, texts, _WORKER_EOS)
    # Ship the narrowest dtype back through the pipe.
    return flat.astype(np.int32), lengths


def _ordered_pool_map(fn: Callable, items: Iterable, workers: int, initializer, initargs) -> Iterator:
    """``fn`` over ``items`` in ``workers`` processes, results in input order.

    Unlike ``Pool.imap``, at most ``2 * workers`` batches are in flight, so a large input is never
    read into memory ahead of the tokenizers. A worker's exception re-raises here.
    """
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _batched(it: Iterable, n: int) -> Iterator[list]:
    it = iter(it)
    while batch := list(itertools.islice(it, n)):
        yield batch


def tokenize_to_shards(
    texts: Iterable[str],
    out_dir: str | Path,
    tokenizer,
    *,
    tokenizer_name: str | None = None,
    workers: int = 1,
    batch_size: int = 256,
    max_tokens_per_shard: int = 1 << 30,
    extra: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    desc: str = "tokenizing",
) -> dict:
    """Tokenize ``texts`` into a shard directory; return its manifest.

    Blank texts are skipped (counted as ``skipped_blank`` in the manifest). ``workers > 1`` uses
    that many processes; output is identical for any ``workers``. Raises ``ShardError`` when no
    document is left. See :func:`remix_ds.data.shards.write_shard_dir` for atomicity.
    """
    from tqdm.auto import tqdm

    fingerprint = tokenizer_fingerprint(tokenizer, tokenizer_name)
    eos_id = fingerprint["eos_id"]
    # write_shard_dir reads `extra` after the last batch, so the generator below can fill it in.
    extra = extra if extra is not None else {}  # shared, so a filtering input generator can count into it
    extra["skipped_blank"] = 0

    def nonblank() -> Iterator[str]:
        for text in texts:
            if text.strip():
                yield text
            else:
                extra["skipped_blank"] += 1

    batches = _batched(nonblank(), batch_size)
    if workers > 1:
        encoded = _ordered_pool_map(_worker_encode, batches, workers, _worker_init, (tokenizer, eos_id))
    else:
        encoded = (encode_documents(tokenizer, b, eos_id) for b in batches)

    bar = tqdm(desc=desc, unit="doc", disable=not progress, dynamic_ncols=True)
    n_tokens = 0

    def counted() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal n_tokens
        for flat, lengths in encoded:
            n_tokens += len(flat)
            bar.update(len(lengths))
            bar.set_postfix(tokens=f"{n_tokens:,}", refresh=False)
            yield flat, lengths

    try:
        return write_shard_dir(
            counted(), out_dir, fingerprint, max_tokens_per_shard=max_tokens_per_shard,
            extra=extra, overwrite=overwrite,
        )
    finally:
        bar.close()


def _capped(texts: Iterator[str], max_documents: int, min_words: int, extra: dict) -> Iterator[str]:
    """The first ``max_documents`` texts (0: all), minus those under ``min_words`` words; counts into ``extra``."""
    for text in texts:
        if max_documents and extra["documents_read"] >= max_documents:
            break
        extra["documents_read"] += 1
        if min_words and len(text.split()) < min_words:
            extra["skipped_short"] += 1
            continue
        yield text
    close = getattr(texts, "close", None)
    if close is not None:
        close()


def build_shards(
    inputs: Sequence[str],
    out_dir: str | Path,
    tokenizer,
    *,
    tokenizer_name: str | None = None,
    text_field: str = "text",
    split: str = "train",
    text_docs: TextDocs = "blank-line",
    workers: int = 1,
    max_tokens_per_shard: int = 1 << 30,
    overwrite: bool = False,
    progress: bool = True,
    max_documents: int = 0,
    min_words: int = 0,
) -> dict:
    """Inputs (files, directories, ``hf:NAME``) -> shard directory ``out_dir``; returns the manifest.

    ``max_documents`` > 0 reads only the first that many documents (a hub stream stops there);
    ``min_words`` > 0 then skips documents with fewer whitespace words (the reference's generic
    mixing: first 20,000 documents, those under 100 words skipped). Both are recorded.
    """
    sources = expand_inputs(inputs)  # fail on a missing file before any work
    extra = {"sources": list(inputs), "text_field": text_field}
    texts = iter_input_texts(sources, text_field, split, text_docs)
    if max_documents or min_words:
        extra.update(max_documents=max_documents, min_words=min_words, documents_read=0, skipped_short=0)
        texts = _capped(texts, max_documents, min_words, extra)
    return tokenize_to_shards(
        texts, out_dir, tokenizer,
        tokenizer_name=tokenizer_name, workers=workers, max_tokens_per_shard=max_tokens_per_shard,
        extra=extra, overwrite=overwrite, progress=progress,
    )
