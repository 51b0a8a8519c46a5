"""`loss_mode: surprise` masks: supervise only the answer tokens the base model does not already predict.

A mask file holds, for every training example of a stage (the `answer`-mode tokenization of
`data.dataset`'s train split, in file order), one boolean per `answer`-mode supervised position
(answer tokens and EOS, in order): True where that token stays supervised. The entry point
(`remix_ds.eval.surprise.prepare_surprise_mask`) computes it once with the frozen base model's
fused teacher-forced pass and caches it beside the data (`mask_path`); the stage stream applies it
with `apply_mask`. Each `surprise`-mode replay entry has its own mask (`ReplayConfig.surprise_mask`,
over its rows as `mixing.replay_pool` builds them); mixed rows (generic, random) are not masked.

File format (`.npz`): `ids` (example ids), `offsets` (int64, start of each example's run in
`keep`, plus the total), `keep` (bool), `meta` (a JSON string: key inputs, supervised fraction).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from remix_ds.cachedir import cache_root, open_atomic
from remix_ds.data.config import LOCAL_SUFFIXES
from remix_ds.data.records import DataError
from remix_ds.data.tokenize import IGNORE, TokenizedExample


def mask_path(dataset: str, key: dict) -> Path:
    """Where the mask of ``dataset`` under ``key`` (base model, threshold, ...) is cached: beside a
    local data file (``NAME.surprise-HASH.npz``), else under ``$REMIX_DS_CACHE/surprise/``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(dataset)
    if path.suffix.lower() in LOCAL_SUFFIXES and path.is_file():
        return path.with_name(f"{path.stem}.surprise-{digest}.npz")
    safe = dataset.replace("/", "_").replace(":", "_")
    return cache_root() / "surprise" / f"{safe}.surprise-{digest}.npz"


def write_mask(path: Path, ids: Sequence[str], keeps: Sequence[np.ndarray], meta: dict) -> Path:
    """Write atomically (ranks computing the same mask at once: the last identical rename wins)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keeps])]).astype(np.int64)
    keep = np.concatenate(keeps).astype(bool) if keeps else np.zeros(0, bool)
    with open_atomic(path, "wb") as f:
        np.savez(f, ids=np.asarray(list(ids), dtype=str), offsets=offsets, keep=keep, meta=np.asarray(json.dumps(meta)))
    return path


def read_mask(path: str | Path) -> tuple[list[str], list[np.ndarray], dict]:
    """(ids, per-example keep arrays, meta) of a mask file."""
    try:
        with np.load(path) as z:
            ids, off, keep, meta = list(z["ids"]), z["offsets"], z["keep"], json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not a surprise mask file ({e})") from None
    return [str(i) for i in ids], [keep[off[i]:off[i + 1]] for i in range(len(ids))], meta


def apply_mask(examples: Sequence[TokenizedExample], path: str | Path) -> list[TokenizedExample]:
    """``examples`` (answer-mode tokens) with labels kept only where the mask says so."""
    ids, keeps, _ = read_mask(path)
    if [e.id for e in examples] != ids:
        raise DataError(f"{path}: the mask was computed for other examples ({len(ids)} ids) than the stage's "
                        f"{len(examples)}; delete it to recompute")
    out = []
    for ex, keep in zip(examples, keeps):
        sup = np.flatnonzero(ex.labels != IGNORE)
        if len(sup) != len(keep):
            raise DataError(f"{path}: example {ex.id!r} has {len(sup)} supervised tokens, the mask {len(keep)}")
        labels = ex.labels.copy()
        labels[sup[~keep]] = IGNORE
        out.append(TokenizedExample(ex.id, ex.input_ids, labels))
    return out
