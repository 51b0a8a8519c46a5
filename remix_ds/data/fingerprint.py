"""What set of examples was scored or trained on, as a small JSON-able record.

``data_fingerprint(name, examples, params)`` -> ``{"dataset", "params", "count", "ids_sha256",
"content_sha256"}``: the dataset name, the parameters that produced the set (source settings,
split, KVR generator), how many examples, the sha256 of the example ids sorted and joined with
newlines (so the same set in another order has the same fingerprint), and the same over each
example's id, prompt, answer and messages. Ids alone do not name a set: every KVR variant numbers
its pairs ``kvr-0``, ``kvr-1``, ..., so two variants of one size share their id hash. Eval, experiments, ``filter-known``, preservation
checks and the forgetting tools all record this, so two outputs can be checked to be about the
same set with :func:`same_set`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict

from remix_ds.data.config import KVRConfig, SourceConfig
from remix_ds.data.records import Example


def ids_sha256(ids: Iterable[str]) -> str:
    """sha256 hex digest of the ids, sorted, joined by newlines."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode("utf-8")).hexdigest()


def content_sha256(examples: Iterable[Example]) -> str:
    """sha256 over each example's (id, prompt, answer, messages), sorted by id, one JSON line each."""
    lines = sorted(json.dumps([ex.id, ex.prompt, ex.answer, ex.messages], ensure_ascii=False) for ex in examples)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def source_params(source: SourceConfig, kvr: KVRConfig | None = None, split: str = "train") -> dict:
    """The parameters that decide which examples a source yields (the KVR generator's for ``kvr``)."""
    params = {"split": split, "data_files": source.data_files, "num_examples": source.num_examples,
              "heldout_size": source.heldout_size, "subsample_seed": source.subsample_seed}
    if source.dataset == "kvr":
        params["kvr"] = asdict(kvr or KVRConfig())
    return params


def data_fingerprint(name: str, examples: Iterable[Example | str], params: dict | None = None) -> dict:
    """Fingerprint of a set of examples (Example records, or only their ids: then ``content_sha256``
    is None); see the module docstring."""
    examples = list(examples)
    ids = [ex if isinstance(ex, str) else ex.id for ex in examples]
    content = None if any(isinstance(ex, str) for ex in examples) else content_sha256(examples)
    return {"dataset": name, "params": dict(params or {}), "count": len(ids), "ids_sha256": ids_sha256(ids),
            "content_sha256": content}


def short(fp: dict) -> str:
    """One-token form for per-row records and log lines: ``NAME:COUNT:first 12 hex digits`` (of the
    content hash when known, else of the id hash)."""
    return f"{fp['dataset']}:{fp['count']}:{(fp.get('content_sha256') or fp['ids_sha256'])[:12]}"


def same_set(a: dict, b: dict) -> bool:
    """Whether two fingerprints describe the same examples: count and id hash equal, and the content
    hashes too where both have one (names and parameters may differ)."""
    if a["count"] != b["count"] or a["ids_sha256"] != b["ids_sha256"]:
        return False
    ca, cb = a.get("content_sha256"), b.get("content_sha256")
    return ca is None or cb is None or ca == cb
