"""`remix-ds experiment CONFIG [a.b=value ...]`: run a REMIX grid (see remix_ds.experiments.config)."""

from __future__ import annotations


def _run(args) -> int:
    from remix_ds.experiments.config import load_experiment
    from remix_ds.experiments.grid import Grid

    cfg = load_experiment(args.config, args.overrides)
    if args.dry_run:
        from remix_ds.experiments import slurm
        from remix_ds.experiments.plan import plan_jobs

        grid = Grid(cfg)
        for cell in grid.cells():
            print(f"{cell.key}  (stage 1: {cell.stage1_key})")
        print(f"\nplan ({cfg.scheduler.kind} scheduler):")
        for job in plan_jobs(grid):
            print(f"  {job.id}" + (f"  after {', '.join(job.deps)}" if job.deps else ""))
        if cfg.scheduler.kind == "slurm":
            print("\n".join(slurm.describe(plan_jobs(grid), grid.out, cfg.scheduler.slurm, grid.job_finished)))
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
