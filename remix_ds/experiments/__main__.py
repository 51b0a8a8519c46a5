"""`python -m remix_ds.experiments CONFIG [a.b=value ...] [--dry-run]` = `remix-ds experiment ...`."""

import argparse
import sys

from remix_ds.configtools import ConfigError
from remix_ds.experiments.commands import add_experiment_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remix_ds.experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    add_experiment_command(sub)
    args = parser.parse_args(["experiment", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"remix-ds: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
