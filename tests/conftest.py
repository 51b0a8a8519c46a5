"""Shared test fixtures: subprocess launches through the real `deepspeed` launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_cmd(target: list[str], num_ranks: int = 2, module: bool = False) -> list[str]:
    """`deepspeed --num_gpus N [--module] target...` on a free port (CPU ranks use gloo)."""
    launcher = str(Path(sys.executable).with_name("deepspeed"))
    cmd = [launcher, "--num_gpus", str(num_ranks), "--master_port", str(free_port())]
    if module:
        cmd.append("--module")
    return cmd + target


def run_cmd(cmd: list[str], timeout: float = 600, env: dict | None = None, check: bool = True, cwd=None):
    """Run a command, print its output on failure, return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or REPO)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture
def run_deepspeed():
    """run_deepspeed(target_args, num_ranks=2, module=False, **kw) -> CompletedProcess."""

    def _run(target: list[str], num_ranks: int = 2, module: bool = False, **kw):
        return run_cmd(deepspeed_cmd(target, num_ranks, module), **kw)

    return _run
