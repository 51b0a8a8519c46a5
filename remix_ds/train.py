"""Training entry point for the deepspeed launcher.

usage: deepspeed --num_gpus 8 [--hostfile launch/hostfile] --module remix_ds.train CONFIG.yaml [a.b=value ...]
       python -m remix_ds.train CONFIG.yaml [a.b=value ...]

Same arguments as `remix-ds train` (see `remix-ds train --help`): a YAML/JSON run config and dotted
overrides, which win over the file.
"""

from __future__ import annotations

import os
import sys

from remix_ds.assemble import build_trainer
from remix_ds.config import load_config
from remix_ds.configtools import ConfigError
from remix_ds.engine import dist
from remix_ds.errors import RemixError, debug_enabled


def run(config_path: str | None, overrides: list[str]) -> None:
    """Parse, build (eval hooks, regularizers, trainer), train, close (also on error)."""
    cfg = load_config(config_path, overrides)  # fails on bad keys before anything is built
    trainer = build_trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The deepspeed launcher appends --local_rank=N; the rank also comes from the environment.
    argv = [a for a in argv if not a.startswith("--local_rank")]
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    config_path = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if config_path else argv
    try:
        run(config_path, overrides)
    except RemixError as e:
        if debug_enabled():
            raise
        # Input errors are found identically on every rank (checkpoint checks are gathered first),
        # so rank 0 alone prints the one line; every rank exits 2.
        if os.environ.get("RANK", "0") == "0":
            kind = "config error" if isinstance(e, ConfigError) else "error"
            print(f"remix-ds: {kind}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except RuntimeError as e:
        why = dist.peer_lost(e)
        if why is None or debug_enabled():
            raise
        # A peer died (killed node, crash, OOM): this rank's collective failed instead of hanging.
        print(f"remix-ds: error: rank {os.environ.get('RANK', '0')} lost another rank of the job ({why[:160]}); "
              "see the other nodes' logs, then rerun the same command on every node to resume from the newest "
              "checkpoint", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
