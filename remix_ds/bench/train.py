"""`remix-ds bench train CONFIG`: engine throughput (filled in below)."""

from __future__ import annotations


def add_bench_train_command(bsub) -> None:
    p = bsub.add_parser("train", help="engine tokens/s (and TFLOP/s, MFU on GPU)")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out", default="bench_train.json")
