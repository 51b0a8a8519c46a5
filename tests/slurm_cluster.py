"""A real one-node Slurm cluster for tests: munged + slurmctld + slurmd from a generated slurm.conf.

    with running_cluster(tmp_dir) as cluster:   # sets SLURM_CONF for this process while it runs
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env)

Everything lives under `tmp_dir` (munge key and socket, state and spool folders, logs, pid files);
the daemons listen on free ports, so the cluster never touches a system Slurm or munge and two
test sessions on one machine do not collide. The node is this machine (`socket.gethostname()`,
address 127.0.0.1) with `CPUS` CPUs; CPUs (not memory) are the consumable resource, so `--mem`
requests are checked against RealMemory but do not serialize jobs. No accounting storage: `sacct`
answers nothing here, so callers must not depend on it (submitit reads the result pickle; our
Slurm scheduler also polls `squeue`).

`skip_reason()` says exactly why a cluster cannot start (binaries absent, not root); the fixture
in conftest.py skips with it. Debian: `apt-get install -y slurm-wlm munge` (`.ci/run` does so).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
CPUS = 2
PARTITION = "remix"


def skip_reason() -> str | None:
    """None when a cluster can be started here, else the exact reason it cannot."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"slurm binaries not found: {', '.join(missing)} (apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a test Slurm cluster needs root (slurmd runs jobs as their user; SlurmUser=root)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    partition: str = PARTITION
    hostname: str = ""
    pids: dict[str, Path] = field(default_factory=dict)

    @property
    def env(self) -> dict:
        """os.environ plus SLURM_CONF: what sbatch/squeue/submitit need to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}\n{self.logs()}")
        return proc.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip()

    def logs(self, lines: int = 15) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (by their pid files)."""
        with contextlib.suppress(Exception):
            self.run("scancel", "--full", "--partition", self.partition, check=False)
            deadline = time.time() + 20
            while time.time() < deadline and self.run("squeue", "-h", "-o", "%i", check=False).strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.pids.get(name)
            if pid_file is None or not pid_file.is_file():
                continue
            with contextlib.suppress(ValueError, ProcessLookupError):
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)
                    if _is_zombie(pid):  # exited; its parent (init here) has not reaped it yet
                        break
                    time.sleep(0.1)


def write_conf(root: Path, hostname: str, ctld_port: int, slurmd_port: int, munge_socket: Path) -> Path:
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=remixtest",
        f"SlurmctldHost={hostname}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "JobRequeue=1",
        "SchedulerType=sched/backfill",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "InactiveLimit=0",
        "MinJobAge=600",
        "KillWait=5",
        "Waittime=0",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        f"NodeName={hostname} NodeAddr=127.0.0.1 CPUs={min(CPUS, os.cpu_count() or 1)} RealMemory=4096 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={hostname} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


@contextlib.contextmanager
def running_cluster(root: Path, timeout: float = 60.0):
    """Start munged, slurmctld and slurmd under `root`, wait for the node to be idle, yield, stop."""
    reason = skip_reason()
    if reason:
        raise RuntimeError(reason)
    root = Path(root)
    for d in ("munge", "state", "spool", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d).chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)  # munged refuses a key readable by others
    sock = root / "munge" / "munge.sock"
    hostname = socket.gethostname()
    ctld_port, slurmd_port = _free_ports(2)
    conf = write_conf(root, hostname, ctld_port, slurmd_port, sock)
    cluster = SlurmCluster(root, conf, hostname=hostname, pids={
        "munged": root / "munge" / "munged.pid", "slurmctld": root / "slurmctld.pid", "slurmd": root / "slurmd.pid"})
    saved = os.environ.get("SLURM_CONF")
    try:
        # --force: munged runs as root here (it would rather run as the munge user)
        cluster.run(_exe("munged"), "--force", f"--socket={sock}", f"--key-file={key}",
                    f"--log-file={root / 'log' / 'munged.log'}", f"--pid-file={cluster.pids['munged']}",
                    f"--seed-file={root / 'munge' / 'munged.seed'}")
        cluster.run(_exe("slurmctld"), "-f", str(conf))
        cluster.run(_exe("slurmd"), "-f", str(conf), "-N", hostname)
        deadline = time.time() + timeout
        while cluster.node_state() != "idle":
            if time.time() > deadline:
                raise RuntimeError(f"slurm node not idle after {timeout:.0f} s (state {cluster.node_state()!r})\n"
                                   + cluster.logs())
            time.sleep(0.5)
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
