"""Disk pruning of a grid's models (`analysis.keep_models`), as the reference deletes each stage-2
model once its evaluation files are written.

    none     a cell's stage-2 export goes once its done.json is written (evaluations, analyses and
             row are on disk); a stage 1's export (and its EWC Fisher/anchor) goes once every cell
             built on it has done.json
    stage1   as `none`, but the stage-1 exports stay
    all      nothing is deleted

Except with `all`, a stage's checkpoints (`checkpoint-N/`, `latest`) go as soon as it is done
(stage_done.json): a done stage is never trained or resumed again, and nothing reads them.

A pruned folder keeps its eval files, metrics, stage_done.json and gets `pruned.json` (what went,
how many bytes). A rerun never needs a pruned model: finished cells (done.json) are skipped, and a
stage-1 export goes only when no planned cell still needs it; a cell added to the grid later whose
stage 1 was pruned is refused with one line (`require_export`) instead of training on nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

from remix_ds.cachedir import write_text_atomic
from remix_ds.errors import RemixError

PRUNED = "pruned.json"
EXPORT = "final"
STAGE1_EXTRA = ("ewc-fisher",)
"""What else a stage-1 folder holds for its cells only (the shared EWC Fisher/anchor)."""


class PrunedModelError(RemixError):
    """A cell needs a stage-1 export that was pruned."""


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _remove(stage_dir: Path, names: Iterable[str], log: Callable[[str], None], what: str) -> int:
    """Delete `names` inside `stage_dir`; record them in pruned.json. Returns the bytes freed."""
    stage_dir = Path(stage_dir)
    gone, freed = [], 0
    for name in names:
        path = stage_dir / name
        if not (path.exists() or path.is_symlink()):
            continue
        size = _size(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            gone.append(name)
            freed += size
    if gone:
        record_path = stage_dir / PRUNED
        record = json.loads(record_path.read_text()) if record_path.is_file() else {"removed": [], "bytes": 0}
        record["removed"] = sorted(set(record["removed"]) | set(gone))
        record["bytes"] += freed
        record["time"] = time.time()
        write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
        log(f"[experiment] pruned {what} {stage_dir}: {', '.join(sorted(gone))} ({freed / 1e9:.2f} GB)")
    return freed


def checkpoint_names(stage_dir: Path) -> list[str]:
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    names = [p.name for p in stage_dir.iterdir() if p.is_dir() and
             (p.name.startswith("checkpoint-") or p.name.startswith(".tmp-checkpoint-"))]
    return sorted(names) + (["latest"] if (stage_dir / "latest").exists() else [])


def drop_checkpoints(stage_dir: Path, keep: str, done: bool, log: Callable[[str], None] = print) -> int:
    """A done stage's checkpoints, unless keep == all (an unfinished stage keeps them: it resumes from them)."""
    if keep == "all" or not done:
        return 0
    return _remove(stage_dir, checkpoint_names(stage_dir), log, "checkpoints of")


def after_cell(cell, cells, keep: str, stage1_dir: Path, stage2_dir: Path, cell_done: Callable[[object], bool],
               log: Callable[[str], None] = print) -> int:
    """What `keep` lets go once `cell` has its done.json: its stage-2 export and checkpoints; with
    `none`, its stage 1's export once every planned cell on that stage 1 is done. Returns bytes freed."""
    if keep == "all" or not cell_done(cell):
        return 0
    try:
        freed = _remove(stage2_dir, [EXPORT, *checkpoint_names(stage2_dir)], log, "stage 2 of")
        if keep == "none":
            siblings = [c for c in cells if c.stage1_key == cell.stage1_key]
            if all(cell_done(c) for c in siblings):
                freed += _remove(stage1_dir, [EXPORT, *STAGE1_EXTRA, *checkpoint_names(stage1_dir)], log, "stage 1")
        return freed
    except OSError as e:  # a finished cell stays finished; the files stay for a later run to prune
        log(f"[experiment] pruning after cell {cell.key} FAILED ({type(e).__name__}: {e}); the cell is done, its files are kept")
        return 0


def require_export(stage_dir: Path, who: str) -> None:
    """Refuse (one line) to build on a stage whose export was pruned."""
    stage_dir = Path(stage_dir)
    record = stage_dir / PRUNED
    if not (stage_dir / EXPORT / "config.json").is_file() and record.is_file() and \
            EXPORT in json.loads(record.read_text()).get("removed", []):
        raise PrunedModelError(
            f"{who} needs {stage_dir / EXPORT}, pruned once every cell then planned on it was done "
            f"(analysis.keep_models=none, {record}); delete {stage_dir} to train that stage 1 again, "
            "and set analysis.keep_models=stage1 to keep stage-1 exports")
