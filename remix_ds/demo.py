"""`remix-ds demo`: the embedded default, a toy-scale REMIX grid on CPU (see demo.yaml).

The same grid runner as `remix-ds experiment` (real Trainer, DeepSpeed ZeRO-3 engine and
evaluator, stages in this process): D_A = generated key-value pairs; D_B = a second key-value
set and passages of the built-in generic corpus; strategies none / random / generic / replay.
Prints the EM/forgetting table and writes results.csv/json, report.md and plots to
`output_dir` (default runs/demo).
"""

from __future__ import annotations

from pathlib import Path

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def run(config: str | None, overrides: list[str]) -> list[dict]:
    import warnings

    from remix_ds.experiments.config import load_experiment

    # DeepSpeed 0.19's ZeRO-3 calls torch's deprecated collective names on every step; on the
    # demo's console that drowns the table (the calls themselves are fine).
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+`? is deprecated", category=FutureWarning)
    from remix_ds.experiments.grid import run_experiment

    cfg = load_experiment(config or DEMO_CONFIG, overrides)
    return run_experiment(cfg)


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="toy REMIX grid on CPU: 2 D_B x 4 strategies (the embedded default)")
    p.add_argument("config", nargs="?", help="experiment config (default: the built-in demo.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stage2.epochs=10 'strategies=[none,replay=0.5]'")
    p.set_defaults(func=lambda args: 0 if all(r.get("status") == "done" for r in run(args.config, args.overrides)) else 1)
