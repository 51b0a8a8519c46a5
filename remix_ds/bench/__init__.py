"""`remix-ds bench train|data|eval|all|baselines|forgetting|gpu|mix|grid`: benchmarks that write JSON."""

from __future__ import annotations


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
