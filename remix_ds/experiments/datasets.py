"""Every D_A / D_B of a grid is written once to `GRID/data/<name>.jsonl` (its train split).

Why materialize: stage 2 trains on D_B while scoring D_A, and two generated `kvr` sets (or a
hub set with a subsample) would otherwise need their generator settings repeated in every
stage's `eval.sources`. A file per set makes each set's identity its file: the eval label is the
file stem (= the spec's `name`), the rows are exactly what was trained, and a rerun on another
machine reads the same rows. Rows use the generic local schema (`id`, `prompt`, `answer`,
`aliases` or `messages`), so `source` = `name`, which also picks the matcher (`webqa`: containment).

`key_spans` training needs marked spans. A set whose rows already carry key-span markers
(``[[...]]``, `data.key_span_delimiters`) is *marked data*: `<name>.spans.jsonl` is the rows as
given (never wrapped again), `<name>.clean.jsonl` the same rows without markers (what `answer`,
`all` and `surprise` train on), and `<name>.jsonl`, which the evaluator reads, keeps the markers
(the evaluator strips them and reports the span metric next to EM). A set without markers gets the
old contrast instead, said in one log line: `<name>.spans.jsonl` wraps every whole answer
(assistant turn) in the delimiters, so key_spans supervises exactly the answer tokens but, unlike
`answer` mode, not the EOS ("answer without EOS", the "cannot stop" contrast).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from remix_ds.cachedir import open_atomic
from remix_ds.data.config import GENERATED_DATASETS, DataConfig, SourceConfig, check_filtered
from remix_ds.data.datasets import REGISTRY, generate_kvr, load_examples
from remix_ds.data.prepare import MANIFEST, read_manifest
from remix_ds.data.formats import completion_prompt
from remix_ds.data.generic import open_generic_corpus
from remix_ds.data.records import Example, read_rows
from remix_ds.data.tokenize import strip_markers
from remix_ds.experiments.config import DatasetSpec

# Document slots of the built-in corpus, in one seeded order: held-out preservation passages
# first, then generic D_B sets, then stage-0 passages, so none of them overlap.
PRESERVE_SLOTS = 512
ELIGIBLE_WORDS = 64
"""A document is eligible for any slot when it has at least this many words (one criterion for all
slots, so the slots never overlap)."""
_ORDER_SEED = 0x9E11


def _example_row(ex: Example) -> dict:
    row: dict = {"id": ex.id}
    if ex.messages is not None:
        row["messages"] = ex.messages
    else:
        row.update(prompt=ex.prompt, answer=ex.answer)
    if ex.aliases:
        row["aliases"] = list(ex.aliases)
    return row


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def corpus_documents(tokenizer, data: DataConfig, min_words: int, n: int, skip: int = 0) -> list[list[str]]:
    """`n` eligible documents (as word lists) of the generic corpus, after the first `skip` eligible
    ones, in a fixed seeded order (see PRESERVE_SLOTS); `min_words` (<= ELIGIBLE_WORDS) is what the
    caller needs."""
    if min_words > ELIGIBLE_WORDS:
        raise ValueError(f"generic passages are limited to {ELIGIBLE_WORDS} words, {min_words} requested")
    reader = open_generic_corpus(data, tokenizer)
    order = np.random.default_rng(_ORDER_SEED).permutation(reader.num_documents)
    out, seen = [], 0
    for start in range(0, len(order), 256):
        docs = [reader.document(int(i)) for i in order[start : start + 256]]
        for text in tokenizer.batch_decode(docs, skip_special_tokens=True):
            words = text.split()
            if len(words) < ELIGIBLE_WORDS:
                continue
            seen += 1
            if seen > skip:
                out.append(words)
                if len(out) == n:
                    return out
    raise ValueError(f"the generic corpus has only {seen} documents of >= {ELIGIBLE_WORDS} words; need {skip + n}")


def generic_offset(spec_index: int, n: int) -> int:
    """Eligible-document offset of the spec_index-th generic D_B set (after the preservation slots)."""
    return PRESERVE_SLOTS + spec_index * n


def spec_examples(spec: DatasetSpec, index: int, data: DataConfig, tokenizer) -> list[Example]:
    """The train split of one grid dataset."""
    if spec.dataset == "kvr":
        n = spec.num_examples or 2000
        kvr = spec.kvr or replace(data.kvr, seed=data.kvr.seed + index)
        kvr = replace(kvr, num_pairs=n + spec.heldout_size)
        examples = generate_kvr(kvr)
        src = SourceConfig(dataset="kvr", num_examples=n, heldout_size=spec.heldout_size, subsample_seed=spec.subsample_seed)
        return load_examples(src, kvr) if spec.heldout_size else examples
    if spec.dataset == "generic":
        n = spec.num_examples or 64
        need = spec.prompt_words + spec.answer_words
        docs = corpus_documents(tokenizer, data, need, n, skip=generic_offset(index, n))
        return [Example(id=f"{spec.name}-{i}", source=spec.name,
                        prompt=completion_prompt(w[: spec.prompt_words], data.mix.instruction),
                        answer=" ".join(w[spec.prompt_words : need]))
                for i, w in enumerate(docs)]
    src = SourceConfig(dataset=spec.dataset, data_files=spec.data_files, num_examples=spec.num_examples,
                       heldout_size=spec.heldout_size, subsample_seed=spec.subsample_seed)
    return load_examples(src, data.kvr)


def _mark(ex: Example, delimiters: tuple[str, str]) -> dict:
    o, c = delimiters
    row = _example_row(ex)
    if ex.messages is not None:
        row["messages"] = [dict(m, content=f"{o}{m['content']}{c}") if m["role"] == "assistant" else m for m in ex.messages]
    else:
        row["answer"] = f"{o}{ex.answer}{c}"
    return row


def is_marked(ex: Example, delimiters: tuple[str, str]) -> bool:
    """Does the example carry key-span markers anywhere (prompt, answer or any turn)?"""
    texts = [m["content"] for m in ex.messages] if ex.messages is not None else [ex.prompt or "", ex.answer or ""]
    return any(delimiters[0] in t for t in texts)


def _clean(ex: Example, delimiters: tuple[str, str]) -> dict:
    where = f"example {ex.id!r}"
    row = _example_row(ex)
    if ex.messages is not None:
        row["messages"] = [dict(m, content=strip_markers(m["content"], delimiters, where)) for m in ex.messages]
    else:
        row.update(prompt=strip_markers(ex.prompt, delimiters, where), answer=strip_markers(ex.answer, delimiters, where))
    if ex.aliases:
        row["aliases"] = [strip_markers(a, delimiters, where) for a in ex.aliases]
    return row


def clean_path(path: Path) -> Path:
    """`<name>.clean.jsonl` beside `<name>.jsonl` (present only for marked data)."""
    return path.with_name(path.name.removesuffix(".jsonl") + ".clean.jsonl")


def resolve_spec(spec: DatasetSpec, data_dir: str | None, stage_a: bool, require_filtered: bool) -> DatasetSpec:
    """The spec as trained: a registered set without data_files reads its prepared file in `data_dir`
    (for D_A the yet-to-learn file when filter-known recorded one); `require_filtered` D_A sets drawn
    from a source must be yet-to-learn files (generated kvr/generic are exempt). Raises DataError/ConfigError."""
    from remix_ds.data.records import DataError

    if spec.data_files and data_dir and spec.dataset in REGISTRY:
        # prepare-data builds a data_files set from that local copy: train on the prepared rows when it did
        entry = read_manifest(Path(data_dir)).get("sets", {}).get(spec.dataset) if (Path(data_dir) / MANIFEST).is_file() else None
        if entry and entry.get("source", {}).get("path") == str(spec.data_files):
            spec = replace(spec, data_files=None)
    if data_dir and spec.dataset in REGISTRY and spec.dataset not in GENERATED_DATASETS and not spec.data_files:
        entry = read_manifest(Path(data_dir)).get("sets", {}).get(spec.dataset)
        if entry is None:
            raise DataError(f"{spec.name}: {spec.dataset!r} is not in {Path(data_dir) / MANIFEST}; "
                            f"run `remix-ds prepare-data CONFIG --out {data_dir}`")
        filtered = entry.get("filtered")
        if stage_a and filtered:
            spec = replace(spec, dataset=str(Path(data_dir) / filtered["files"]["unknown"]), data_files=None)
        else:
            spec = replace(spec, data_files=str(Path(data_dir) / entry["file"]))
    if stage_a and require_filtered and spec.dataset not in GENERATED_DATASETS:
        hint = (f" (run `remix-ds filter-known MODEL --data {spec.dataset}={Path(data_dir) / (spec.dataset + '.jsonl')} "
                f"--out {Path(data_dir) / 'filtered'}`)") if data_dir and spec.dataset in REGISTRY else ""
        if spec.dataset in REGISTRY:
            raise DataError(f"{spec.name}: require_filtered is set but {spec.dataset!r} has no yet-to-learn file{hint}")
        check_filtered(spec.dataset, f"data_a[{spec.name}].dataset")
    return spec


def materialize(specs: list[tuple[int, DatasetSpec]], data: DataConfig, tokenizer, out: Path) -> dict[str, Path]:
    """Write `out/<name>.jsonl` (+ `.spans.jsonl`, + `.clean.jsonl` for marked data) for every spec
    (skipped when present). name -> path."""
    paths = {}
    for index, spec in specs:
        path = out / f"{spec.name}.jsonl"
        if not path.is_file():
            examples = spec_examples(spec, index, data, tokenizer)
            delims = data.key_span_delimiters
            if any(is_marked(e, delims) for e in examples):
                write_jsonl(clean_path(path), (_clean(e, delims) for e in examples))
                write_jsonl(out / f"{spec.name}.spans.jsonl", (_example_row(e) for e in examples))
            else:
                write_jsonl(out / f"{spec.name}.spans.jsonl", (_mark(e, delims) for e in examples))
            write_jsonl(path, (_example_row(e) for e in examples))  # last: its presence means both are complete
        paths[spec.name] = path
    return paths


def stage0_passages(tokenizer, data: DataConfig, n: int, words: int, skip: int, out: Path) -> Path:
    """Generic-corpus passages for stage-0 pretraining as prompt/answer rows (the answer half is the
    second half of the passage; stage 0 trains with loss_mode=all, so every token counts)."""
    path = out / "stage0.jsonl"
    if not path.is_file():
        docs = corpus_documents(tokenizer, data, words, n, skip=skip)
        half = words // 2
        write_jsonl(path, ({"id": f"stage0-{i}", "prompt": " ".join(w[:half]), "answer": " ".join(w[half:words])}
                           for i, w in enumerate(docs)))
    return path


def preservation_texts(tokenizer, data: DataConfig, source: str, n: int, min_words: int) -> list[str]:
    """Held-out generic passages: the first `n` preservation slots of the built-in corpus, or a file's `text` rows."""
    if source == "builtin":
        if n > PRESERVE_SLOTS:
            raise ValueError(f"analysis.preservation_n must be <= {PRESERVE_SLOTS} for the built-in corpus")
        return [" ".join(w) for w in corpus_documents(tokenizer, data, min_words, n)]
    rows = read_rows(source)
    texts = [str(r["text"]) for r in rows if len(str(r.get("text", "")).split()) >= min_words]
    if not texts:
        raise ValueError(f"{source}: no rows with a `text` field of >= {min_words} words")
    return texts[:n]
