"""Task families of the paper's study (tasks[].family): a FLAN task, a Tulu-v2 subset or a Dolly
category becomes one matrix row, materialized once as a local jsonl the loaders read like any file.

Sources (field names from the dataset cards; streamed, nothing else is downloaded):

    family  hub dataset (train split)           subset field   record
    dolly   databricks/databricks-dolly-15k     category       prompt = instruction (+ "\\n\\n" + context), answer = response
    tulu    allenai/tulu-v2-sft-mixture         dataset        messages (role, content), id = the row's id
    flan    sordonia/flan-10k-flat              task_name      prompt = source, answer = target

``tasks[].data_files``: a local copy of the family's rows (.jsonl / .json / .parquet with the same
fields) read instead of the hub, as the other loaders' fallback. A FLAN ``subset`` matches a
``task_name`` exactly, up to its ``:version`` suffix, or with the published ``_10templates``
suffix dropped (``anli_r1`` = ``anli_r1_10templates`` = ``anli_r1:0.2.0``).

`prepare_tasks(fcfg)` writes OUT/tasks/NAME.jsonl for every family task that has none: one pass
over each source for all of its tasks, the first ``num_examples + heldout_size`` rows of each
subset in source order (0: all), under a file lock, so concurrent `measure` jobs of one study
(one task each) materialize a file once and never read a half-written one. `as_source(task,
out)` is the task as a plain dataset (the file), what the run config trains on.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock

from remix_ds.cachedir import write_text_atomic
from remix_ds.data.datasets import load_examples
from remix_ds.data.records import DataError, Example
from remix_ds.forgetting.config import ForgettingConfig, TaskConfig


def _dolly(row: dict, i: int) -> dict:
    ctx = (row.get("context") or "").strip()
    prompt = row["instruction"].strip() + (f"\n\n{ctx}" if ctx else "")
    return {"id": f"dolly-{row['category']}-{i}", "prompt": prompt, "answer": row["response"]}


def _tulu(row: dict, i: int) -> dict:
    msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    return {"id": str(row.get("id") or f"tulu-{row['dataset']}-{i}"), "messages": msgs}


def _flan(row: dict, i: int) -> dict:
    return {"id": f"flan-{_flan_key(row['task_name'])}-{i}", "prompt": row["source"], "answer": row["target"]}


def _flan_key(name: str) -> str:
    name = name.split(":", 1)[0]
    return name[: -len("_10templates")] if name.endswith("_10templates") else name


@dataclass(frozen=True)
class Family:
    hub_id: str
    key: str
    """The field naming a row's subset."""
    fields: tuple[str, ...]
    """Fields the record conversion reads (checked on the first row)."""
    record: Callable[[dict, int], dict]
    normalize: Callable[[str], str] = str
    split: str = "train"


FAMILIES: dict[str, Family] = {
    "dolly": Family("databricks/databricks-dolly-15k", "category", ("instruction", "context", "response", "category"),
                    _dolly),
    "tulu": Family("allenai/tulu-v2-sft-mixture", "dataset", ("dataset", "id", "messages"), _tulu),
    "flan": Family("sordonia/flan-10k-flat", "task_name", ("source", "target", "task_name"), _flan, _flan_key),
}


def family_rows(family: str, data_files: str | None = None) -> Iterator[dict]:
    """The family's raw rows in source order: from ``data_files`` (local copy) or the hub, streamed."""
    fam = FAMILIES[family]
    if data_files:
        path = Path(data_files)
        if not path.is_file():
            raise DataError(f"{path}: no such file (the local copy of the {family} source, {fam.hub_id})")
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches():
                yield from batch.to_pylist()
            return
        with open(path, encoding="utf-8") as f:
            if path.suffix.lower() == ".json":
                yield from json.load(f)
                return
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
        return
    import datasets

    yield from datasets.load_dataset(fam.hub_id, split=fam.split, streaming=True)


def task_file(out: str | Path, task: TaskConfig) -> Path:
    return Path(out) / "tasks" / f"{task.label()}.jsonl"


def _wanted(task: TaskConfig) -> int:
    return task.num_examples + task.heldout_size if task.num_examples else 0


def materialize(tasks: list[tuple[int, TaskConfig]], out: Path) -> None:
    """Write the files of ``tasks`` ((index in the config, task); one family and data_files) in one pass."""
    family, data_files = tasks[0][1].family, tasks[0][1].data_files
    fam = FAMILIES[family]
    by_subset: dict[str, list[tuple[int, TaskConfig]]] = {}
    for i, t in tasks:
        by_subset.setdefault(fam.normalize(t.subset), []).append((i, t))
    rows: dict[str, list[dict]] = {s: [] for s in by_subset}
    cap = {s: (0 if any(_wanted(t) == 0 for _, t in ts) else max(_wanted(t) for _, t in ts))
           for s, ts in by_subset.items()}
    seen: dict[str, int] = {}
    where = data_files or fam.hub_id
    for n, row in enumerate(family_rows(family, data_files)):
        if n == 0:
            missing = [f for f in fam.fields if f not in row]
            if missing:
                raise DataError(f"{where}: rows have no field {missing} (the {family} family reads {list(fam.fields)})")
        sub = fam.normalize(str(row[fam.key]))
        seen[sub] = seen.get(sub, 0) + 1
        if sub in rows and (not cap[sub] or len(rows[sub]) < cap[sub]):
            rows[sub].append(fam.record(row, seen[sub] - 1))
            if all(cap[s] and len(rows[s]) >= cap[s] for s in rows):
                break  # every wanted subset is full: stop streaming
    for sub, ts in by_subset.items():
        if not rows[sub]:
            i = ts[0][0]
            raise DataError(f"tasks[{i}].subset={ts[0][1].subset!r}: no {family} row has {fam.key} = {sub!r} in "
                            f"{where} (seen: {', '.join(sorted(seen)[:12])}{', ...' if len(seen) > 12 else ''})")
        for _, t in ts:
            path = task_file(out, t)
            path.parent.mkdir(parents=True, exist_ok=True)
            keep = rows[sub][: _wanted(t) or None]
            write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


def prepare_tasks(fcfg: ForgettingConfig, log=print) -> None:
    """Materialize every family task's OUT/tasks/NAME.jsonl that does not exist yet (see the module docstring)."""
    out = Path(fcfg.output_dir)
    todo = [(i, t) for i, t in enumerate(fcfg.tasks) if t.family and not task_file(out, t).is_file()]
    if not todo:
        return
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / "tasks" / ".lock")):
        todo = [(i, t) for i, t in todo if not task_file(out, t).is_file()]  # another job may have written them
        groups: dict[tuple, list] = {}
        for i, t in todo:
            groups.setdefault((t.family, t.data_files), []).append((i, t))
        for (family, files), ts in groups.items():
            log(f"[forgetting] materializing {len(ts)} {family} task(s) from {files or FAMILIES[family].hub_id}")
            materialize(ts, out)


def as_source(task: TaskConfig, out: str | Path) -> TaskConfig:
    """The task as a plain dataset: a family task reads its materialized file (num_examples and
    heldout_size then apply to it as to any dataset)."""
    if not task.family:
        return task
    return dataclasses.replace(task, dataset=str(task_file(out, task)), data_files=None, family="", subset="",
                               name=task.label())


def task_steps(fcfg: ForgettingConfig, task: TaskConfig, kvr) -> int:
    """measure.steps, capped at measure.max_epochs epochs of the task's training rows when set
    (``task`` as a plain dataset, `as_source`)."""
    m = fcfg.measure
    if not m.max_epochs:
        return m.steps
    n = len(load_examples(task, kvr, "train"))
    return max(1, min(m.steps, math.ceil(m.max_epochs * n / fcfg.finetune.train.global_batch_size)))


def family_sample(family: str, per_subset: int, skip: int = 0, data_files: str | None = None) -> list[Example]:
    """Up to ``per_subset`` rows of every subset of a family (after its first ``skip``), as
    records, interleaved round-robin over the subsets (sorted by name) so any prefix is balanced."""
    fam = FAMILIES[family]
    by: dict[str, list[Example]] = {}
    seen: dict[str, int] = {}
    for row in family_rows(family, data_files):
        sub = fam.normalize(str(row[fam.key]))
        k = seen[sub] = seen.get(sub, 0) + 1
        if skip < k <= skip + per_subset:
            r = fam.record(row, k - 1)
            by.setdefault(sub, []).append(Example(id=r["id"], source=f"{family}:{sub}", prompt=r.get("prompt"),
                                                  answer=r.get("answer"), messages=r.get("messages")))
    if not by:
        raise DataError(f"upstream.family={family}: no rows after skip_per_subset={skip} in {data_files or fam.hub_id}")
    lists = [by[s] for s in sorted(by)]
    return [x for i in range(max(map(len, lists))) for x in (lst[i] for lst in lists if i < len(lst))]
