"""One job of a grid's plan (plan.py), in its own process: what `scheduler.kind: local` (and Slurm) runs.

    python -m remix_ds.experiments.job OUTPUT_DIR JOB_ID [--devices 0,1] [--master-port P] [--launcher L]

Reads `OUTPUT_DIR/experiment_config.json` (written by the grid before it schedules anything),
rebuilds the Grid, `prepare()`s it and stage 0 (idempotent and locked, so many jobs may start at
once) and runs the job through `jobs.GridJobs`: `stage0`, `stage1:<key>` (one shared stage-1 run)
or `cell:<key>` (stage 2, analyses and done.json / error.json, exactly as the serial path writes
them). `--devices` and `--master-port` place its stages (GridJobs.stage_launcher). A finished job
returns at once.
Exit code 0 when the job's work is done; 1 when it failed (a cell that recorded error.json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from remix_ds import configtools
from remix_ds.errors import RemixError
from remix_ds.experiments.config import ExperimentConfig
from remix_ds.experiments.grid import CONFIG_FILE, Grid
from remix_ds.experiments.jobs import GridJobs
from remix_ds.experiments.plan import STAGE0, cell_id, stage1_id


def load_grid(output_dir: str | Path, log=print) -> Grid:
    out = Path(output_dir)
    path = out / CONFIG_FILE
    if not path.is_file():
        raise RemixError(f"{path}: no such file (the grid writes it before scheduling jobs; run `remix-ds experiment` first)")
    cfg = configtools.from_dict(ExperimentConfig, json.loads(path.read_text()), source=str(path))
    cfg.output_dir = str(out)
    return Grid(cfg, log)


def run_job(output_dir: str, job_id: str, devices: str | None = None, port: int | None = None,
            launcher: str | None = None) -> int:
    """Run one job of the grid in `output_dir`; 0 when its work is done (also when it was done before).

    `launcher` replaces the config's `launcher` for this job's stages (a Slurm job spanning
    several nodes: `deepspeed --hostfile H --master_addr A --master_port P`, slurm.placement)."""
    grid = load_grid(output_dir)
    jobs = GridJobs(grid, launcher=launcher or None,
                    devices=[d for d in devices.split(",") if d] if devices else None, port=port)
    cells = {cell_id(c.key): c for c in grid.cells()}
    stage1 = {stage1_id(c.stage1_key): c.stage1_key for c in grid.cells()}
    if job_id != STAGE0 and job_id not in cells and job_id not in stage1:
        raise RemixError(f"{output_dir}: no job {job_id!r} in this grid's plan (ids: stage0, "
                         f"{', '.join(list(stage1)[:3])}, {', '.join(list(cells)[:3])}, ...)")
    try:
        grid.prepare()
        jobs.run_stage0()
        if job_id == STAGE0:
            return 0
        if job_id in stage1:
            jobs.run_stage1_job(stage1[job_id])
            return 0
    except Exception:
        traceback.print_exc()
        return 1
    return 0 if jobs.run_cell_job(cells[job_id], grid.layout()) == "done" else 1


def _terminate_group(signum, _frame) -> None:
    """SIGTERM to the job (a group leader under the scheduler): take its stage launcher and ranks along."""
    signal.signal(signum, signal.SIG_DFL)
    os.killpg(os.getpgid(0), signum)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m remix_ds.experiments.job", description=__doc__.split("\n")[0])
    p.add_argument("output_dir")
    p.add_argument("job_id", help="stage0, stage1:<stage1_key> or cell:<cell key> (remix-ds experiment --dry-run lists them)")
    p.add_argument("--devices", default=None, help="device group, e.g. 0,1 (GPU ids, or CPU ranks counted)")
    p.add_argument("--master-port", type=int, default=None, help="master port of the job's stage launcher")
    p.add_argument("--launcher", default=None, help="replaces the config's launcher for this job's stages "
                   "(a multi-node Slurm job: 'deepspeed --hostfile H --master_addr A --master_port P')")
    args = p.parse_args(argv)
    if os.getpgid(0) == os.getpid():
        signal.signal(signal.SIGTERM, _terminate_group)
    try:
        return run_job(args.output_dir, args.job_id, args.devices, args.master_port, args.launcher)
    except RemixError as e:
        print(f"remix-ds: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
