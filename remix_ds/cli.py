"""`remix-ds` command line: parse -> build -> run -> close. Each subcommand lives with its module."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from remix_ds.configtools import ConfigError
from remix_ds.errors import RemixError, debug_enabled


def _train(args) -> int:
    if args.num_gpus > 1:
        # Re-launch through the real deepspeed launcher, one process per device.
        launcher = Path(sys.executable).with_name("deepspeed")
        cmd = [str(launcher if launcher.exists() else "deepspeed"), "--num_gpus", str(args.num_gpus)]
        if args.master_port:
            cmd += ["--master_port", str(args.master_port)]
        cmd += ["--module", "remix_ds.train", *([args.config] if args.config else []), *args.overrides]
        os.execvp(cmd[0], cmd)
    from remix_ds.train import run

    run(args.config, args.overrides)
    return 0


def _export(args) -> int:
    from remix_ds.engine.export import export_checkpoint
    from remix_ds.models import resolve_dtype

    dtype = None if args.dtype == "fp32" else resolve_dtype(args.dtype)
    out = export_checkpoint(args.checkpoint, args.out, dtype=dtype)
    print(f"exported {args.checkpoint} -> {out}")
    return 0


def _info(args) -> int:
    import deepspeed
    import torch
    import transformers

    from remix_ds import __version__, models

    info = {
        "remix_ds": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed.__version__,
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "flash_attn": models.flash_attn_available(),
        "attn_implementation(auto)": models.choose_attn_implementation("auto"),
        "dtype(auto)": str(models.resolve_dtype("auto")).replace("torch.", ""),
        "cache": str(models.cache_root()),
    }
    if args.config:
        from remix_ds.config import load_config

        cfg = load_config(args.config, args.overrides)
        cfg.validate(1)  # a ConfigError (one line), not `grad_accum: null`
        info["config"] = args.config
        info["grad_accum(world=1)"] = cfg.grad_accum(1)
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remix-ds", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of input errors (also REMIX_DS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one stage (single process, or --num-gpus N through deepspeed)")
    p.add_argument("config", nargs="?", help="YAML/JSON run config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5")
    p.add_argument("--num-gpus", type=int, default=1, help="launch N ranks with the deepspeed launcher")
    p.add_argument("--master-port", type=int, default=0, help="rendezvous port for --num-gpus > 1")
    p.set_defaults(func=_train)

    p = sub.add_parser("export", help="ZeRO checkpoint -> Hugging Face model folder (safetensors)")
    p.add_argument("checkpoint", help="RUN_DIR/checkpoint-N")
    p.add_argument("out", help="output folder")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="weights dtype to save")
    p.set_defaults(func=_export)

    p = sub.add_parser("info", help="versions, devices, attention implementation; validates a config if given")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_info)

    _add_module_commands(sub)
    return parser


def _add_module_commands(sub) -> None:
    """Subcommands that live with their modules."""
    from remix_ds.baselines.filter_known import add_filter_known_command
    from remix_ds.bench import add_bench_command
    from remix_ds.data.commands import add_build_shards_command
    from remix_ds.demo import add_demo_command
    from remix_ds.eval.commands import add_eval_command
    from remix_ds.experiments.commands import add_experiment_command, add_frontier_command
    from remix_ds.experiments.prepare_cli import add_prepare_data_command
    from remix_ds.experiments.preserve_cli import add_preserve_command
    from remix_ds.forgetting.commands import add_forgetting_command

    for add in (add_demo_command, add_experiment_command, add_eval_command, add_build_shards_command, add_prepare_data_command,
                add_filter_known_command, add_forgetting_command, add_bench_command, add_preserve_command, add_frontier_command):
        add(sub)


def _config_or_override(args) -> None:
    """`remix-ds train a.b=1` has no config file: the first positional is an override."""
    config = getattr(args, "config", None)
    if config and "=" in config and not Path(config).exists():
        args.overrides = [config, *args.overrides]
        args.config = None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `deepspeed --module remix_ds.cli ...` appends --local_rank=N; the rank comes from the environment.
    args, extra = parser.parse_known_args([a for a in argv if not a.startswith("--local_rank")])
    # argparse stops filling positionals after an option (`train CFG --num-gpus 2 a.b=1`): dotted
    # overrides that land in `extra` still belong to the command.
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _config_or_override(args)
    if args.debug:
        os.environ["REMIX_DS_DEBUG"] = "1"  # also for ranks started by the deepspeed launcher
    try:
        return args.func(args) or 0
    except RemixError as e:
        if debug_enabled():
            raise
        kind = "config error" if isinstance(e, ConfigError) else "error"
        print(f"remix-ds: {kind}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
