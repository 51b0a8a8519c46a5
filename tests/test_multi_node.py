"""Two nodes simulated on one machine: two DeepSpeed launchers (`--no_ssh --node_rank 0/1`) on CPU/gloo.

The same per-step losses as one node with two ranks, exact resume from a checkpoint written to a
shared folder and to node-local folders (each node in its own mount namespace, so the same
train.output_dir is a different folder per node), and a killed node failing its partner in one line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, deepspeed_cmd, free_port, run_cmd
from remix_ds.engine.metrics import read_metrics

pytestmark = pytest.mark.slow  # launches deepspeed

TRAIN = ["--module", "remix_ds.train", str(REPO / "configs/tiny.yaml"), "data.kvr.num_pairs=16", "train.max_steps=4",
         "train.save_every=2", "train.progress_bar=false", "train.tensorboard=false", "train.export_final=false"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _node(rank: int, port: int, hostfile: Path, out: Path, extra: list[str], private: Path | None = None) -> subprocess.Popen:
    """One node's launcher; with `private`, in its own mount namespace where `out`'s parent is `private`."""
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--hostfile", str(hostfile), "--no_ssh", "--node_rank",
           str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port), *TRAIN, f"train.output_dir={out}", *extra]
    if private is not None:
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f'mount --bind "{private}" "{out.parent}" && exec "$0" "$@"', *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
                            start_new_session=True)


def _two_nodes(tmp: Path, out: Path, extra: list[str], private: list[Path] | None = None, timeout: float = 600):
    hostfile = tmp / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    port = free_port()
    procs = [_node(r, port, hostfile, out, extra, private[r] if private else None) for r in (0, 1)]
    results = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            raise
        results.append((p.returncode, o, e))
    for rc, o, e in results:
        assert rc == 0, f"--- stdout ---\n{o[-4000:]}\n--- stderr ---\n{e[-4000:]}"
    return results


def _losses(run: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["lr"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def _can_unshare() -> str | None:
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def test_two_nodes_equal_one_node_and_resume_exactly_from_shared_and_node_local_folders(tmp_path):
    ref = tmp_path / "ref"
    run_cmd(deepspeed_cmd(TRAIN + [f"train.output_dir={ref}"], num_ranks=2), env={"OMP_NUM_THREADS": "1"})
    expected = _losses(ref)
    assert [s for s, _, _ in expected] == [1, 2, 3, 4]

    shared = tmp_path / "shared" / "run"
    _two_nodes(tmp_path, shared, ["train.stop_at_step=2"])  # pauses at checkpoint-2
    assert (shared / "latest").read_text().strip() == "checkpoint-2"
    (rc0, out0, _), _ = _two_nodes(tmp_path, shared, [])
    assert f"resumed from {shared / 'checkpoint-2'} at step 2" in out0
    assert _losses(shared) == expected  # to the last digit

    reason = _can_unshare()
    if reason:
        pytest.skip(f"no mount namespaces here ({reason}): node-local folders not simulated")
    mount = tmp_path / "local"  # the same path on both nodes; a different folder behind it on each
    mount.mkdir()
    disks = [tmp_path / "node0-disk", tmp_path / "node1-disk"]
    for d in disks:
        d.mkdir()
    run = mount / "run"
    _two_nodes(tmp_path, run, ["train.stop_at_step=2"], private=disks)
    ckpt1 = sorted(p.name for p in (disks[1] / "run" / "checkpoint-2").iterdir())
    assert "rank_state_1.pt" in ckpt1 and "complete.json" in ckpt1 and "rank_state_0.pt" not in ckpt1
    assert "rank_state_0.pt" in {p.name for p in (disks[0] / "run" / "checkpoint-2").iterdir()}
    assert (disks[1] / "run" / "latest").read_text().strip() == "checkpoint-2"
    (_, out0, _), _ = _two_nodes(tmp_path, run, [], private=disks)
    assert f"resumed from {run / 'checkpoint-2'} at step 2" in out0
    assert _losses(disks[0] / "run") == expected


def test_killing_one_node_fails_the_other_within_a_timeout_in_one_line(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    out, port = tmp_path / "run", free_port()
    procs = [_node(r, port, hostfile, out, ["train.max_steps=400", "train.save_every=0"]) for r in (0, 1)]
    try:
        start = time.time()
        while not ((out / "metrics.jsonl").is_file() and len(read_metrics(out / "metrics.jsonl")) >= 2):
            assert time.time() - start < 400 and procs[0].poll() is None, "the two nodes never trained two steps"
            time.sleep(0.5)
        os.killpg(procs[1].pid, signal.SIGKILL)  # node 1: its launcher and its rank
        killed = time.time()
        _, err = procs[0].communicate(timeout=120)  # a hang fails here
        waited = time.time() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert procs[0].returncode != 0 and waited < 60, (procs[0].returncode, waited)
    ours = [line for line in err.splitlines() if line.startswith("remix-ds: error:")]
    assert len(ours) == 1, err[-3000:]
    assert re.fullmatch(r"remix-ds: error: rank 0 lost another rank of the job \(.*Connection (closed|reset) by peer[^)]*\); "
                        r"see the other nodes' logs, then rerun the same command on every node to resume from the newest "
                        r"checkpoint", ours[0]), ours[0]
    assert "Traceback" not in err
