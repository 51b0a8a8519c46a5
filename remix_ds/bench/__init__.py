"""`remix-ds bench train|data|eval|all|baselines|forgetting|gpu|mix|grid`: benchmarks that write JSON."""

from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
"""The source checkout this package runs from (its `benchmarks/` folder holds the baselines)."""


def checkout_benchmarks() -> None:
    """Make the checkout's `benchmarks` package (comparison baselines, not installed) importable,
    or stop with a one-line error when this package does not run from a source checkout."""
    if not (CHECKOUT / "benchmarks" / "__init__.py").is_file():
        raise SystemExit(f"remix-ds bench: the comparison baselines are in benchmarks/ of a source checkout, "
                         f"not in the installed package (none at {CHECKOUT / 'benchmarks'}); run the benchmark "
                         f"from a git checkout installed with `pip install -e .`")
    if str(CHECKOUT) not in sys.path:
        sys.path.append(str(CHECKOUT))


def add_bench_command(sub) -> None:
    from remix_ds.bench.all import add_bench_all_command
    from remix_ds.bench.baselines import add_bench_baselines_command
    from remix_ds.bench.data import add_bench_data_command
    from remix_ds.bench.eval import add_bench_eval_command
    from remix_ds.bench.forgetting import add_bench_forgetting_command
    from remix_ds.bench.gpu import add_bench_gpu_command
    from remix_ds.bench.grid import add_bench_grid_command
    from remix_ds.bench.mix import add_bench_mix_command
    from remix_ds.bench.train import add_bench_train_command

    bench = sub.add_parser("bench", help="benchmarks (write JSON)")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    for add in (add_bench_train_command, add_bench_data_command, add_bench_eval_command, add_bench_all_command,
                add_bench_baselines_command, add_bench_forgetting_command, add_bench_gpu_command, add_bench_mix_command,
                add_bench_grid_command):
        add(bsub)
