"""Memory-mapped pretraining shards: Megatron ``.bin``/``.idx`` pairs plus ``manifest.json``.

On-disk layout of a shard directory::

    OUT_DIR/manifest.json            tokenizer fingerprint, counts, per-file size and sha256
    OUT_DIR/shard_00000.bin          token ids of every document, concatenated (uint16 or int32)
    OUT_DIR/shard_00000.idx          Megatron MMapIndexedDataset index
    OUT_DIR/shard_00001.bin ...      (a new shard starts at the document that would pass max_tokens_per_shard)

The ``.idx`` layout is Megatron-LM's ``_IndexWriter`` (megatron/core/datasets/indexed_dataset.py),
all little-endian::

    b"MMIDIDX\\x00\\x00"     9 bytes magic
    version      u64      always 1
    dtype code   u8       Megatron DType code of the .bin tokens (4 = int32, 8 = uint16)
    seq count    u64      S, number of sequences
    doc count    u64      D + 1, length of the document-index array below
    sizes        i32[S]   tokens per sequence
    pointers     i64[S]   byte offset of each sequence in the .bin
    doc_idx      i64[D+1] sequence index where each document starts; 0 first, S last

We write one sequence per document (as Megatron's ``preprocess_data.py`` does without sentence
splitting), with the EOS id appended to every document and no BOS, so
``megatron.core.datasets.indexed_dataset.IndexedDataset(OUT_DIR/shard_00000)`` reads these files
as they are. Token dtype: uint16 when every id fits (vocab size <= 65,536), else int32.

Writes are atomic per file (temp file in the same directory, then ``os.replace``) and
``manifest.json`` is written last: a directory without a manifest is an unfinished build, and
:class:`ShardReader` refuses it.

:class:`ShardReader` memory-maps every file; reading a document or a window is offset
arithmetic on the maps, never a read of a whole file.

Token range: the manifest records each shard's ``min_id``/``max_id`` (computed as it is written);
on open they are checked against the vocabulary (the tokenizer's when given, else the recorded
one), and a cheap probe (the max over a few evenly spaced blocks of the memmap) checks the file
against the recorded range. ``verify="full"`` hashes every ``.bin`` against the manifest *and*
checks the exact range. Manifests without the range (older builds) and bare Megatron prefixes
get the exact range from one vectorized pass over the memmap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np

from remix_ds.errors import RemixError
from remix_ds.cachedir import umask_mode, write_bytes_atomic

log = logging.getLogger(__name__)

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "remix-ds-shards"
MANIFEST_VERSION = 1
# 9 (magic) + 8 (version) + 1 (dtype code) + 8 (sequence count) + 8 (document count)
_HEADER_BYTES = 34

# Megatron's DType enum (indexed_dataset.py): code -> numpy dtype.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}
_HASH_CHUNK = 1 << 22

Verify = Literal["none", "index", "full"]


class ShardError(RemixError):
    """A shard is missing, truncated, corrupt or was made with another tokenizer.

    The message always names the offending file.
    """


# ----------------------------------------------------------------------------- tokenizer identity


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id in ``[0, vocab_size)`` fits in 16 bits, else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def vocab_hash(tokenizer) -> str:
    """sha256 over the tokenizer's (id, token) pairs in id order, added tokens included."""
    vocab = tokenizer.get_vocab()
    pairs = sorted((int(i), str(t)) for t, i in vocab.items())
    return "sha256:" + hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer, name: str | None = None) -> dict:
    """What a shard records about its tokenizer: ``name``, ``vocab_hash``, ``vocab_size``, ``eos_id``.

    ``name`` is informational (the spec the user gave, e.g. ``tiny`` or a hub id); only
    ``vocab_hash`` and ``eos_id`` decide whether shards fit a tokenizer.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name or tokenizer.name_or_path} has no EOS token; shards end documents with EOS")
    return {
        "name": name or str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        "vocab_hash": vocab_hash(tokenizer),
        "vocab_size": len(tokenizer),
        "eos_id": int(tokenizer.eos_token_id),
    }


# ----------------------------------------------------------------------------- writing


def _mkstemp(path: Path) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    os.fchmod(fd, umask_mode(0o666))
    return fd, tmp


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def encode_index(lengths: np.ndarray, dtype: np.dtype) -> bytes:
    """The Megatron ``.idx`` bytes for documents of ``lengths`` tokens (one sequence each)."""
    dtype = np.dtype(dtype)
    sizes = np.asarray(lengths, dtype=np.int64)
    if (sizes > np.iinfo(np.int32).max).any():
        raise ValueError("a document is longer than 2**31-1 tokens; Megatron stores sizes as int32")
    n = len(sizes)
    pointers = np.zeros(n, dtype=np.int64)
    if n:
        np.cumsum(sizes[:-1] * dtype.itemsize, out=pointers[1:])
    doc_idx = np.arange(n + 1, dtype=np.int64)
    return b"".join(
        [
            INDEX_HEADER,
            struct.pack("<Q", INDEX_VERSION),
            struct.pack("<B", _CODE_OF[dtype]),
            struct.pack("<Q", n),
            struct.pack("<Q", n + 1),
            sizes.astype("<i4").tobytes(),
            pointers.astype("<i8").tobytes(),
            doc_idx.astype("<i8").tobytes(),
        ]
    )


class ShardWriter:
    """Streams documents into one ``PREFIX.bin``/``PREFIX.idx`` pair, atomically.

    Tokens go to a temp file beside the final one while their sha256 is computed on the fly;
    :meth:`finalize` writes the index and renames both into place. Used as a context manager an
    exception aborts the shard (temp files removed, nothing under the final names) and propagates.
    """

    def __init__(self, prefix: str | Path, dtype: np.dtype):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF:
            raise ValueError(f"unsupported token dtype {self.dtype}")
        self.bin_path = self.prefix.with_name(self.prefix.name + ".bin")
        self.idx_path = self.prefix.with_name(self.prefix.name + ".idx")
        fd, self._tmp = _mkstemp(self.bin_path)
        self._file = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self._min, self._max = None, None
        self._lengths: list[int] = []
        self.num_tokens = 0
        self._done = False

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat id array and their lengths (sum(lengths) == len(flat))."""
        flat = np.asarray(flat)
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != len(flat):
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {len(flat)} tokens were given")
        if len(flat) and (flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token id out of range for {self.dtype} in {self.bin_path}")
        if len(flat):
            lo, hi = int(flat.min()), int(flat.max())
            self._min = lo if self._min is None else min(self._min, lo)
            self._max = hi if self._max is None else max(self._max, hi)
        data = flat.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        self._file.write(data)
        self._sha.update(data)
        self._lengths.extend(lengths.tolist())
        self.num_tokens += len(flat)

    def add_document(self, ids) -> None:
        """Append one document (its ids, EOS already included)."""
        ids = np.asarray(ids)
        self.add_documents(ids, np.array([len(ids)]))

    @property
    def num_documents(self) -> int:
        return len(self._lengths)

    def finalize(self) -> dict:
        """Write the index, rename both files into place, return their manifest entry."""
        self._file.close()
        idx_bytes = encode_index(np.array(self._lengths, dtype=np.int64), self.dtype)
        try:
            os.replace(self._tmp, self.bin_path)
            write_bytes_atomic(self.idx_path, idx_bytes)
        except BaseException:
            _unlink(self._tmp)
            _unlink(self.bin_path)
            raise
        self._done = True
        return {
            "prefix": self.prefix.name,
            "num_tokens": self.num_tokens,
            "num_documents": self.num_documents,
            "min_id": self._min,
            "max_id": self._max,
            "bin": {"file": self.bin_path.name, "bytes": self.num_tokens * self.dtype.itemsize,
                    "sha256": self._sha.hexdigest()},
            "idx": {"file": self.idx_path.name, "bytes": len(idx_bytes),
                    "sha256": hashlib.sha256(idx_bytes).hexdigest()},
        }

    def abort(self) -> None:
        """Drop the unfinished shard (idempotent)."""
        if not self._done:
            self._file.close()
            _unlink(self._tmp)
            self._done = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_shard_dir(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    out_dir: str | Path,
    fingerprint: dict,
    *,
    max_tokens_per_shard: int = 1 << 30,
    extra: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Write ``(flat_ids, lengths)`` document batches as shards plus ``manifest.json``; return the manifest.

    Documents must already end with EOS. A shard holds at most ``max_tokens_per_shard`` tokens: a
    new shard starts at the document that would pass the limit (a single document longer than the
    limit gets a shard of its own), whatever the batch boundaries. ``extra`` is merged into the
    manifest (sources, text field, counts of skipped inputs); it is read after the last batch, so
    the producer of ``batches`` may still fill it in. Raises ``ShardError`` when no
    document was written. On any failure nothing is left under a final name that is not a complete
    file, the manifest is not written, and the exception propagates.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        if not overwrite:
            raise ShardError(f"{manifest_path} already exists; pass --overwrite to rebuild")
        # Uncommit the old build first: its manifest must never describe the new files.
        old = _read_manifest(manifest_path)
        manifest_path.unlink()
        for shard in old.get("shards", []):
            for key in ("bin", "idx"):
                _unlink(out_dir / shard[key]["file"])
    dtype = token_dtype(fingerprint["vocab_size"])
    shards: list[dict] = []
    writer: ShardWriter | None = None
    if max_tokens_per_shard < 1:
        raise ShardError(f"max_tokens_per_shard must be >= 1, got {max_tokens_per_shard}")
    try:
        for flat, lengths in batches:
            lengths = np.asarray(lengths, dtype=np.int64)
            ends = np.cumsum(lengths)  # token offset after each document of the batch
            d, pos = 0, 0  # next document of the batch and its token offset
            while d < len(lengths):
                if writer is None:
                    writer = ShardWriter(out_dir / f"shard_{len(shards):05d}", dtype)
                room = max_tokens_per_shard - writer.num_tokens
                # Documents d..k-1 fit in the room left (vectorized over the batch).
                k = int(np.searchsorted(ends, pos + room, side="right"))
                if k == d and writer.num_tokens == 0:
                    k = d + 1  # one document longer than the limit: a shard of its own
                if k > d:
                    stop = int(ends[k - 1])
                    writer.add_documents(flat[pos:stop], lengths[d:k])
                    d, pos = k, stop
                if d < len(lengths) or writer.num_tokens >= max_tokens_per_shard:
                    shards.append(writer.finalize())
                    writer = None
        if writer is not None:
            shards.append(writer.finalize())
            writer = None
        if not shards:
            raise ShardError(f"no documents to write to {out_dir}: the input is empty (or every text was blank)")
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "tokenizer": fingerprint,
            "dtype": dtype.name,
            "append_eos": True,
            "add_special_tokens": False,
            "num_tokens": sum(s["num_tokens"] for s in shards),
            "num_documents": sum(s["num_documents"] for s in shards),
            **(extra or {}),
            "shards": shards,
        }
        write_bytes_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        return manifest
    except BaseException:
        if writer is not None:
            writer.abort()
        # Finished shards of a failed build have no manifest; remove them so the directory does
        # not look like a usable Megatron dataset either.
        for shard in shards:
            for key in ("bin", "idx"):
                _unlink(out_dir / shard[key]["file"])
        raise


# ----------------------------------------------------------------------------- reading


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{path}: missing; {path.parent} is not a finished shard directory "
                         "(build it with `remix-ds build-shards`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: corrupt manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{path}: not a remix-ds shard manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ShardError(f"{path}: manifest version {manifest.get('version')} is not supported "
                         f"(this remix-ds reads version {MANIFEST_VERSION})")
    _check_manifest_keys(manifest, path)
    return manifest


def _check_manifest_keys(manifest: dict, path: Path) -> None:
    """The keys a reader uses are present and typed, and no shard (or file) is listed twice."""
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict) or any(k not in tok for k in ("vocab_hash", "eos_id", "vocab_size", "name")):
        raise ShardError(f"{path}: manifest key 'tokenizer' must hold vocab_hash, eos_id, vocab_size and name")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise ShardError(f"{path}: manifest key 'shards' is {'missing' if shards is None else 'not a non-empty list'}")
    seen: dict[str, int] = {}
    for i, entry in enumerate(shards):
        where = f"{path}: shards[{i}]"
        if not isinstance(entry, dict):
            raise ShardError(f"{where} is not an object")
        missing = [k for k in ("prefix", "num_tokens", "num_documents", "bin", "idx") if k not in entry]
        missing += [f"{k}.{f}" for k in ("bin", "idx") if isinstance(entry.get(k), dict)
                    for f in ("file", "bytes", "sha256") if f not in entry[k]]
        missing += [k for k in ("bin", "idx") if k in entry and not isinstance(entry[k], dict)]
        if missing:
            raise ShardError(f"{where} lacks {', '.join(missing)}")
        for name in (entry["prefix"], entry["bin"]["file"], entry["idx"]["file"]):
            if name in seen and seen[name] != i:
                raise ShardError(f"{where} names {name!r} again (first in shards[{seen[name]}]): its documents would be "
                                 "counted twice")
            seen[name] = i


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _Shard:
    """One opened .bin/.idx pair: the token map and document boundaries in local token offsets."""

    bin_path: Path
    tokens: np.ndarray  # memmap (num_tokens,) of the file dtype
    doc_bounds: np.ndarray  # (num_docs + 1,) int64 token offsets


def _open_shard(prefix: Path) -> _Shard:
    """Open and structurally check one Megatron pair (header, sizes, pointers, doc_idx, .bin size)."""
    idx_path = prefix.with_name(prefix.name + ".idx")
    bin_path = prefix.with_name(prefix.name + ".bin")
    for p in (idx_path, bin_path):
        if not p.is_file():
            raise ShardError(f"{p}: missing")
    idx_size = idx_path.stat().st_size
    with open(idx_path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES or head[:9] != INDEX_HEADER:
        raise ShardError(f"{idx_path}: not a Megatron MMIDIDX index (bad magic or truncated header)")
    version, code, n_seq, n_doc_idx = struct.unpack("<QBQQ", head[9:])
    if version != INDEX_VERSION:
        raise ShardError(f"{idx_path}: index version {version}, expected {INDEX_VERSION}")
    if code not in DTYPE_CODES or DTYPE_CODES[code].kind not in "iu":
        raise ShardError(f"{idx_path}: unknown or non-integer token dtype code {code}")
    dtype = DTYPE_CODES[code]
    expected = _HEADER_BYTES + n_seq * 12 + n_doc_idx * 8
    if idx_size != expected:
        raise ShardError(f"{idx_path}: {idx_size} bytes, but its header ({n_seq} sequences, "
                         f"{n_doc_idx} document indices) implies {expected} (truncated or corrupt index)")
    idx_map = np.memmap(idx_path, dtype=np.uint8, mode="r")
    sizes = np.frombuffer(idx_map, dtype="<i4", count=n_seq, offset=_HEADER_BYTES)
    pointers = np.frombuffer(idx_map, dtype="<i8", count=n_seq, offset=_HEADER_BYTES + 4 * n_seq)
    doc_idx = np.frombuffer(idx_map, dtype="<i8", count=n_doc_idx, offset=_HEADER_BYTES + 12 * n_seq)
    if n_doc_idx < 1 or doc_idx[0] != 0 or doc_idx[-1] != n_seq or (np.diff(doc_idx) < 0).any():
        raise ShardError(f"{idx_path}: corrupt document index (must rise from 0 to {n_seq})")
    if (sizes < 0).any():
        raise ShardError(f"{idx_path}: corrupt index (negative sequence size)")
    # Sequences must tile the .bin contiguously (true of every Megatron builder); that is what
    # makes windows and documents plain slices.
    starts = np.zeros(n_seq + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    if not np.array_equal(pointers, starts[:-1] * dtype.itemsize):
        raise ShardError(f"{idx_path}: corrupt index (sequence pointers do not match sizes)")
    num_tokens = int(starts[-1])
    bin_size = bin_path.stat().st_size
    if bin_size != num_tokens * dtype.itemsize:
        raise ShardError(f"{bin_path}: {bin_size} bytes, but {idx_path.name} describes {num_tokens} "
                         f"{dtype.name} tokens = {num_tokens * dtype.itemsize} bytes (truncated or corrupt shard)")
    # NOTE: np.memmap refuses empty files; a shard with no tokens gets an empty array instead.
    tokens = np.memmap(bin_path, dtype=dtype.newbyteorder("<"), mode="r") if num_tokens else np.empty(0, dtype)
    return _Shard(bin_path=bin_path, tokens=tokens, doc_bounds=starts[doc_idx])


_PROBE_BLOCKS, _PROBE_TOKENS = 16, 4096
_END_SAMPLES = 256


def _check_document_ends(shard: _Shard, eos_id: int) -> None:
    """The ``.bin`` still fits its ``.idx``: sampled documents end with the EOS id.

    The builder appends EOS to every document, so the last token of each document the index
    describes is EOS. Checked for ``_END_SAMPLES`` evenly spaced documents (first and last
    included) plus every document ending inside the range probe's blocks: a ``.bin`` rotated,
    swapped with another of the same size or rebuilt from other text puts other tokens there.
    Reads about 300 scattered tokens per shard (docs/reliability.md has the cost at 100 GB).
    """
    ends = shard.doc_bounds[1:]
    n_docs, n = len(ends), len(shard.tokens)
    if not n_docs or not n:
        return
    picks = [np.linspace(0, n_docs - 1, min(n_docs, _END_SAMPLES)).astype(np.int64)]
    if n > _PROBE_BLOCKS * _PROBE_TOKENS:
        for a in np.linspace(0, n - _PROBE_TOKENS, _PROBE_BLOCKS).astype(np.int64).tolist():
            picks.append(np.arange(np.searchsorted(ends, a, "right"), np.searchsorted(ends, a + _PROBE_TOKENS, "right")))
    docs = np.unique(np.concatenate(picks))
    docs = docs[ends[docs] > shard.doc_bounds[docs]]  # empty documents have no last token
    # pread, not the memmap: a page fault reads ahead ~128 KiB around each sampled token
    size = shard.tokens.dtype.itemsize
    with open(shard.bin_path, "rb", buffering=0) as f:
        fd = f.fileno()
        raw = b"".join(os.pread(fd, size, int(pos) * size) for pos in (ends[docs] - 1).tolist())
    last = np.frombuffer(raw, dtype=shard.tokens.dtype)
    bad = np.nonzero(last != eos_id)[0]
    if bad.size:
        d = int(docs[bad[0]])
        raise ShardError(f"{shard.bin_path}: document {d} should end with the EOS id {eos_id} at token {int(ends[d]) - 1} "
                         f"but holds {int(last[bad[0]])} ({bad.size} of {docs.size} sampled document ends differ): the .bin "
                         "does not fit its .idx (swapped, rotated or replaced shard)")


def _probe_range(tokens: np.ndarray) -> tuple[int, int]:
    """(min, max) over ``_PROBE_BLOCKS`` evenly spaced blocks of ``_PROBE_TOKENS`` (first and last
    included): a cheap check that the file still holds the recorded range, reading <= 64K ids."""
    n = len(tokens)
    if n <= _PROBE_BLOCKS * _PROBE_TOKENS:
        return int(tokens.min()), int(tokens.max())
    starts = np.linspace(0, n - _PROBE_TOKENS, _PROBE_BLOCKS).astype(np.int64)
    blocks = [tokens[a : a + _PROBE_TOKENS] for a in starts.tolist()]
    return min(int(b.min()) for b in blocks), max(int(b.max()) for b in blocks)


class ShardReader:
    """Documents and fixed-length windows of a shard directory, memory-mapped.

    ``path`` is a directory with ``manifest.json`` (what ``build-shards`` writes), that manifest
    itself, or a bare Megatron prefix (``PATH.bin``/``PATH.idx`` from any Megatron tool; no
    manifest, so the tokenizer cannot be checked: a warning is logged).

    Checks at open (each failure raises :class:`ShardError` naming the file):
      * always: index header, sizes, pointers and document index consistent; ``.bin`` size equals
        what the index describes; counts and byte sizes equal the manifest's;
      * ``tokenizer`` given: its vocab hash and EOS id equal the manifest's (shard dirs only);
      * ``verify="index"`` (default): sha256 of every ``.idx`` (small) against the manifest, and
        sampled document ends must hold the EOS id (``_check_document_ends``: a ``.bin`` rotated,
        swapped or replaced by another of the same size no longer fits its ``.idx``);
      * ``verify="full"``: also sha256 of every ``.bin`` and the exact id range (reads all tokens
        once; use for small corpora or after a copy). The default does *not* catch flipped
        ``.bin`` bytes of unchanged size inside documents unless they leave the recorded id range;
      * token ids within ``[0, vocab)`` (``_check_ids``).

    Contents: documents are numbered globally across shards in manifest order; "the stream" is
    every document's tokens (EOS included) concatenated in that order. All returned arrays are
    fresh ``int32`` arrays (shape comments below), safe to modify.
    """

    def __init__(self, path: str | Path, tokenizer=None, *, verify: Verify = "index"):
        path = Path(path)
        if path.name == MANIFEST:
            path = path.parent
        self.path = path
        self.verify = verify
        if verify not in ("none", "index", "full"):
            raise ValueError(f"verify must be 'none', 'index' or 'full', got {verify!r}")
        if path.is_dir():
            self.manifest_path: Path | None = path / MANIFEST
            self.manifest = _read_manifest(self.manifest_path)
            prefixes = [path / s["prefix"] for s in self.manifest["shards"]]
        elif path.with_name(path.name + ".idx").is_file():
            self.manifest_path, self.manifest = None, None
            prefixes = [path]
        else:
            raise ShardError(f"{path}: no shard directory (manifest.json) or Megatron prefix "
                             f"({path.name}.bin/.idx) here")
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
        self._shards = [_open_shard(p) for p in prefixes]
        if self.manifest is not None:
            self._check_manifest(verify)
            if verify != "none":
                for shard in self._shards:
                    _check_document_ends(shard, int(self.manifest["tokenizer"]["eos_id"]))
        self._check_ids(tokenizer)
        self._build_offsets()

    # --- open-time checks

    def check_tokenizer(self, tokenizer) -> None:
        """Raise ShardError unless these shards were built with ``tokenizer`` (vocab hash + EOS id).

        A bare Megatron prefix records no tokenizer: that is logged as a warning, not an error, so
        shards from Megatron's own ``preprocess_data.py`` stay usable (at the user's risk).
        """
        if self.manifest is None:
            log.warning("%s: a bare Megatron prefix has no manifest.json recording its tokenizer; cannot check "
                        "that it matches %s", self.path, getattr(tokenizer, "name_or_path", "the tokenizer"))
            return
        have = self.manifest["tokenizer"]
        want = tokenizer_fingerprint(tokenizer)
        if have["vocab_hash"] != want["vocab_hash"] or have["eos_id"] != want["eos_id"]:
            raise ShardError(
                f"{self.manifest_path}: shards were built with tokenizer {have['name']!r} "
                f"(vocab {have['vocab_hash'][:19]}, eos {have['eos_id']}), but the tokenizer in use is "
                f"{want['name']!r} (vocab {want['vocab_hash'][:19]}, eos {want['eos_id']}); rebuild them with "
                f"`remix-ds build-shards ... --tokenizer {want['name']}`"
            )

    def _check_manifest(self, verify: Verify) -> None:
        for entry, shard in zip(self.manifest["shards"], self._shards):
            n_tok, n_doc = len(shard.tokens), len(shard.doc_bounds) - 1
            if (n_tok, n_doc) != (entry["num_tokens"], entry["num_documents"]):
                raise ShardError(f"{shard.bin_path}: holds {n_tok} tokens in {n_doc} documents, the manifest "
                                 f"says {entry['num_tokens']} in {entry['num_documents']} (shard replaced or corrupt)")
            for key in ("idx", "bin"):
                f = self.path / entry[key]["file"]
                if f.stat().st_size != entry[key]["bytes"]:
                    raise ShardError(f"{f}: {f.stat().st_size} bytes, manifest says {entry[key]['bytes']} "
                                     "(truncated or corrupt shard)")
                if (key == "idx" and verify in ("index", "full")) or (key == "bin" and verify == "full"):
                    if file_sha256(f) != entry[key]["sha256"]:
                        raise ShardError(f"{f}: sha256 does not match {self.manifest_path.name} (corrupt shard)")

    def _check_ids(self, tokenizer) -> None:
        """Every token id in ``[0, vocab)``: the vocabulary is the tokenizer's (when given), else the
        manifest's; see the module docstring for what is read (recorded range + probe, or exact)."""
        vocab = len(tokenizer) if tokenizer is not None else (
            int(self.manifest["tokenizer"]["vocab_size"]) if self.manifest is not None else None)
        entries = self.manifest["shards"] if self.manifest is not None else [{}] * len(self._shards)
        for entry, shard in zip(entries, self._shards):
            if not len(shard.tokens):
                continue
            lo, hi = entry.get("min_id"), entry.get("max_id")
            if lo is None or hi is None or self.verify == "full":
                exact_lo, exact_hi = int(shard.tokens.min()), int(shard.tokens.max())
                if lo is not None and hi is not None and (exact_lo, exact_hi) != (lo, hi):
                    raise ShardError(f"{shard.bin_path}: token ids span [{exact_lo}, {exact_hi}], the manifest "
                                     f"recorded [{lo}, {hi}] (corrupt shard)")
                lo, hi = exact_lo, exact_hi
            else:
                p_lo, p_hi = _probe_range(shard.tokens)
                if p_lo < lo or p_hi > hi:
                    raise ShardError(f"{shard.bin_path}: holds token id {p_hi if p_hi > hi else p_lo} outside the "
                                     f"recorded range [{lo}, {hi}] (corrupt shard; verify='full' checks every byte)")
            if lo < 0 or (vocab is not None and hi >= vocab):
                bad = lo if lo < 0 else hi
                raise ShardError(f"{shard.bin_path}: token id {bad} is outside the tokenizer's vocabulary "
                                 f"[0, {vocab}) (shards built with another tokenizer, or corrupt)")

    def _build_offsets(self) -> None:
        docs = [len(s.doc_bounds) - 1 for s in self._shards]
        toks = [len(s.tokens) for s in self._shards]
        self._shard_doc_start = np.concatenate([[0], np.cumsum(docs)]).astype(np.int64)
        self._shard_tok_start = np.concatenate([[0], np.cumsum(toks)]).astype(np.int64)
        # Global document boundaries in stream offsets: (num_documents + 1,) int64.
        self._doc_bounds = np.concatenate(
            [s.doc_bounds[:-1] + off for s, off in zip(self._shards, self._shard_tok_start)]
            + [self._shard_tok_start[-1:]]
        ).astype(np.int64)

    # --- sizes

    @property
    def num_documents(self) -> int:
        return int(self._shard_doc_start[-1])

    @property
    def num_tokens(self) -> int:
        return int(self._shard_tok_start[-1])

    @property
    def eos_id(self) -> int | None:
        return None if self.manifest is None else int(self.manifest["tokenizer"]["eos_id"])

    @property
    def dtype(self) -> np.dtype:
        return self._shards[0].tokens.dtype if self._shards else np.dtype(np.int32)

    @property
    def doc_lengths(self) -> np.ndarray:
        """Tokens per document, EOS included: (num_documents,) int64."""
        return np.diff(self._doc_bounds)

    def __len__(self) -> int:
        return self.num_documents

    def num_windows(self, seq_len: int) -> int:
        """How many whole windows of ``seq_len`` tokens tile the stream (the tail is dropped)."""
        return self.num_tokens // seq_len

    # --- reading

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Stream tokens ``[start, stop)`` (may cross documents and shards): (stop - start,) int32."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside [0, {self.num_tokens}) of {self.path}")
        out = np.empty(stop - start, dtype=np.int32)
        s = int(np.searchsorted(self._shard_tok_start, start, side="right")) - 1
        pos = start
        while pos < stop:
            base = int(self._shard_tok_start[s])
            end = min(stop, int(self._shard_tok_start[s + 1]))
            out[pos - start : end - start] = self._shards[s].tokens[pos - base : end - base]
            pos, s = end, s + 1
        return out

    def ranges(self, starts: np.ndarray, stops: np.ndarray) -> list[np.ndarray]:
        """``[tokens(a, b) for a, b in zip(starts, stops)]``, gathered with one index per shard
        (ranges that cross a shard boundary: one `tokens` call each)."""
        starts, stops = np.asarray(starts, np.int64), np.asarray(stops, np.int64)
        if len(starts) and (starts.min() < 0 or stops.max() > self.num_tokens or (stops < starts).any()):
            raise IndexError(f"token ranges outside [0, {self.num_tokens}) of {self.path}")
        lens = stops - starts
        out: list[np.ndarray | None] = [None] * len(starts)
        shard = np.searchsorted(self._shard_tok_start, starts, side="right") - 1
        inside = stops <= self._shard_tok_start[np.minimum(shard + 1, len(self._shard_tok_start) - 1)]
        for j in np.flatnonzero(lens == 0).tolist():
            out[j] = np.zeros(0, np.int32)
        inside &= lens > 0
        for s in np.unique(shard[inside]).tolist():
            sel = np.flatnonzero(inside & (shard == s))
            n = lens[sel]
            at = np.repeat(starts[sel] - self._shard_tok_start[s] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
            flat = np.asarray(self._shards[s].tokens[at], dtype=np.int32)
            for j, part in zip(sel.tolist(), np.split(flat, np.cumsum(n)[:-1])):
                out[j] = part
        for j in np.flatnonzero(~inside).tolist():
            out[j] = self.tokens(int(starts[j]), int(stops[j]))
        return out

    def document(self, i: int) -> np.ndarray:
        """Document ``i`` (EOS last): (doc_len,) int32."""
        n = self.num_documents
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for {n} documents in {self.path}")
        i %= n
        return self.tokens(int(self._doc_bounds[i]), int(self._doc_bounds[i + 1]))

    __getitem__ = document

    def window(self, i: int, seq_len: int) -> np.ndarray:
        """Window ``i``: stream tokens ``[i * seq_len, (i + 1) * seq_len)``: (seq_len,) int32."""
        n = self.num_windows(seq_len)
        if not 0 <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows of {seq_len} tokens in {self.path}")
        return self.tokens(i * seq_len, (i + 1) * seq_len)

    def windows(self, indices: np.ndarray, seq_len: int) -> np.ndarray:
        """Windows at ``indices``: (len(indices), seq_len) int32."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), seq_len), dtype=np.int32)
        for row, i in enumerate(indices.tolist()):
            out[row] = self.window(i, seq_len)
        return out

    def iter_documents(self, indices: Iterable[int] | None = None) -> Iterator[np.ndarray]:
        """Documents in ``indices`` order (default: all, in stream order)."""
        for i in range(self.num_documents) if indices is None else indices:
            yield self.document(int(i))

    # --- seeded sampling (explicit Generator, never global RNG)

    def sample_document_indices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` document indices drawn uniformly with replacement: (n,) int64."""
        if self.num_documents == 0:
            raise ShardError(f"{self.path}: no documents to sample")
        return rng.integers(0, self.num_documents, size=n, dtype=np.int64)

    def sample_documents(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        """``n`` documents drawn uniformly with replacement."""
        return [self.document(int(i)) for i in self.sample_document_indices(rng, n)]

    def sample_windows(self, rng: np.random.Generator, n: int, seq_len: int) -> np.ndarray:
        """``n`` windows of ``seq_len`` drawn uniformly with replacement: (n, seq_len) int32."""
        total = self.num_windows(seq_len)
        if total == 0:
            raise ShardError(f"{self.path}: {self.num_tokens} tokens hold no window of {seq_len}")
        return self.windows(rng.integers(0, total, size=n), seq_len)

    # --- pickling (DataLoader workers under spawn): reopen the maps, skip re-hashing

    def __reduce__(self):
        return (_reopen, (str(self.path),))

    def __repr__(self) -> str:
        return (f"ShardReader({str(self.path)!r}, documents={self.num_documents}, tokens={self.num_tokens}, "
                f"dtype={self.dtype.name})")


def _reopen(path: str) -> ShardReader:
    return ShardReader(path, verify="none")
