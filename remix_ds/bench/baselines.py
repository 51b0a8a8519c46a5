"""`remix-ds bench baselines [CONFIG] [overrides] [--ranks N] --out FILE.json`: step-time overhead of EWC and KL.

Builds one real Trainer per variant from the same config (same model, data, DeepSpeed config):

    plain       stage-2 training, no regularizer
    ewc         + regularize.ewc (Fisher on --fisher-examples examples of the stage dataset)
    kl_batch    + regularize.kl, data=batch (KL over each stage micro-batch's supervised tokens)
    kl_generic  + regularize.kl, data=generic (a separate generic-corpus micro-batch per micro-batch, all tokens)
    ewc_kl      + both (kl data=batch)

then times `train_step` side by side: --warmup untimed rounds, then --steps rounds, each round
one optimizer step of every variant in turn (so machine noise hits all variants alike). Reports
the median step time per variant, its ratio to `plain`, the one-time setup cost (Fisher estimate,
frozen-engine build) and the extra per-rank state (EWC: fp32 Fisher + anchor pieces; KL: the
frozen engine's partitioned weights). All variants live at once, so at scale run one `--only`
variant per invocation instead. `--ranks N` relaunches through the deepspeed launcher (ZeRO-3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from remix_ds.bench.train import machine_info
from remix_ds.config import load_config
from remix_ds.engine import dist

VARIANTS = {
    "plain": [],
    "ewc": ["regularize.ewc.lam=1.0", "regularize.ewc.dataset=kvr"],
    "kl_batch": ["regularize.kl.beta=0.1", "regularize.kl.data=batch"],
    "kl_generic": ["regularize.kl.beta=0.1", "regularize.kl.data=generic", "regularize.kl.num_examples=64"],
    "ewc_kl": ["regularize.ewc.lam=1.0", "regularize.ewc.dataset=kvr", "regularize.kl.beta=0.1"],
}
DEFAULTS = ["data.kvr.num_pairs=64", "data.max_seq_len=128", "train.global_batch_size=8", "train.micro_batch_size=2",
            "optim.lr=1e-3", "optim.warmup_ratio=0", "train.export_final=false", "train.tensorboard=false",
            "train.progress_bar=false", "train.resume=none", "train.max_steps=1000"]


def _state_bytes(trainer) -> dict:
    out = {}
    for r in trainer.regularizers:
        if r.name == "ewc":
            out["ewc_bytes_per_rank"] = sum(f.numel() * 4 + a.numel() * 4 for f, a in zip(r.fisher, r.anchor))
        if r.name == "kl":
            out["kl_frozen_bytes_per_rank"] = sum(p.ds_tensor.numel() * p.ds_tensor.element_size()
                                                  for p in r.frozen.module.parameters())
    return out


def bench(config: str | None, overrides: list[str], variants: list[str], steps: int, warmup: int,
          fisher_examples: int) -> dict:
    import torch

    # NOTE: imported here: `remix-ds --help` imports this module for its subcommand, and the
    # trainer and evaluator pull in transformers (seconds).
    from remix_ds.assemble import build_trainer

    trainers, setup = {}, {}
    dist.init_distributed()
    # one folder for all ranks: the EWC state is written piecewise by every rank into the same place
    root = Path(dist.broadcast_object(tempfile.mkdtemp(prefix="bench-baselines-") if dist.is_main() else None))
    for name in variants:
        extra = VARIANTS[name] + ([f"regularize.ewc.num_examples={fisher_examples}"] if "ewc" in name else [])
        cfg = load_config(config, [*DEFAULTS, *overrides, *extra, f"train.output_dir={root / name}"])
        t0 = time.perf_counter()
        trainers[name] = build_trainer(cfg)
        setup[name] = time.perf_counter() - t0
    times = {name: [] for name in variants}
    extras = {name: {} for name in variants}
    for round_ in range(warmup + steps):
        for name, tr in trainers.items():
            batches = tr._next_step_batches()
            dist.barrier()
            stats = tr.train_step(batches)
            tr.step += 1
            if round_ >= warmup:
                times[name].append(stats.seconds)
                extras[name] = {k: float(v) if torch.is_tensor(v) else v for k, v in stats.extra.items()}
    base = statistics.median(times["plain"]) if "plain" in times else None
    report = {
        "machine": machine_info(),
        "params": trainers[variants[0]].num_params,
        "world_size": dist.world_size(),
        "steps": steps,
        "warmup": warmup,
        "fisher_examples": fisher_examples,
        "overrides": [*DEFAULTS, *overrides],
        "variants": {},
    }
    for name in variants:
        med = statistics.median(times[name])
        report["variants"][name] = {
            "step_time_s_median": med,
            "step_time_s_all": times[name],
            "vs_plain": med / base if base else None,
            "trainer_setup_s": setup[name],
            "regularizer_setup_s": sum(getattr(r, "setup_s", 0.0) for r in trainers[name].regularizers),
            "last_metrics": extras[name],
            **_state_bytes(trainers[name]),
        }
        if torch.cuda.is_available():
            report["variants"][name]["peak_mem_gb_all_variants"] = torch.cuda.max_memory_allocated() / 2**30
    for tr in trainers.values():
        tr.close()
    return report


def _print_table(report: dict) -> None:
    print(f"world size {report['world_size']}, params {report['params']:,}, {report['steps']} timed steps")
    print(f"{'variant':<12} {'step s':>8} {'vs plain':>9} {'setup s':>9}")
    for name, v in report["variants"].items():
        print(f"{name:<12} {v['step_time_s_median']:>8.3f} {v['vs_plain'] or 0:>8.2f}x {v['regularizer_setup_s']:>9.2f}")


def _main(args) -> int:
    if args.ranks > 1:
        out = Path(args.out).with_suffix(".worker.json")
        launcher = Path(sys.executable).with_name("deepspeed")
        cmd = [str(launcher if launcher.exists() else "deepspeed"), "--num_gpus", str(args.ranks),
               "--master_port", str(args.master_port), "--module", "remix_ds.bench.baselines", "--worker", str(out),
               *_passthrough(args)]
        subprocess.run(cmd, check=True)
        report = json.loads(out.read_text())
    else:
        report = bench(args.config, args.overrides, args.only or list(VARIANTS), args.steps, args.warmup,
                       args.fisher_examples)
    report["command"] = "remix-ds bench baselines " + " ".join(sys.argv[3:])
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report)
    return 0


def _passthrough(args) -> list[str]:
    out = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--fisher-examples", str(args.fisher_examples)]
    for v in args.only or []:
        out += ["--only", v]
    return out + ([args.config] if args.config else []) + list(args.overrides)


def _add_args(p) -> None:
    p.add_argument("config", nargs="?", help="run config (default: built-in defaults, tiny model)")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps per variant first")
    p.add_argument("--fisher-examples", type=int, default=64, help="regularize.ewc.num_examples of the EWC variants")
    p.add_argument("--only", action="append", choices=list(VARIANTS), help="run only these variants (repeatable)")


def add_bench_baselines_command(bsub) -> None:
    """Register ``remix-ds bench baselines``."""
    p = bsub.add_parser("baselines", help="step-time overhead of EWC and KL over plain stage-2 training",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_args(p)
    p.add_argument("--ranks", type=int, default=1, help="ZeRO-3 ranks (>1: relaunch through the deepspeed launcher)")
    p.add_argument("--master-port", type=int, default=29521)
    p.add_argument("--out", default="bench_baselines.json", help="JSON output path")
    p.set_defaults(func=_main)


if __name__ == "__main__":  # a rank under the deepspeed launcher
    parser = argparse.ArgumentParser()
    _add_args(parser)
    parser.add_argument("--worker", required=True, help="JSON written by rank 0")
    a, _ = parser.parse_known_args([x for x in sys.argv[1:] if not x.startswith("--local_rank")])
    rep = bench(a.config, a.overrides, a.only or list(VARIANTS), a.steps, a.warmup, a.fisher_examples)
    if dist.is_main():
        Path(a.worker).write_text(json.dumps(rep, indent=2) + "\n")
