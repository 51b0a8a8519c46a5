"""`remix-ds experiment CONFIG [a.b=value ...]`: run a REMIX grid (see remix_ds.experiments.config).

`remix-ds frontier GRID_DIR [GRID_DIR ...] [--out DIR]`: the retention-learning frontier of finished
grids (remix_ds.experiments.frontier).
"""

from __future__ import annotations

from pathlib import Path


def _run(args) -> int:
    from remix_ds.experiments.config import load_experiment
    from remix_ds.experiments.grid import Grid

    from remix_ds.experiments import dryrun

    cfg = load_experiment(args.config, args.overrides)
    batching = dryrun.batching_lines(cfg)  # a batch the world size cannot divide: refused here, before any work
    if args.dry_run:
        from remix_ds.experiments import slurm
        from remix_ds.experiments.plan import plan_jobs

        grid = Grid(cfg)
        for cell in grid.cells():
            print(f"{cell.key}  (stage 1: {cell.stage1_key})")
        print(f"\nplan ({cfg.scheduler.kind} scheduler):")
        for job in plan_jobs(grid):
            print(f"  {job.id}" + (f"  after {', '.join(job.deps)}" if job.deps else ""))
        print("\n" + "\n".join(batching))
        print("\n" + "\n".join(dryrun.disk_lines(cfg, grid.cells())))
        if cfg.scheduler.kind == "slurm":
            from remix_ds.experiments.jobs import GridJobs

            print("\n".join(slurm.describe(plan_jobs(grid), grid.out, cfg.scheduler.slurm, GridJobs(grid))))
        return 0
    grid = Grid(cfg)
    grid.wait_for_jobs = not args.no_wait
    rows = grid.run()
    return 1 if any(r.get("status") != "done" for r in rows) else 0


def add_experiment_command(sub) -> None:
    p = sub.add_parser("experiment", help="run a REMIX grid: D_A x D_B x strategy, tables, plots, analyses")
    p.add_argument("config", help="experiment YAML/JSON (e.g. configs/paper/kvr.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.optim.lr=1e-5 'strategies=[none,replay=0.1]'")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config, list the cells and the plan (jobs, deps; with slurm the #SBATCH lines)")
    p.add_argument("--no-wait", action="store_true",
                   help="scheduler.kind=slurm: return once the jobs are submitted (run again to collect the table)")
    p.set_defaults(func=_run)


def _frontier(args) -> int:
    from remix_ds.experiments.frontier import markdown, write_frontier

    out = args.out or str(Path(args.grid_dirs[0]) / "frontier")
    summary = write_frontier(args.grid_dirs, out, n_boot=args.n_boot)
    print(markdown(summary))
    print(f"written: {out}/frontier.md, frontier.json, frontier.png")
    return 0


def add_frontier_command(sub) -> None:
    p = sub.add_parser("frontier", help="EM(D_A) kept vs EM(D_B) learned per strategy along a stage-2 sweep, over seeds")
    p.add_argument("grid_dirs", nargs="+", metavar="GRID_DIR", help="finished grid folders (pooled; one seed each or a seed axis)")
    p.add_argument("--out", help="output folder (default: GRID_DIR/frontier of the first grid)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of every CI")
    p.set_defaults(func=_frontier)
