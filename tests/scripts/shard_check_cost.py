"""Cost of the default document-end check (ShardReader verify='index') against verify='full''s sha256
on one synthetic shard, with the shard's pages dropped from the page cache before each of 5 tries.

    python tests/scripts/shard_check_cost.py OUT_DIR [TOKENS, default 2.5e8 = 500 MB uint16]

Prints JSON: the .bin size, the documents, and the median cold seconds of each check.
"""
import json, os, sys, time, statistics
from pathlib import Path
import numpy as np
from remix_ds.data import shards as S

out = Path(sys.argv[1]); n_tok = int(float(sys.argv[2] if len(sys.argv) > 2 else 2.5e8))
if not (out / "manifest.json").is_file():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 2000, size=n_tok // 1000)
    def batches():
        for i in range(0, len(lengths), 4096):
            ls = lengths[i:i + 4096]
            flat = rng.integers(3, 30000, size=int(ls.sum())).astype(np.int64)
            ends = np.cumsum(ls) - 1
            flat[ends] = 2
            yield flat, ls
    fp = {"name": "synthetic", "vocab_hash": "x", "eos_id": 2, "vocab_size": 32000}
    S.write_shard_dir(batches(), out, fp, max_tokens_per_shard=1 << 40)
def drop(p):
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
b = next(out.glob("*.bin")); size = b.stat().st_size
res = {"bin_bytes": size}
for name, fn in [("ends_check", lambda r: S._check_document_ends(r._shards[0], 2)),
                 ("sha256_full", lambda r: S.file_sha256(b))]:
    ts = []
    for _ in range(5):
        r = S.ShardReader(out, verify="none")
        drop(b)
        t = time.perf_counter(); fn(r); ts.append(time.perf_counter() - t)
    res[name + "_cold_s_median"] = statistics.median(ts); res[name + "_all"] = ts
r = S.ShardReader(out, verify="none")
res["documents"] = r.num_documents
print(json.dumps(res, indent=1))
