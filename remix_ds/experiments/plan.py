"""A grid as a dependency graph of jobs: stage 0 (if configured), each distinct stage-1 run once,
each cell (stage 2 + analysis) after its stage 1.

    stage0                     (only with stage0.epochs > 0)
    stage1:<stage1_key>        deps: stage0
    cell:<cell.key>            deps: stage1:<its stage1_key>

Every scheduler runs this plan: `serial` in order in one process, `local` as concurrent
subprocesses (`python -m remix_ds.experiments.job OUT JOB_ID`), `slurm` as dependent jobs.
Finished work still appears in the plan; running a finished job is a quick no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

STAGE0 = "stage0"


@dataclass(frozen=True)
class Job:
    """One schedulable unit of a grid."""

    id: str
    """`stage0`, `stage1:<stage1_key>` or `cell:<cell.key>` (letters, digits, `_.-:`; safe in file names)."""
    kind: Literal["stage0", "stage1", "cell"]
    deps: tuple[str, ...]
    """Ids of the jobs that must be done before this one starts."""
    label: str
    """What the scheduler prints, e.g. `cell fa__fb__none`."""


class JobRunner(Protocol):
    """What a scheduler (local, Slurm) asks of the owner of the jobs it runs: one object, passed whole."""

    def job_finished(self, job: Job) -> int | None:
        """0 (done) or 1 (failed, not to be retried) for work finished earlier; None: to run."""

    def job_log(self, job: Job) -> Path:
        """Where the job's stdout/stderr go."""

    def job_claim(self, job: Job) -> Path | None:
        """A lock file held while the job runs (cooperating schedulers skip each other's), or None."""

    def job_blocked(self, job: Job, cause: Job, log: Path, code: int) -> None:
        """`job` will not run (or died without recording why) because `cause` failed with `code`."""

    def job_lost(self, job: Job, message: str) -> None:
        """`job` left the queue without finishing (Slurm: killed, out of time)."""


def stage1_id(stage1_key: str) -> str:
    return f"stage1:{stage1_key}"


def cell_id(cell_key: str) -> str:
    return f"cell:{cell_key}"


def plan_jobs(grid) -> list[Job]:
    """The jobs of a `Grid` in a valid order (every job after its deps)."""
    jobs: list[Job] = []
    base: tuple[str, ...] = ()
    if grid.cfg.stage0.epochs > 0:
        jobs.append(Job(STAGE0, "stage0", (), "stage 0 (generic pretraining)"))
        base = (STAGE0,)
    cells = grid.cells()
    seen: set[str] = set()
    for cell in cells:
        if cell.stage1_key not in seen:
            seen.add(cell.stage1_key)
            jobs.append(Job(stage1_id(cell.stage1_key), "stage1", base, f"stage 1 {cell.stage1_key}"))
    for cell in cells:
        jobs.append(Job(cell_id(cell.key), "cell", (stage1_id(cell.stage1_key),), f"cell {cell.key}"))
    return jobs
