"""`remix-ds prepare-data`: every D_A / D_B set a grid names, built once into DATA_DIR from public sources.

    remix-ds prepare-data [CONFIG ...] --out DATA_DIR [--from NAME=PATH ...] [--tokenizer T]
                          [--select config|first|seeded] [--generic NAME ...]

Per set (a registered dataset; generated `kvr` and `generic` sets need no download): rows are
streamed from the source (`remix_ds.data.sources`), converted by the registry's converter
(rows it rejects are *filtered*), tokenized as training will tokenize them (rows longer than
`run.data.max_seq_len` are *dropped as too long*), and the first `heldout_size + num_examples`
that fit are *kept* (`first`, as the reference takes them) or a seeded sample of them from the
first `prefix_rows` loaded rows (`seeded`). Kept rows are written as DATA_DIR/NAME.jsonl with
exactly the fields the loader reads, so `data_files: DATA_DIR/NAME.jsonl` (or the experiment's
`data_dir: DATA_DIR`) trains on them through the same converter.

DATA_DIR/manifest.json records per set the source (hub id/config/split/revision, or the release
path and its sha256), the selection, the counts at each step and the sha256 of the written file.
A set whose manifest entry matches (same source, selection, tokenizer, max_seq_len, and the file
still has its sha256) is skipped, so an interrupted run resumes. Generic corpora for mixing
(`--generic knowledge-pile`, or a `run.data.mix.generic_corpus` of DATA_DIR/generic/NAME) are
streamed with a document cap into Megatron shards through `remix_ds.data.shard_builder`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from remix_ds.cachedir import open_atomic, write_text_atomic
from remix_ds.data import sources
from remix_ds.data.datasets import REGISTRY
from remix_ds.data.records import DataError, Example
from remix_ds.data.tokenize import encode_prompt_answer

MANIFEST = "manifest.json"
GENERATED = ("kvr", "generic")
Select = Literal["first", "seeded"]


@dataclass(frozen=True)
class SetPlan:
    """One set to build: which dataset, how many rows, and how they are picked."""

    dataset: str
    take: int
    """Rows to keep (0: every row that fits)."""
    select: Select = "first"
    seed: int = 0
    prefix_rows: int = 20000
    """`seeded`: the sample is drawn from the rows that fit among the first this-many loaded rows."""
    data_files: str | None = None
    """A grid's `data_files` for this set: its local copy (a hub repository folder or one data file), read
    instead of the hub."""


def plan_sets(specs: Iterable, select: str = "config", prefix_rows: int = 20000, candidates: dict[str, int] | None = None
              ) -> list[SetPlan]:
    """One plan per registered dataset named by `specs` (DatasetSpec-like: dataset, num_examples,
    heldout_size, subsample_seed, data_files); a dataset named twice keeps the larger row count. A
    spec's `data_files` is read as the set's local copy.

    `candidates` {dataset: N}: sets that filter-known will filter (require_filtered D_A) keep the
    first N rows that fit (0: all), so that enough yet-to-learn facts remain.
    """
    plans: dict[str, SetPlan] = {}
    candidates = candidates or {}
    for spec in specs:
        if spec.dataset in GENERATED or spec.dataset not in REGISTRY:
            continue
        data_files = getattr(spec, "data_files", None)
        take = spec.heldout_size + spec.num_examples if spec.num_examples else 0
        mode = select if select != "config" else ("first" if spec.subsample_seed is None else "seeded")
        if spec.dataset in candidates:
            take, mode = candidates[spec.dataset], "first"
        seed = spec.subsample_seed or 0
        prefix = max(prefix_rows, 10 * take)
        old = plans.get(spec.dataset)
        if old is not None and (old.data_files or None) != (data_files or None):
            raise DataError(f"{spec.dataset}: the configs give it two sources ({old.data_files or 'the hub'} and "
                            f"{data_files or 'the hub'}); one DATA_DIR holds one {spec.dataset}.jsonl")
        if old is None or (take == 0 or (old.take and take > old.take)):
            plans[spec.dataset] = SetPlan(spec.dataset, take, mode, seed, prefix, data_files or None)
    return list(plans.values())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_release(path: Path, files: list[Path] | None = None) -> str:
    """sha256 of a release zip or data file, or of a folder's (relative path, file sha256) list (`files`: only
    those, e.g. the data files a local hub copy is read from)."""
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise sources.SourceMissing(f"--from path {path} does not exist")
    h = hashlib.sha256()
    for p in sorted(files if files is not None else [q for q in path.rglob("*") if q.is_file()]):
        h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        return {"sets": {}, "generic": {}}
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed manifest ({e.msg} at line {e.lineno}); delete it to rebuild") from None
    m.setdefault("sets", {})
    m.setdefault("generic", {})
    return m


def write_manifest(out: Path, manifest: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _lengths(examples: list[Example], tokenizer, prompt_format: str) -> list[int]:
    return [len(pa.prompt_ids) + len(pa.answer_ids) for pa in encode_prompt_answer(examples, tokenizer, prompt_format)]


def select_rows(plan: SetPlan, rows: Iterable[dict], tokenizer, max_seq_len: int, prompt_format: str = "plain",
                bar=None, chunk: int = 256) -> tuple[list[dict], dict]:
    """(kept projected rows, counts): the streaming core of one set; stops reading as soon as it can."""
    info = REGISTRY[plan.dataset]
    counts = {"loaded": 0, "filtered": 0, "too_long": 0, "fit": 0, "kept": 0}
    fit: list[dict] = []
    limit_rows = plan.prefix_rows if plan.select == "seeded" and plan.take else 0
    pending: list[tuple[dict, Example | None]] = []

    def flush() -> bool:
        """Examine the pending rows in order (counts loaded = filtered + too_long + fit); True: have enough."""
        converted = [ex for _, ex in pending if ex is not None]
        lens = iter(_lengths(converted, tokenizer, prompt_format) if converted else [])
        for row, ex in pending:
            counts["loaded"] += 1
            if ex is None:
                counts["filtered"] += 1
            elif next(lens) > max_seq_len:
                counts["too_long"] += 1
            else:
                fit.append(row)
                if plan.select == "first" and plan.take and len(fit) == plan.take:
                    return True
        pending.clear()
        return False

    it = iter(rows)
    done = False
    for i, row in enumerate(it):
        if bar is not None:
            bar.update(1)
        kept_row = sources.project(plan.dataset, row)
        where = row.get(sources.WHERE) or f"source row {i}"  # file:line / archive:member:line where known
        pending.append((kept_row, info.convert(kept_row, i, f"{plan.dataset} ({where})")))
        if len(pending) >= chunk and flush():
            done = True
            break
        if limit_rows and i + 1 >= limit_rows:
            break
    if not done:
        flush()
    close = getattr(it, "close", None)
    if close is not None:
        close()  # stop the stream (and its download) now
    counts["fit"] = len(fit)
    if plan.select == "seeded" and plan.take and len(fit) > plan.take:
        pick = np.sort(np.random.default_rng(plan.seed).choice(len(fit), size=plan.take, replace=False))
        fit = [fit[j] for j in pick]
    counts["kept"] = len(fit)
    return fit, counts


def _key(entry: dict) -> str:
    keyed = {k: entry[k] for k in ("dataset", "source", "selection", "tokenizer", "max_seq_len", "prompt_format", "fields")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def prepare_set(plan: SetPlan, out: Path, tokenizer, *, tokenizer_name: str, max_seq_len: int, prompt_format: str = "plain",
                release: str | None = None, manifest: dict | None = None, progress: bool = True) -> tuple[dict, bool]:
    """Build DATA_DIR/<dataset>.jsonl for one plan; returns (manifest entry, skipped)."""
    from tqdm.auto import tqdm

    source = sources.describe(plan.dataset, release)
    if release is not None:
        local = sources.local_files(plan.dataset, release) if source["kind"] == "local" else None
        source["sha256"] = sha256_release(Path(release), local)
    entry = {
        "dataset": plan.dataset, "source": source, "tokenizer": tokenizer_name, "max_seq_len": max_seq_len,
        "prompt_format": prompt_format, "fields": list(sources.SOURCES[plan.dataset].fields),
        "selection": {"mode": plan.select, "take": plan.take, "seed": plan.seed if plan.select == "seeded" else None,
                      "prefix_rows": plan.prefix_rows if plan.select == "seeded" else None},
        "file": f"{plan.dataset}.jsonl",
    }
    entry["key"] = _key(entry)
    path = out / entry["file"]
    old = (manifest or {}).get("sets", {}).get(plan.dataset)
    if old and old.get("key") == entry["key"] and path.is_file() and sha256_file(path) == old.get("sha256"):
        return old, True
    rows = sources.rows(plan.dataset, release)
    bar = tqdm(desc=plan.dataset, unit="row", disable=not progress, dynamic_ncols=True,
               total=(plan.prefix_rows if plan.select == "seeded" else None) or None)
    try:
        kept, counts = select_rows(plan, rows, tokenizer, max_seq_len, prompt_format, bar)
    finally:
        bar.close()
    if not kept:
        raise DataError(f"{plan.dataset}: no row survived ({counts}); check the source and data.max_seq_len")
    out.mkdir(parents=True, exist_ok=True)
    with open_atomic(path) as f:
        for r in kept:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    entry.update(counts=counts, sha256=sha256_file(path), short=bool(plan.take and counts["kept"] < plan.take))
    return entry, False


def prepare_generic(name: str, out: Path, tokenizer, *, tokenizer_name: str, max_documents: int = 20000,
                    min_words: int = 100, manifest: dict | None = None, progress: bool = True, workers: int = 1,
                    local: str | None = None) -> tuple[dict, bool]:
    """DATA_DIR/generic/NAME: Megatron shards of the first `max_documents` documents with >= `min_words` words,
    streamed from the hub, or read from `local` (a local copy of the hub repository, or one of its files)."""
    from remix_ds.data.shard_builder import build_shards
    from remix_ds.errors import RemixError

    if name not in sources.GENERIC:
        raise DataError(f"unknown generic corpus {name!r}; known: {', '.join(sorted(sources.GENERIC))}")
    hub_id, text_field = sources.GENERIC[name]
    entry = {"hub_id": hub_id, "split": "train", "text_field": text_field, "max_documents": max_documents,
             "min_words": min_words, "tokenizer": tokenizer_name, "dir": f"generic/{name}"}
    files = None
    if local is not None:
        files = generic_local_files(name, Path(local))
        entry["local"] = {"path": str(local), "sha256": sha256_release(Path(local), files if Path(local).is_dir() else None)}
    key = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
    folder = out / entry["dir"]
    old = (manifest or {}).get("generic", {}).get(name)
    if old and old.get("key") == key and (folder / "manifest.json").is_file():
        return old, True
    try:
        shards = build_shards([str(f) for f in files] if files is not None else [f"hf:{hub_id}"], folder, tokenizer,
                              tokenizer_name=tokenizer_name, text_field=text_field, split="train", workers=workers,
                              overwrite=True, progress=progress, max_documents=max_documents, min_words=min_words)
    except RemixError:
        raise
    except Exception as e:  # offline, gated, removed: one line with what to download
        if local is not None:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"generic:{name}: cannot stream {hub_id} from the hub ({type(e).__name__}: {first[:200]}); to "
                        f"build it offline: huggingface-cli download --repo-type dataset {hub_id} --local-dir DIR, then "
                        f"--from {name}=DIR") from None
    entry.update(key=key, counts={"loaded": shards.get("documents_read"), "too_short": shards.get("skipped_short", 0),
                                  "kept": shards["num_documents"]},
                 num_tokens=shards["num_tokens"], sha256=sha256_file(folder / "manifest.json"))
    return entry, False


def generic_local_files(name: str, path: Path) -> list[Path]:
    """The data files of a generic corpus's local copy: `path` itself, or a folder's .jsonl/.json/.parquet files
    (optionally .gz; in natural order; README.md and huggingface-cli's .cache/ left out)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise sources.SourceMissing(f"generic:{name}: --from path {path} does not exist")
    suffixes = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
    rels = [q.relative_to(path).as_posix() for q in path.rglob("*") if q.is_file()]
    rels = sorted((r for r in rels if not r.startswith(".cache/") and r.lower().endswith(suffixes)),
                  key=lambda r: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", r)])
    if not rels:
        hub_id = sources.GENERIC[name][0]
        raise sources.SourceMissing(f"generic:{name}: {path} holds no .jsonl/.json/.parquet files (expected a local copy "
                                    f"of {hub_id}: huggingface-cli download --repo-type dataset {hub_id} --local-dir DIR)")
    return [path / r for r in rels]


def generic_names(data_cfgs: Iterable) -> list[str]:
    """Generic corpora a config points at as .../generic/NAME (what prepare-data should build)."""
    names = []
    for d in data_cfgs:
        p = Path(d.mix.generic_corpus)
        if p.parent.name == "generic" and p.name in sources.GENERIC and p.name not in names:
            names.append(p.name)
    return names


def summary_table(manifest: dict, skipped: set[str]) -> str:
    lines = [f"{'set':<14}{'status':<9}{'loaded':>9}{'filtered':>10}{'too long':>10}{'kept':>8}  file",
             "-" * 78]
    for name, e in sorted(manifest.get("sets", {}).items()):
        c = e.get("counts", {})
        status = "skipped" if name in skipped else ("SHORT" if e.get("short") else "built")
        lines.append(f"{name:<14}{status:<9}{c.get('loaded', 0):>9,}{c.get('filtered', 0):>10,}{c.get('too_long', 0):>10,}"
                     f"{c.get('kept', 0):>8,}  {e['file']}")
    for name, e in sorted(manifest.get("generic", {}).items()):
        c = e.get("counts", {})
        status = "skipped" if f"generic:{name}" in skipped else "built"
        lines.append(f"{'g:' + name:<14}{status:<9}{c.get('loaded') or 0:>9,}{c.get('too_short', 0):>10,}{'':>10}"
                     f"{c.get('kept', 0):>8,}  {e['dir']}")
    return "\n".join(lines)


def manifest_sha256(data_dir: str | Path) -> str:
    """What a run records to say which prepared data it used."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: run `remix-ds prepare-data CONFIG --out {data_dir}` first")
    return sha256_file(path)
