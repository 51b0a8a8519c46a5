"""Megatron .bin/.idx shards: exact bytes, round trips, atomic builds, and refusal of bad shards."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from remix_ds.data.shard_builder import build_shards, encode_documents, tokenize_to_shards
from remix_ds.data.shards import ShardError, ShardReader, token_dtype, tokenizer_fingerprint, write_shard_dir
from helpers import bpe_tokenizer

FP = {"name": "fake", "vocab_hash": "sha256:0", "vocab_size": 1000, "eos_id": 2}
TEXTS = [
    "The capital of France is Paris.",
    "London is a city in England; the river is long.",
    "one two three",
    "Music and film: an actor, a singer, 12345 and 6789!",
    "the key value question",
]


def docs_to_batches(docs, per_batch=2):
    for i in range(0, len(docs), per_batch):
        chunk = [np.asarray(d) for d in docs[i : i + per_batch]]
        yield np.concatenate(chunk), np.array([len(d) for d in chunk])


def megatron_read(prefix):
    """Independent reader following Megatron-LM's _IndexReader / IndexedDataset, for parity."""
    with open(f"{prefix}.idx", "rb") as f:
        assert f.read(9) == b"MMIDIDX\x00\x00"
        assert struct.unpack("<Q", f.read(8))[0] == 1
        code = struct.unpack("<B", f.read(1))[0]
        dtype = {4: np.int32, 8: np.uint16}[code]
        seq_count = struct.unpack("<Q", f.read(8))[0]
        doc_count = struct.unpack("<Q", f.read(8))[0]
        offset = f.tell()
    buf = np.memmap(f"{prefix}.idx", mode="r", order="C")
    sizes = np.frombuffer(buf, dtype=np.int32, count=seq_count, offset=offset)
    pointers = np.frombuffer(buf, dtype=np.int64, count=seq_count, offset=offset + sizes.nbytes)
    doc_idx = np.frombuffer(buf, dtype=np.int64, count=doc_count, offset=offset + sizes.nbytes + pointers.nbytes)
    assert sizes.shape[0] == doc_idx[-1]  # IndexedDataset's own assertion
    data = np.memmap(f"{prefix}.bin", mode="r", order="C")
    seqs = [np.frombuffer(data, dtype=dtype, count=int(n), offset=int(p)).tolist() for p, n in zip(pointers, sizes)]
    return dtype, seqs, doc_idx.tolist()


# ----------------------------------------------------------------------------- format


def test_index_and_bin_bytes_are_megatron_layout(tmp_path):
    manifest = write_shard_dir(docs_to_batches([[5, 6, 2], [7, 2]]), tmp_path, FP)
    expected_idx = (
        b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8)  # version 1, uint16
        + struct.pack("<Q", 2) + struct.pack("<Q", 3)  # 2 sequences, 3 document indices
        + struct.pack("<2i", 3, 2) + struct.pack("<2q", 0, 6) + struct.pack("<3q", 0, 1, 2)
    )
    assert (tmp_path / "shard_00000.idx").read_bytes() == expected_idx
    assert (tmp_path / "shard_00000.bin").read_bytes() == struct.pack("<5H", 5, 6, 2, 7, 2)
    assert manifest["num_tokens"] == 5 and manifest["num_documents"] == 2 and manifest["dtype"] == "uint16"
    assert megatron_read(tmp_path / "shard_00000") == (np.uint16, [[5, 6, 2], [7, 2]], [0, 1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard_00000.bin", "shard_00000.idx"]


def test_int32_tokens_above_uint16_vocab(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.int32
    fp = {**FP, "vocab_size": 100_000}
    write_shard_dir(docs_to_batches([[70_000, 2], [99_999, 5, 2]]), tmp_path, fp)
    dtype, seqs, _ = megatron_read(tmp_path / "shard_00000")
    assert dtype == np.int32 and seqs == [[70_000, 2], [99_999, 5, 2]]
    r = ShardReader(tmp_path)
    assert r.document(1).tolist() == [99_999, 5, 2] and r.document(1).dtype == np.int32


def test_documents_windows_across_shards(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(3, 900, size=rng.integers(1, 30)), 2) for _ in range(40)]
    manifest = write_shard_dir(docs_to_batches(docs, 3), tmp_path, FP, max_tokens_per_shard=100)
    assert len(manifest["shards"]) > 2
    r = ShardReader(tmp_path, verify="full")
    stream = np.concatenate(docs)
    assert (r.num_documents, r.num_tokens) == (40, len(stream))
    assert [r.document(i).tolist() for i in range(40)] == [d.tolist() for d in docs]
    assert r.document(-1).tolist() == docs[-1].tolist()
    assert r.doc_lengths.tolist() == [len(d) for d in docs]
    # Windows tile the stream, including those that cross a shard boundary.
    L = 37
    assert r.num_windows(L) == len(stream) // L
    got = r.windows(np.arange(r.num_windows(L)), L)
    assert np.array_equal(got, stream[: r.num_windows(L) * L].reshape(-1, L))
    with pytest.raises(IndexError, match="window"):
        r.window(r.num_windows(L), L)


def test_ranges_equal_tokens_within_and_across_shards(tmp_path):
    rng = np.random.default_rng(1)
    docs = [np.append(rng.integers(3, 900, size=rng.integers(1, 30)), 2) for _ in range(40)]
    write_shard_dir(docs_to_batches(docs, 3), tmp_path, FP, max_tokens_per_shard=100)
    r = ShardReader(tmp_path)
    stream = np.concatenate(docs)
    starts = rng.integers(0, len(stream), 300)
    stops = np.minimum(starts + rng.integers(0, 60, 300), len(stream))  # empty ones, and some cross a shard
    starts[:2], stops[:2] = [0, len(stream)], [len(stream), len(stream)]
    got = r.ranges(starts, stops)
    assert [g.tolist() for g in got] == [stream[a:b].tolist() for a, b in zip(starts, stops)]
    assert all(g.dtype == np.int32 for g in got)
    assert r.ranges(np.zeros(0, np.int64), np.zeros(0, np.int64)) == []
    with pytest.raises(IndexError, match="token ranges"):
        r.ranges([5], [len(stream) + 1])


def test_seeded_sampling_is_deterministic(tmp_path):
    docs = [np.array([i, i + 1, 2]) for i in range(3, 60)]
    write_shard_dir(docs_to_batches(docs), tmp_path, FP)
    r = ShardReader(tmp_path)
    a = r.sample_windows(np.random.default_rng(7), 16, 5)
    b = r.sample_windows(np.random.default_rng(7), 16, 5)
    c = r.sample_windows(np.random.default_rng(8), 16, 5)
    assert a.shape == (16, 5) and a.dtype == np.int32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    idx = r.sample_document_indices(np.random.default_rng(3), 10)
    assert [d.tolist() for d in r.sample_documents(np.random.default_rng(3), 10)] == [docs[i].tolist() for i in idx]


def test_reader_pickles(tmp_path):
    write_shard_dir(docs_to_batches([[5, 2], [6, 7, 2]]), tmp_path, FP)
    r = pickle.loads(pickle.dumps(ShardReader(tmp_path)))
    assert r.document(1).tolist() == [6, 7, 2]


def test_bare_megatron_prefix_opens(tmp_path):
    write_shard_dir(docs_to_batches([[5, 2], [6, 7, 2]]), tmp_path, FP)
    r = ShardReader(tmp_path / "shard_00000")
    assert r.manifest is None and r.document(0).tolist() == [5, 2]


# ----------------------------------------------------------------------------- building from text


def test_build_from_jsonl_parquet_text(tmp_path, sp_tok):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS[:2])))
    pq.write_table(pa.table({"body": [TEXTS[2], "   "]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text(f"{TEXTS[3]}\n\n\n{TEXTS[4]}\n")
    out = tmp_path / "out"
    # text_field applies to jsonl and parquet alike, so use one field name per build
    m1 = build_shards([str(tmp_path / "a.jsonl"), str(tmp_path / "c.txt")], out, sp_tok, tokenizer_name="sp", progress=False)
    r = ShardReader(out, sp_tok, verify="full")
    expected = [TEXTS[0], TEXTS[1], TEXTS[3], TEXTS[4]]
    assert r.num_documents == 4 and m1["tokenizer"]["name"] == "sp"
    for i, text in enumerate(expected):
        doc = r.document(i)
        assert doc.tolist() == sp_tok(text, add_special_tokens=False)["input_ids"] + [sp_tok.eos_token_id]
        assert sp_tok.decode(doc.tolist(), skip_special_tokens=True) == text
    assert m1["num_tokens"] == r.num_tokens == sum(len(r.document(i)) for i in range(4))

    m2 = build_shards([str(tmp_path / "b.parquet")], tmp_path / "pq", sp_tok, text_field="body", progress=False)
    assert m2["num_documents"] == 1 and m2["skipped_blank"] == 1
    assert ShardReader(tmp_path / "pq", sp_tok).document(0).tolist() == sp_tok(TEXTS[2], add_special_tokens=False)["input_ids"] + [2]


def test_workers_give_identical_bytes(tmp_path, sp_tok):
    texts = [f"{TEXTS[i % 5]} number {i}" for i in range(300)]
    tokenize_to_shards(texts, tmp_path / "w1", sp_tok, workers=1, batch_size=16, progress=False)
    tokenize_to_shards(texts, tmp_path / "w2", sp_tok, workers=2, batch_size=16, progress=False)
    for name in ("shard_00000.bin", "shard_00000.idx", "manifest.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_manifest_records_tokenizer_and_checksums(tmp_path, sp_tok):
    m = tokenize_to_shards(TEXTS, tmp_path, sp_tok, tokenizer_name="sp", progress=False)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == m
    assert m["tokenizer"] == tokenizer_fingerprint(sp_tok, "sp") and m["tokenizer"]["eos_id"] == sp_tok.eos_token_id
    import hashlib

    for key in ("bin", "idx"):
        f = tmp_path / m["shards"][0][key]["file"]
        assert m["shards"][0][key]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert m["shards"][0][key]["bytes"] == f.stat().st_size


def test_cli_build_shards(tmp_path, capsys):
    from remix_ds.cli import main
    from remix_ds.models import load_tokenizer

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"content": t}) + "\n" for t in TEXTS))
    out = tmp_path / "shards"
    rc = main(["build-shards", str(tmp_path / "in.jsonl"), str(out), "--tokenizer", "tiny", "--text-field", "content",
               "--workers", "1", "--no-progress"])
    assert rc == 0 and "wrote 5 documents" in capsys.readouterr().out
    tiny = load_tokenizer("tiny")
    r = ShardReader(out, tiny)
    assert r.manifest["tokenizer"]["name"] == "tiny"
    assert tiny.decode(r.document(4).tolist(), skip_special_tokens=True) == TEXTS[4]


# ----------------------------------------------------------------------------- refusals


@pytest.fixture
def built(tmp_path, sp_tok):
    out = tmp_path / "s"
    tokenize_to_shards(TEXTS, out, sp_tok, progress=False)
    return out


def test_truncated_bin_is_refused(built):
    b = built / "shard_00000.bin"
    b.write_bytes(b.read_bytes()[:-2])
    with pytest.raises(ShardError, match=r"shard_00000\.bin: \d+ bytes, but shard_00000\.idx describes .*truncated"):
        ShardReader(built)


def test_truncated_index_is_refused(built):
    i = built / "shard_00000.idx"
    i.write_bytes(i.read_bytes()[:-8])
    with pytest.raises(ShardError, match=r"shard_00000\.idx: .*truncated or corrupt index"):
        ShardReader(built)


def test_corrupt_index_is_refused(built):
    i = built / "shard_00000.idx"
    raw = bytearray(i.read_bytes())
    raw[0:9] = b"NOTANIDX!"
    i.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=r"shard_00000\.idx: not a Megatron MMIDIDX index"):
        ShardReader(built)
    # Swap two sequence sizes: same file size and same total, but pointers no longer match.
    raw[0:9] = b"MMIDIDX\x00\x00"
    n0, n1 = struct.unpack_from("<2i", raw, 34)
    struct.pack_into("<2i", raw, 34, n1, n0)
    i.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=r"shard_00000\.idx: corrupt index \(sequence pointers"):
        ShardReader(built, verify="none")


def test_index_checksum_catches_consistent_rewrite(built):
    """A structurally valid index with the same counts and size (documents split elsewhere) fails its sha256."""
    from remix_ds.data.shards import encode_index

    i = built / "shard_00000.idx"
    lengths = ShardReader(built).doc_lengths.copy()
    lengths[0] += 1
    lengths[1] -= 1
    i.write_bytes(encode_index(lengths, np.uint16))
    assert ShardReader(built, verify="none").doc_lengths.tolist() == lengths.tolist()  # consistent on its own
    with pytest.raises(ShardError, match=r"shard_00000\.idx: sha256 does not match manifest\.json"):
        ShardReader(built)
    # A different document count is refused even without hashing.
    i.write_bytes(encode_index(np.concatenate([[lengths[0] + lengths[1]], lengths[2:]]), np.uint16))
    with pytest.raises(ShardError, match=r"shard_00000\.bin: holds \d+ tokens in 4 documents, the manifest says"):
        ShardReader(built, verify="none")


def test_corrupt_bin_detected_by_full_verify(built):
    b = built / "shard_00000.bin"
    raw = bytearray(b.read_bytes())
    raw[0] ^= 0xFF
    b.write_bytes(bytes(raw))
    # The default does not hash the (possibly huge) .bin, but this flip leaves the recorded id range.
    with pytest.raises(ShardError, match=r"shard_00000\.bin: holds token id \d+ outside the recorded range"):
        ShardReader(built)
    with pytest.raises(ShardError, match=r"shard_00000\.bin: sha256 does not match manifest\.json"):
        ShardReader(built, verify="full")


def test_wrong_tokenizer_is_refused(built):
    bpe = bpe_tokenizer()
    with pytest.raises(ShardError, match=r"manifest\.json: shards were built with tokenizer .* but the tokenizer in use"):
        ShardReader(built, bpe)


def test_missing_manifest_is_refused(built):
    (built / "manifest.json").unlink()
    with pytest.raises(ShardError, match=r"s/manifest\.json: missing"):
        ShardReader(built)


def test_empty_input_is_refused_and_leaves_nothing(tmp_path, sp_tok):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    for name in ("empty.jsonl", "blank.jsonl"):
        out = tmp_path / f"out-{name}"
        with pytest.raises(ShardError, match="no documents to write"):
            build_shards([str(tmp_path / name)], out, sp_tok, progress=False)
        assert list(out.iterdir()) == []


def test_failed_build_leaves_no_shard_files(tmp_path, sp_tok):
    lines = [json.dumps({"text": f"{TEXTS[i % 5]} {i}"}) for i in range(50)] + ["{not json"]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(ShardError, match=r"bad\.jsonl:51: invalid JSON"):
        build_shards([str(tmp_path / "bad.jsonl")], out, sp_tok, max_tokens_per_shard=50, progress=False)
    assert list(out.iterdir()) == []  # finished shards, temp files and manifest all gone


def test_missing_field_names_file_and_line(tmp_path, sp_tok):
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "a b"}) + "\n" + json.dumps({"body": "c"}) + "\n")
    with pytest.raises(ShardError, match=r"x\.jsonl:2: no field 'text' \(fields: body\)"):
        build_shards([str(tmp_path / "x.jsonl")], tmp_path / "o", sp_tok, progress=False)
    with pytest.raises(ShardError, match=r"nope\.jsonl: input not found"):
        build_shards([str(tmp_path / "nope.jsonl")], tmp_path / "o", sp_tok, progress=False)


def test_existing_build_needs_overwrite(built, sp_tok):
    with pytest.raises(ShardError, match="already exists; pass --overwrite"):
        tokenize_to_shards(TEXTS[:2], built, sp_tok, progress=False)
    m = tokenize_to_shards(TEXTS[:2], built, sp_tok, progress=False, overwrite=True)
    assert m["num_documents"] == 2 and ShardReader(built, sp_tok, verify="full").num_documents == 2


def test_encode_documents_appends_eos(sp_tok):
    flat, lengths = encode_documents(sp_tok, ["one two", "three"], eos_id=sp_tok.eos_token_id)
    a, b = sp_tok("one two", add_special_tokens=False)["input_ids"], sp_tok("three", add_special_tokens=False)["input_ids"]
    assert flat.tolist() == a + [2] + b + [2] and lengths.tolist() == [len(a) + 1, len(b) + 1]
