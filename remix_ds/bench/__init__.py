"""`remix-ds bench train|data|eval|all`: throughput benchmarks that write JSON."""

from __future__ import annotations


def add_bench_command(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (write JSON)")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    from remix_ds.bench.train import add_bench_train_command

    add_bench_train_command(bsub)
    try:
        from remix_ds.bench.data import add_bench_data_command
    except ImportError:
        pass
    else:
        add_bench_data_command(bsub)
    try:
        from remix_ds.bench.eval import add_bench_eval_command
    except ImportError:
        pass
    else:
        add_bench_eval_command(bsub)
