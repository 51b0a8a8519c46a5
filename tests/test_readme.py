"""The README's two commands are the ones CI and users run."""

import re

from helpers import REPO


def readme_commands():
    return re.findall(r"```bash\n(python3\.11 -m venv[^\n]*)\n```", (REPO / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    main, tests = readme_commands()
    ci_lines = [l for l in (REPO / ".ci" / "run").read_text().splitlines() if l and not l.startswith("#")]
    assert tests in ci_lines
    assert tests.endswith("python -m pytest -q") and "pip install -c constraints-cpu.txt torch==2.13.0" in tests
    assert main.endswith("remix-ds demo") and "pip install -c constraints-cpu.txt torch==2.13.0" in main
    # every install step of both commands uses the lock
    for command in (main, tests):
        installs = [part.strip() for part in command.split("&&") if part.strip().startswith("pip install")]
        assert len(installs) == 2 and all("-c constraints-cpu.txt" in part for part in installs), installs


def test_demo_command_exists():
    from remix_ds.cli import build_parser

    args = build_parser().parse_args(["demo", "train.epochs=1"])
    assert args.overrides == [] and args.config == "train.epochs=1"  # main() moves it to overrides


def test_overrides_after_options_are_kept():
    import argparse

    from remix_ds import cli

    seen = {}

    def fake_train(args):
        seen.update(config=args.config, overrides=args.overrides, num_gpus=args.num_gpus)
        return 0

    parser = cli.build_parser()
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    train.set_defaults(func=fake_train)
    orig = cli.build_parser
    cli.build_parser = lambda: parser
    try:
        assert cli.main(["train", "cfg.yaml", "--num-gpus", "2", "train.max_steps=2", "optim.lr=1e-4"]) == 0
    finally:
        cli.build_parser = orig
    assert seen == {"config": "cfg.yaml", "overrides": ["train.max_steps=2", "optim.lr=1e-4"], "num_gpus": 2}
