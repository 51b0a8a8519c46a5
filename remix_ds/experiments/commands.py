"""`remix-ds experiment CONFIG [a.b=value ...]`: run a REMIX grid (see remix_ds.experiments.config).

`remix-ds frontier GRID_DIR [GRID_DIR ...] [--out DIR]`: the retention-learning frontier of finished
grids (remix_ds.experiments.frontier).
"""

from __future__ import annotations

from pathlib import Path


def _run(args) -> int:
    from remix_ds.experiments.config import load_experiment
    from remix_ds.experiments.grid import run_experiment

    cfg = load_experiment(args.config, args.overrides)
    if args.dry_run:
        from remix_ds.experiments.grid import Grid

        for cell in Grid(cfg).cells():
            print(f"{cell.key}  (stage 1: {cell.stage1_key})")
        return 0
    rows = run_experiment(cfg)
    return 1 if any(r.get("status") != "done" for r in rows) else 0


def add_experiment_command(sub) -> None:
    p = sub.add_parser("experiment", help="run a REMIX grid: D_A x D_B x strategy, tables, plots, analyses")
    p.add_argument("config", help="experiment YAML/JSON (e.g. configs/paper/kvr.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.optim.lr=1e-5 'strategies=[none,replay=0.1]'")
    p.add_argument("--dry-run", action="store_true", help="validate the config and list the cells")
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
