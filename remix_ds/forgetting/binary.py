"""The binary forgetting matrix: z_ij = 1 - EM_after(i, j) on the upstream examples j the base
model answered correctly (EM 1 before); an example the base model got wrong cannot be forgotten
and is not a column.

Two sources, the same matrix:

- per-example eval files (``predict.binary_eval_dir``): ``base.jsonl`` (the base model) and
  ``TASK.jsonl`` per task (the model fine-tuned on TASK alone), the rows the evaluator writes
  (``remix_ds.eval.runner.write_results``, `remix-ds eval`): we read ``id`` and ``correct``;
- EM arrays stored with the study (``em_before`` in OUT/base.npz, ``em_after`` in
  OUT/rows/TASK.npz; see store.py), when `forgetting measure` records the fused verdicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from remix_ds.data.records import DataError


@dataclass
class BinaryMatrix:
    z: np.ndarray
    """(M, N') 1 - EM after, over the base-correct examples (float 0/1)."""
    task_names: list[str]
    example_ids: list[str]
    """The N' base-correct examples (columns)."""
    n_examples: int
    """Examples scored by the base model (base-correct or not)."""


def read_em(path: Path) -> dict[str, bool]:
    """{id: correct} of one per-example eval file; a bad line raises DataError naming file:line."""
    out: dict[str, bool] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, ok = str(row["id"]), row["correct"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: not an eval row with id and correct ({e})") from None
            if not isinstance(ok, bool):
                raise DataError(f"{path}:{lineno}: correct must be true/false, got {ok!r}")
            if key in out:
                raise DataError(f"{path}:{lineno}: duplicate id {key!r}")
            out[key] = ok
    return out


def from_em(em_before: np.ndarray, em_after: np.ndarray, task_names: list[str], example_ids: list[str]) -> BinaryMatrix:
    """(N,) base EM and (M, N) EM after -> the binary matrix over the base-correct columns."""
    keep = np.asarray(em_before, dtype=bool)
    z = 1.0 - np.asarray(em_after, dtype=np.float64)[:, keep]
    return BinaryMatrix(z, list(task_names), [e for e, k in zip(example_ids, keep) if k], len(keep))


def from_eval_dir(folder: str | Path, task_names: list[str], log=print) -> BinaryMatrix:
    """Read FOLDER/base.jsonl and FOLDER/TASK.jsonl for each task that has a file (others are
    left out, logged). Every task file must score every base example (same ids)."""
    folder = Path(folder)
    base_path = folder / "base.jsonl"
    if not base_path.is_file():
        raise DataError(f"{base_path}: no per-example eval file of the base model (predict.binary_eval_dir)")
    base = read_em(base_path)
    ids = list(base)
    names, rows = [], []
    for name in task_names:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            log(f"[forgetting] binary matrix: no {path}; task {name} left out")
            continue
        em = read_em(path)
        missing = [i for i in ids if i not in em]
        if missing:
            raise DataError(f"{path}: {len(missing)} example(s) of base.jsonl not scored, e.g. id {missing[0]!r}")
        names.append(name)
        rows.append([em[i] for i in ids])
    em_after = np.array(rows, dtype=bool).reshape(len(rows), len(ids))
    return from_em(np.array([base[i] for i in ids], dtype=bool), em_after, names, ids)
