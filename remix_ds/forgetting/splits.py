"""Which task rows train the predictor and which are predicted, and which columns are revealed.

Named splits (``predict.splits``, the published protocol): ``{name: [entries]}`` where an entry is
a task name or a shell-style pattern over task names (``dolly_*``: a task family). Each split's
test tasks are the tasks its entries match; the training tasks are the tasks that no split names
(as in the paper, where in-domain held-out FLAN tasks and the out-of-domain Tulu / Dolly families
are all predicted from the same remaining FLAN rows). Without splits: task folds
(``predict.folds``; 0 = leave one task out), each fold predicted from all the other tasks.

Revealed columns (``predict.reveal``): ``shared`` (published) draws the k columns once per seed,
the same for every test task; ``per_task`` (ours) draws them per (seed, task).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from remix_ds.configtools import ConfigError


@dataclass(frozen=True)
class Split:
    name: str
    test: np.ndarray
    """Task row indices predicted."""
    train: np.ndarray
    """Task row indices the predictor is fitted on."""


def reveal(n: int, k: int, seed: int, task: int) -> np.ndarray:
    """k distinct column indices out of n (sorted), reproducible per (seed, task)."""
    if k >= n:
        raise ConfigError(f"predict.revealed={k} must be smaller than the number of upstream examples {n}")
    return np.sort(np.random.default_rng([seed, task, 0x5EE1]).choice(n, size=k, replace=False))


def reveal_shared(n: int, k: int, seed: int) -> np.ndarray:
    """k distinct column indices out of n (sorted), the same for every test task of a seed."""
    if k >= n:
        raise ConfigError(f"predict.revealed={k} must be smaller than the number of upstream examples {n}")
    return np.sort(np.random.default_rng([seed, 0x5AED]).choice(n, size=k, replace=False))


def revealed_columns(n: int, k: int, seed: int, task: int, mode: str = "shared") -> np.ndarray:
    """The revealed columns of test row ``task`` under ``predict.reveal`` = ``mode``."""
    if mode == "shared":
        return reveal_shared(n, k, seed)
    if mode == "per_task":
        return reveal(n, k, seed, task)
    raise ConfigError(f"predict.reveal must be shared or per_task, got {mode!r}")


def folds_of(m: int, folds: int) -> list[np.ndarray]:
    """Task indices held out together: leave-one-out (folds = 0) or `folds` interleaved groups."""
    if m < 2:
        raise ConfigError(f"predict needs at least 2 measured tasks, got {m}")
    f = m if folds == 0 else min(folds, m)
    return [np.arange(i, m, f) for i in range(f)]


def named_splits(task_names: list[str], splits: dict[str, list[str]]) -> list[Split]:
    """Resolve ``predict.splits`` against the (finished) task names; errors name the key."""
    index = {t: i for i, t in enumerate(task_names)}
    claimed: dict[int, str] = {}
    tests = {}
    for name, entries in splits.items():
        if not entries:
            raise ConfigError(f"predict.splits.{name}: empty; list test task names or patterns (e.g. dolly_*)")
        hit: set[int] = set()
        for e in entries:
            matched = [index[t] for t in fnmatch.filter(task_names, e)] if any(c in e for c in "*?[") else \
                ([index[e]] if e in index else [])
            if not matched:
                raise ConfigError(f"predict.splits.{name}: {e!r} matches no finished task (tasks: {', '.join(task_names)})")
            hit.update(matched)
        for i in sorted(hit):
            if i in claimed:
                raise ConfigError(f"predict.splits.{name}: task {task_names[i]!r} is also in split {claimed[i]!r}")
            claimed[i] = name
        tests[name] = np.array(sorted(hit))
    train = np.array(sorted(set(range(len(task_names))) - set(claimed)), dtype=np.int64)
    if len(train) < 2:
        raise ConfigError(f"predict.splits: {len(train)} training task(s) left (the tasks no split names); need >= 2")
    return [Split(name, test, train) for name, test in tests.items()]


def fold_splits(m: int, folds: int) -> list[Split]:
    """Folds as splits: each fold predicted from every other task (the split name is ``folds``)."""
    return [Split("folds", held, np.setdiff1d(np.arange(m), held)) for held in folds_of(m, folds)]
