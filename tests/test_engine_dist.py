"""engine.dist's collectives: a world of one (no process group, and a gloo group of one) and two gloo ranks."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from remix_ds.engine import dist


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_world_of_one():
    obj = {"ids": [3, 1], "x": np.arange(2)}
    parts = dist.all_gather_objects(obj)
    assert len(parts) == 1 and parts[0] is obj
    assert dist.all_reduce_max(7) == 7 and type(dist.all_reduce_max(7)) is int
    assert dist.all_reduce_max(np.int64(4)) == 4
    assert dist.all_reduce_max(2.5) == 2.5 and type(dist.all_reduce_max(2.5)) is float


def test_world_of_one_without_a_process_group():
    assert not tdist.is_initialized()
    _check_world_of_one()


def test_world_of_one_with_a_gloo_group():
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_port()}", rank=0, world_size=1)
    try:
        _check_world_of_one()
    finally:
        tdist.destroy_process_group()


def _two_ranks(rank: int, port: int, out) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out[rank] = (dist.all_gather_objects({"rank": rank, "rows": [(rank, "r")] * (rank + 1)}),
                     dist.all_reduce_max(10 - 7 * rank), dist.all_reduce_max(0.5 + rank),
                     type(dist.all_reduce_max(np.int64(rank))).__name__)
    finally:
        tdist.destroy_process_group()


def test_two_gloo_ranks():
    out = mp.Manager().dict()
    mp.spawn(_two_ranks, args=(_port(), out), nprocs=2, join=True)
    expected_parts = [{"rank": 0, "rows": [(0, "r")]}, {"rank": 1, "rows": [(1, "r")] * 2}]
    for r in (0, 1):
        parts, imax, fmax, kind = out[r]
        assert parts == expected_parts  # rank order, the same list on every rank
        assert imax == 10 and fmax == pytest.approx(1.5) and kind == "int"


_TAKEN_PORT_PROBE = """
import os, socket, sys
import remix_ds.engine.dist as d
busy = socket.socket(); busy.bind(("127.0.0.1", 0)); busy.listen(); taken = busy.getsockname()[1]
ports = iter([taken])
real = d._free_port
d._free_port = lambda: next(ports, None) or real()
d.init_distributed("gloo")
print("PORT", taken, os.environ["MASTER_PORT"], d.world_size())
"""


@pytest.mark.slow  # a subprocess (a process group in this process would leak into other tests)
def test_a_world_of_one_retries_when_its_free_port_was_taken(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _TAKEN_PORT_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PORT"))
    _, taken, used, world = line.split()
    assert taken != used and world == "1"


_CHILD_OF_A_WORLD_OF_ONE = """
import os, subprocess, sys
import remix_ds.engine.dist as d
d.init_distributed("gloo")  # this process now holds MASTER_PORT, and its environment says RANK=0
child = subprocess.run([sys.executable, "-c", "import remix_ds.engine.dist as d; d.init_distributed('gloo'); "
                        "import os; print('CHILD', d.world_size(), os.environ['MASTER_PORT'])"],
                       capture_output=True, text=True, timeout=120)
print(child.stdout, child.stderr[-2000:])
print("PARENT", os.environ["MASTER_PORT"], child.returncode)
"""


@pytest.mark.slow  # subprocesses
def test_a_child_of_a_world_of_one_picks_its_own_port():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _CHILD_OF_A_WORLD_OF_ONE], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = next(x for x in proc.stdout.splitlines() if x.strip().startswith("CHILD")).split()
    parent = next(x for x in proc.stdout.splitlines() if x.startswith("PARENT")).split()
    assert parent[2] == "0", proc.stdout[-3000:]
    assert child[1] == "1" and child[2] != parent[1]


def test_only_the_parents_own_variables_count_as_inherited():
    mark = {"REMIX_DS_WORLD_OF_ONE_PID": "100:41000"}
    parents = {**mark, "RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "41000"}
    assert dist._inherited_world_of_one(parents, pid=200)  # a plain child of the world of one
    assert not dist._inherited_world_of_one(parents, pid=100)  # the world of one itself
    # a rank that a launcher started from the world of one's process: the launcher set them anew
    assert not dist._inherited_world_of_one({**parents, "RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "52000"}, 200)
    assert not dist._inherited_world_of_one({**parents, "MASTER_PORT": "52000"}, 200)
    assert not dist._inherited_world_of_one({"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "41000"}, 200)


_LAUNCHED_FROM_A_WORLD_OF_ONE = """
import subprocess, sys
import remix_ds.engine.dist as d
d.init_distributed("gloo")  # as an in-process test does: this environment now says RANK=0, WORLD_SIZE=1
sys.path.insert(0, "tests")
from helpers import deepspeed_cmd, run_cmd
probe = ("import sys, remix_ds.engine.dist as d; d.init_distributed('gloo'); "  # one write: ranks share the pipe
         "sys.stdout.write(f'RANK {d.rank()} OF {d.world_size()}' + chr(10)); d.shutdown()")
open(sys.argv[1], "w").write(probe)
print(run_cmd(deepspeed_cmd([sys.argv[1]], 2), timeout=240).stdout)
"""


@pytest.mark.slow  # the real launcher
def test_ranks_a_launcher_starts_from_a_world_of_one_see_the_launchers_world(tmp_path):
    """The CI failure of session 2: pytest's own world of one made launched ranks worlds of one."""
    import subprocess
    import sys

    from helpers import REPO

    proc = subprocess.run([sys.executable, "-c", _LAUNCHED_FROM_A_WORLD_OF_ONE, str(tmp_path / "probe.py")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = sorted(x for x in proc.stdout.splitlines() if x.startswith("RANK"))
    assert seen == ["RANK 0 OF 2", "RANK 1 OF 2"], proc.stdout[-3000:]


_SHM_PROBE = """
import sys
import remix_ds.engine.dist as d
from deepspeed.comm import comm
d.init_distributed("gloo")
import os
from pathlib import Path
mine = Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}_{d.rank()}"
total = d.all_reduce_sum([1.0], __import__("torch").device("cpu"))  # the collectives work without the op
sys.stdout.write(f"SHM {d.rank()} {mine.exists()} {comm.cdb.shm_comm_op is None} {total}" + chr(10))  # one write
d.shutdown()  # as the package's entry points: gloo's threads left to interpreter exit can abort a rank
"""


@pytest.mark.slow  # the real launcher
def test_cpu_ranks_build_no_shm_op_leave_no_shm_file_and_clear_a_killed_builds_lock(tmp_path):
    """DeepSpeed's CPU backend JIT-built its shm all-reduce op in every init (47 s on a fresh machine),
    made a 69 MB /dev/shm file per rank that it never removed, and a lock left by a killed build of
    an op hung every later run that needed it."""
    import glob

    from helpers import deepspeed_cmd, run_cmd

    ext = tmp_path / "torch_extensions"  # a fresh machine's: nothing built yet
    stale = ext / "cpu_adam" / "lock"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    os.utime(stale, (time.time() - 7200,) * 2)
    probe = tmp_path / "probe.py"
    probe.write_text(_SHM_PROBE)
    cmd = deepspeed_cmd([str(probe)], 2)
    port = cmd[cmd.index("--master_port") + 1]
    out = run_cmd(cmd, timeout=240, env={"TORCH_EXTENSIONS_DIR": str(ext)}).stdout
    assert sorted(x for x in out.splitlines() if x.startswith("SHM")) == ["SHM 0 False True [2.0]",
                                                                         "SHM 1 False True [2.0]"], out[-3000:]
    assert glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*") == []
    assert not stale.exists() and [p.name for p in ext.iterdir()] == ["cpu_adam"]  # nothing was built
    removed = [x for x in out.splitlines() if "[remix-ds] removed" in x]
    assert len(removed) == 1 and f"removed {stale}: torch's build lock of cpu_adam, 120 min old" in removed[0]


def _plant(path: Path, age_s: float) -> Path:
    path.parent.mkdir(parents=True)
    path.write_text("")
    os.utime(path, (time.time() - age_s,) * 2)
    return path


def test_killed_builds_locks_are_removed_and_young_ones_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert dist.extension_build_root() == tmp_path
    old = _plant(tmp_path / "cpu_adam" / "lock", 3600)
    older = _plant(tmp_path / "py311_cpu" / "fused_adam" / "lock", 7200)  # the default root's layout
    young = _plant(tmp_path / dist.SHM_OP / "lock", 5)
    lines = []
    assert dist.clear_stale_build_locks(log=lambda m, **_: lines.append(m)) == [old, older]
    assert not old.exists() and not older.exists() and young.exists()  # a build may hold the young one
    assert lines == [  # in path order
        f"[remix-ds] removed {old}: torch's build lock of cpu_adam, 60 min old, left by a killed build "
        "(a run needing that op would have waited on it forever)",
        f"[remix-ds] note: {young} is 5 s old: a build of {dist.SHM_OP} runs, or was killed; a run needing "
        "that op waits for it (remove the file if no build runs)",
        f"[remix-ds] removed {older}: torch's build lock of fused_adam, 120 min old, left by a killed build "
        "(a run needing that op would have waited on it forever)"]
    monkeypatch.setenv("LOCAL_RANK", "1")  # one process per node (local rank 0) looks; the others leave it
    other = _plant(tmp_path / "cpu_lion" / "lock", 3600)
    assert dist.clear_stale_build_locks(log=lines.append) == [] and other.exists() and len(lines) == 3
