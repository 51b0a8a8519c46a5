"""`scheduler.kind: local`: a grid's jobs (plan.py) as concurrent subprocesses on disjoint device groups.

    python -m remix_ds.experiments.job OUT JOB_ID --devices 2,3 --master-port P     (one per job)

At most K jobs run at once (K = scheduler.max_concurrent, or as many groups of
`gpus_per_cell` devices as there are; on CPU 2); a job starts when its deps are done. Each
running job holds one device group: on GPUs its CUDA_VISIBLE_DEVICES is the group and its
stages' deepspeed launcher gets `--include localhost:<group>` (jobs.GridJobs.stage_launcher); on CPU
the group's size is the number of ranks. Every job gets its own master port. A job's output
goes to its log file (jobs.GridJobs.job_log); one line per start and finish. A failed job fails the
jobs that depend on it (`blocked`: a cell then records error.json naming the failed job's log)
and nothing else. SIGINT / SIGTERM terminate the running jobs' process groups; their stages
resume from their checkpoints on a rerun, finished jobs are skipped.

Also `restrict_launcher`: a stage's deepspeed launcher placed on one device group.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from remix_ds.configtools import ConfigError
from remix_ds.experiments.config import SchedulerConfig
from remix_ds.experiments.plan import Job, JobRunner

CPU_CONCURRENT = 2
"""Jobs at once on a machine without GPUs when scheduler.max_concurrent is 0."""


@dataclass(frozen=True)
class DeviceGroup:
    """The devices one running job owns: GPU ids (as CUDA_VISIBLE_DEVICES spells them) or CPU slots."""

    devices: tuple[str, ...]


def available_devices(cfg: SchedulerConfig, cuda: bool) -> list[str]:
    """The GPUs this process may use (its CUDA_VISIBLE_DEVICES, else all), or CPU slots for
    max_concurrent (default 2) jobs of gpus_per_cell ranks."""
    if cuda:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        if visible:
            return [d.strip() for d in visible.split(",") if d.strip()]
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    return [str(i) for i in range((cfg.max_concurrent or CPU_CONCURRENT) * cfg.gpus_per_cell)]


def device_groups(devices: list[str], gpus_per_cell: int, max_concurrent: int = 0) -> list[DeviceGroup]:
    """Disjoint groups of `gpus_per_cell` devices, at most `max_concurrent` (0: as many as fit)."""
    n = len(devices) // gpus_per_cell
    if n == 0:
        raise ConfigError(f"scheduler.gpus_per_cell={gpus_per_cell} but only {len(devices)} device(s) are available "
                          f"({','.join(devices) or 'none'})")
    if max_concurrent:
        n = min(n, max_concurrent)
    return [DeviceGroup(tuple(devices[i * gpus_per_cell:(i + 1) * gpus_per_cell])) for i in range(n)]


def free_port(exclude: set[int] = frozenset(), host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (on ``host``; "": every interface, for a multi-node master)
    and that no other running job of this scheduler was given."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port


_PLACEMENT_FLAGS = {"--num_gpus", "--num-gpus", "--include", "--exclude", "--master_port", "--master-port",
                    "--num_nodes", "--num-nodes", "--hostfile", "-H"}


def restrict_launcher(words: list[str], devices: list[str] | tuple[str, ...], port: int | None, cuda: bool) -> list[str]:
    """`deepspeed ...` placed on exactly `devices` (GPUs: --include localhost:<ids>; CPU: --num_gpus
    <n> ranks) with `--master_port port`; the launcher's other flags are kept."""
    kept, i = [], 1
    while i < len(words):
        w = words[i]
        if w.split("=", 1)[0] in _PLACEMENT_FLAGS:
            i += 1 if "=" in w else 2
            continue
        kept.append(w)
        i += 1
    place = ["--include", f"localhost:{','.join(devices)}"] if cuda else ["--num_gpus", str(len(devices))]
    return ["deepspeed", *kept, *place, *(["--master_port", str(port)] if port else [])]


def job_command(out: Path, job: Job, group: DeviceGroup, port: int) -> list[str]:
    return [sys.executable, "-m", "remix_ds.experiments.job", str(out), job.id,
            "--devices", ",".join(group.devices), "--master-port", str(port)]


try:  # loaded here, not in the forked child (no imports between fork and exec)
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: jobs outlive a SIGKILL-ed scheduler (SIGTERM/SIGINT still end them)
    _LIBC = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the job gets SIGTERM if the scheduler dies (even by SIGKILL), and takes its group down."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    group: DeviceGroup
    port: int
    log: Path
    start: float
    claim: FileLock | None


def run_local(jobs: list[Job], out: Path, cfg: SchedulerConfig, runner: JobRunner, *,
              log: Callable[[str], None] = print, cuda: bool | None = None,
              command: Callable[[Path, Job, DeviceGroup, int], list[str]] = job_command,
              poll_s: float = 0.2) -> dict[str, int]:
    """Run the plan; returns every job's exit code (0: done).

    `runner` (`plan.JobRunner`): `job_finished(job)`: 0 / 1 for work finished earlier (not started
    again), None to run it. `job_blocked(job, cause, cause_log, code)`: a job that will not run (or
    died without recording why) because `cause` failed. `job_claim(job)`: a lock file this scheduler
    holds while the job runs; a job another scheduler holds (a cooperating grid in the same folder)
    starts only when nothing else is ready (it then waits for the other's job, and finds it finished)."""
    finished, job_log, blocked, claim = runner.job_finished, runner.job_log, runner.job_blocked, runner.job_claim
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    groups = device_groups(available_devices(cfg, cuda), cfg.gpus_per_cell, cfg.max_concurrent)
    codes: dict[str, int] = {}
    cause: dict[str, tuple[Job, Path, int]] = {}
    for job in jobs:
        code = finished(job)
        if code is not None:
            codes[job.id] = code
            cause[job.id] = (job, job_log(job), code)
    pending = [j for j in jobs if j.id not in codes]
    if len(pending) < len(jobs):
        log(f"[scheduler] {len(jobs) - len(pending)} of {len(jobs)} jobs finished earlier")
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // (len(groups) * cfg.gpus_per_cell)))
    log(f"[scheduler] {len(pending)} jobs, up to {len(groups)} at once on "
        f"{'GPUs' if cuda else 'CPU'} groups {' '.join(','.join(g.devices) for g in groups)}")
    free = list(groups)
    running: dict[str, _Running] = {}
    t0 = time.perf_counter()

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread: the caller handles signals
            pass
    try:
        while pending or running:
            for job in list(pending):  # a failed dependency fails its dependents, and only them
                bad = next((d for d in job.deps if codes.get(d, 0) != 0), None)
                if bad is not None:
                    root = cause[bad]
                    codes[job.id], cause[job.id] = root[2], root
                    blocked(job, root[0], root[1], root[2])
                    log(f"[scheduler] skip  {job.label}: {root[0].label} failed (log {root[1]})")
                    pending.remove(job)
            for job in [j for j in pending if all(codes.get(d) == 0 for d in j.deps)]:
                if not free:
                    break
                ok, lock = _try_claim(claim(job))
                # a cooperating grid's scheduler runs it (or ran it since we looked): collect it once finished
                code = finished(job) if not ok or lock is not None else None
                if code is not None:
                    codes[job.id], cause[job.id] = code, (job, job_log(job), code)
                    pending.remove(job)
                    log(f"[scheduler] {'done ' if code == 0 else 'FAILED'} {job.label} by another grid")
                if lock is not None and (code is not None or not ok):
                    lock.release()
                if not ok or code is not None:
                    continue
                group = free.pop(0)
                port = free_port({r.port for r in running.values()})
                path = job_log(job)
                path.parent.mkdir(parents=True, exist_ok=True)
                env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads}
                if cuda:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(group.devices)
                with path.open("a") as f:
                    proc = subprocess.Popen(command(out, job, group, port), stdout=f, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True, preexec_fn=_die_with_parent)
                running[job.id] = _Running(job, proc, group, port, path, time.perf_counter(), lock)
                pending.remove(job)
                log(f"[scheduler] start {job.label} on {'GPU' if cuda else 'CPU'} {','.join(group.devices)} "
                    f"(port {port}) -> {path}")
            for jid, r in list(running.items()):
                code = r.proc.poll()
                if code is None:
                    continue
                del running[jid]
                free.append(r.group)
                if r.claim is not None:
                    r.claim.release()
                codes[jid] = code
                cause[jid] = (r.job, r.log, code)
                wall = time.perf_counter() - r.start
                if code == 0:
                    log(f"[scheduler] done  {r.job.label} in {wall:.1f} s")
                else:
                    log(f"[scheduler] FAILED {r.job.label} (exit {code}) in {wall:.1f} s; log {r.log}")
                    blocked(r.job, r.job, r.log, code)
            if pending or running:
                time.sleep(poll_s)
    finally:
        if running:
            log(f"[scheduler] interrupted: terminating {len(running)} running job(s); rerun to resume "
                "(finished jobs are skipped, stages resume from their checkpoints)")
            _terminate([r.proc for r in running.values()])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = sum(1 for c in codes.values() if c != 0)
    log(f"[scheduler] {len(jobs)} jobs in {time.perf_counter() - t0:.1f} s, {failed} failed")
    return codes


def _try_claim(path: Path | None) -> tuple[bool, FileLock | None]:
    """(True, held lock) when this scheduler may run the job, (False, None) when another holds it."""
    if path is None:
        return True, None
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False, None
    return True, lock


def _terminate(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM each job's process group (the job, its launcher, its ranks), SIGKILL after the grace."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
