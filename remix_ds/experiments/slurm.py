"""`scheduler.kind: slurm`: a grid's plan (plan.py) as dependent Slurm jobs, submitted through submitit.

    stage0                  sbatch                                (if configured)
    stage1:<key>            sbatch --dependency=afterok:<stage0>  (one per shared stage 1)
    cell:<key>              sbatch --dependency=afterok:<its stage 1>

One Slurm job per plan job, not job arrays: each cell depends on exactly its own stage 1, which an
array's dependency cannot say (`afterok` on an array waits for all of it; `aftercorr` pairs equal
task ids only), and a rerun submits only the unfinished jobs, which are rarely an array's shape.
A grid is a few hundred jobs at most (the paper's 3 x 8 x 11 is 264 cells), well inside common
submission limits. Jobs already finished on disk are not submitted; their dependants get no
dependency on them. Every job runs `python -m remix_ds.experiments.job OUT JOB_ID ...` (what
`scheduler.kind: local` runs too) from a `SlurmTask`, whose `checkpoint()` (submitit's `Checkpointable`) makes a
preempted or timed-out job requeue itself: Slurm's signal (`--signal=USR2@90`, or
`scancel --signal=USR2`) reaches submitit, which requeues the same task; the stage resumes from its
newest checkpoint (every stage runs with `train.resume=auto`), a finished stage is skipped.

Placement inside the allocation: one node with GPUs: the stages' deepspeed launcher gets the
job's GPUs (`--include localhost:<CUDA_VISIBLE_DEVICES>`) and a free master port; several
nodes: a hostfile from `scontrol show hostnames $SLURM_JOB_NODELIST` (`<node> slots=<gpus>`),
`deepspeed --hostfile H --master_addr <first node> --master_port P` run from the first node (the
other nodes' tasks return at once; the launcher reaches them by its own runner, pdsh/ssh); CPU
jobs (`gpus_per_node: 0`): the configured `launcher`.

What was submitted lives in `OUT/slurm/submitted.json` (plan job id -> Slurm job id): a rerun of
`remix-ds experiment CONFIG` waits for jobs still queued instead of submitting them twice, then
collects. The waiting reads `squeue` (clusters without accounting have no `sacct`); a cell whose
stage 1 failed (pending with `DependencyNeverSatisfied`) is cancelled and records the failure;
a job that left the queue without finishing its work records that too, naming its log.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import submitit
from filelock import FileLock

from remix_ds.cachedir import write_text_atomic
from remix_ds.errors import RemixError
from remix_ds.experiments.config import SchedulerConfig, SlurmConfig
from remix_ds.experiments.plan import Job, JobRunner
from remix_ds.experiments.scheduler import free_port

RECORD = "submitted.json"
NEVER = ("DependencyNeverSatisfied",)
"""squeue reasons of a pending job that will never start (a dependency failed)."""


class SlurmError(RemixError):
    """sbatch/squeue failed (the message names the command and its error)."""


def folder(out: Path) -> Path:
    """`OUT/slurm/`: submitit's job folders (`<job id>/`: sbatch script, logs, pickles) and the record."""
    return Path(out) / "slurm"


# ---- the job ------------------------------------------------------------------------------------
class SlurmTask(submitit.helpers.Checkpointable):
    """What every Slurm job runs: one plan job, placed on the allocation's nodes and GPUs.

    `checkpoint()` (inherited) resubmits this same task on preemption / timeout; nothing else is
    needed because the stages resume from their own checkpoints (train.resume=auto)."""

    def __init__(self, output_dir: str, job_id: str, nodes: int, gpus_per_node: int):
        self.output_dir, self.job_id, self.nodes, self.gpus_per_node = str(output_dir), job_id, nodes, gpus_per_node

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        if env.global_rank != 0:  # multi-node: the first node's task runs the launcher for all
            return 0
        devices, launcher = placement(self.nodes, self.gpus_per_node, os.environ, Path(self.output_dir) / "slurm")
        cmd = job_command(self.output_dir, self.job_id, devices, free_port(), launcher)
        print(f"[experiment] slurm job {env.job_id}: {shlex.join(cmd)}", flush=True)
        rc = subprocess.run(cmd).returncode
        if rc != 0:  # the Slurm job fails, so its `afterok` dependants never start
            raise RuntimeError(f"{self.job_id} failed (exit {rc}); its output is above in this log")
        return rc


def job_command(output_dir: str, job_id: str, devices: str | None, port: int, launcher: str | None) -> list[str]:
    """`python -m remix_ds.experiments.job ...` (job.run_job in its own process, as `local` runs it)."""
    cmd = [sys.executable, "-m", "remix_ds.experiments.job", str(output_dir), job_id, "--master-port", str(port)]
    cmd += ["--devices", devices] if devices else []
    return cmd + (["--launcher", launcher] if launcher else [])


def placement(nodes: int, gpus_per_node: int, environ, scratch: Path) -> tuple[str | None, str | None]:
    """(devices for run_job, launcher override) inside the current allocation."""
    if nodes > 1:
        proc = subprocess.run(["scontrol", "show", "hostnames", environ["SLURM_JOB_NODELIST"]], capture_output=True, text=True)
        hosts = proc.stdout.split()
        if proc.returncode != 0 or not hosts:
            raise SlurmError(f"scontrol show hostnames {environ['SLURM_JOB_NODELIST']} failed: {proc.stderr.strip()}")
        hostfile = scratch / f"hostfile-{environ.get('SLURM_JOB_ID', 'job')}"
        write_text_atomic(hostfile, "".join(f"{h} slots={max(gpus_per_node, 1)}\n" for h in hosts))
        return None, f"deepspeed --hostfile {hostfile} --master_addr {hosts[0]} --master_port {free_port(host='')}"
    if gpus_per_node > 0:
        visible = environ.get("CUDA_VISIBLE_DEVICES", "")
        return (visible or ",".join(str(i) for i in range(gpus_per_node))), None
    return None, None


# ---- submission parameters ----------------------------------------------------------------------
def executor_parameters(cfg: SlurmConfig, name: str) -> dict:
    """submitit `update_parameters` keywords for one job (without its dependency; `max_timeouts` goes
    to the executor's constructor)."""
    params = {
        "name": name, "timeout_min": cfg.time_min, "nodes": cfg.nodes, "tasks_per_node": 1,
    }
    if cfg.gpus_per_node:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.cpus_per_task:
        params["cpus_per_task"] = cfg.cpus_per_task
    if cfg.mem_gb:
        params["mem_gb"] = cfg.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cfg, key):
            params[f"slurm_{key}"] = getattr(cfg, key)
    if cfg.additional:
        params["slurm_additional_parameters"] = dict(cfg.additional)
    if cfg.setup:
        params["slurm_setup"] = list(cfg.setup)
    return params


def make_executor(out: Path, cfg: SlurmConfig, name: str, dependency: str | None) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder(out) / "%j", cluster="slurm", slurm_max_num_timeout=cfg.max_timeouts)
    params = executor_parameters(cfg, name)
    if dependency:
        params["slurm_dependency"] = dependency
    executor.update_parameters(**params)
    return executor


class _OffClusterSlurmExecutor(submitit.SlurmExecutor):
    """submitit's SlurmExecutor without its `srun` check: converts and validates the parameters exactly as
    on a cluster, so `--dry-run` prints the #SBATCH lines anywhere. Never submits."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def sbatch_lines(out: Path, cfg: SlurmConfig, name: str, dependency: str | None) -> list[str]:
    """The `#SBATCH` lines submitit writes for this job (what `--dry-run` prints; needs no Slurm installed)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = executor_parameters(cfg, name)
    if dependency:
        params["slurm_dependency"] = dependency
    executor = _OffClusterSlurmExecutor(folder=folder(out) / "%j", max_num_timeout=cfg.max_timeouts)
    generic = executor._convert_parameters({k: v for k, v in params.items() if not k.startswith("slurm_")})
    specific = {k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")}
    executor.update_parameters(**generic, **specific)  # AutoExecutor's rule: a slurm_ key wins over a generic one
    text = _make_sbatch_string(command="true", folder=str(folder(out) / "%j"), **executor.parameters)
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def job_name(out: Path, job: Job) -> str:
    return f"remix-{Path(out).name}-{job.id}"


def dependency_of(job: Job, slurm_ids: dict[str, str]) -> str | None:
    """`afterok:ID[:ID]` on the deps still queued or running (finished deps need no waiting)."""
    ids = [slurm_ids[d] for d in job.deps if d in slurm_ids]
    return "afterok:" + ":".join(ids) if ids else None


# ---- dry run ------------------------------------------------------------------------------------
def describe(jobs: list[Job], out: Path, cfg: SlurmConfig, runner: JobRunner) -> list[str]:
    """What `remix-ds experiment CONFIG --dry-run` adds for Slurm: per job, whether it would be
    submitted, its deps, resources and the #SBATCH lines submitit would write."""
    lines = ["", "slurm jobs (afterok:<plan job id> becomes that job's Slurm id at submission; %j: each job's own id):"]
    pending: set[str] = set()
    for job in jobs:
        state = {0: "done, skipped", 1: "failed, not retried"}.get(runner.job_finished(job), "to run")
        lines.append(f"{job.id}  [{state}]  deps: {', '.join(job.deps) or '-'}")
        if state != "to run":
            continue
        lines.append(f"  resources: nodes={cfg.nodes} gpus_per_node={cfg.gpus_per_node} cpus_per_task={cfg.cpus_per_task or '-'} "
                     f"mem_gb={cfg.mem_gb or '-'} time_min={cfg.time_min}")
        placeholder = {d: d for d in job.deps if d in pending}  # the plan id stands for its Slurm id
        lines += [f"  {line}" for line in sbatch_lines(out, cfg, job_name(out, job), dependency_of(job, placeholder))]
        pending.add(job.id)
    return lines


# ---- submit, wait, collect ----------------------------------------------------------------------
def _read_record(out: Path) -> dict[str, str]:
    path = folder(out) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_record(out: Path, record: dict[str, str]) -> None:
    write_text_atomic(folder(out) / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


def queue_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    """{slurm id: (state, reason)} of those of `ids` still in the queue (pending, running, requeued)."""
    if not ids:
        return {}
    cmd = ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T|%r"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    states = {}
    for line in proc.stdout.splitlines():
        jid, state, reason = (line.split("|") + ["", ""])[:3]
        if jid in ids:
            states[jid] = (state, reason)
    return states


def final_state(slurm_id: str) -> str:
    """JobState from `scontrol show job` (kept for MinJobAge after the end), else `unknown`."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", slurm_id], capture_output=True, text=True)
    for word in proc.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "unknown"


def cancel(slurm_id: str) -> None:
    subprocess.run(["scancel", slurm_id], capture_output=True)


def log_path(out: Path, slurm_id: str) -> Path:
    return folder(out) / slurm_id / f"{slurm_id}_0_log.err"


def submit(jobs: list[Job], out: Path, cfg: SlurmConfig, runner: JobRunner, log=print) -> dict[str, str]:
    """Submit every unfinished job not already queued; {plan job id: slurm id} of those queued now."""
    out = Path(out).resolve()  # the jobs may start in another working directory
    folder(out).mkdir(parents=True, exist_ok=True)
    with FileLock(folder(out) / ".submit.lock"):  # two `remix-ds experiment` calls never submit a job twice
        record = _read_record(out)
        alive = queue_states(list(record.values()))
        queued = {jid: sid for jid, sid in record.items() if sid in alive}
        for job in jobs:
            if runner.job_finished(job) is not None:
                continue
            if job.id in queued:
                log(f"[experiment] slurm: {job.id} is job {queued[job.id]} ({alive[queued[job.id]][0].lower()}), not resubmitted")
                continue
            dep = dependency_of(job, queued)
            executor = make_executor(out, cfg, job_name(out, job), dep)
            try:
                sub = executor.submit(SlurmTask(str(out), job.id, cfg.nodes, cfg.gpus_per_node))
            except Exception as e:  # sbatch said no: bad partition/account, ...
                raise SlurmError(f"sbatch for {job.id} failed: {str(e).strip().splitlines()[-1]}") from e
            queued[job.id] = record[job.id] = sub.job_id
            _write_record(out, record)
            log(f"[experiment] slurm: submitted {job.id} as job {sub.job_id}" + (f" ({dep})" if dep else ""))
    return queued


def wait(queued: dict[str, str], jobs: list[Job], out: Path, runner: JobRunner, *, log=print, poll_s: float = 5.0) -> None:
    """Until none of `queued` is in the queue; then every job's outcome is on disk (or recorded here
    through `runner.job_lost` / `runner.job_blocked`)."""
    finished = runner.job_finished
    by_id = {j.id: j for j in jobs}
    left = dict(queued)
    last = ""
    while left:
        states = queue_states(list(left.values()))
        for jid, sid in list(left.items()):
            state, reason = states.get(sid, ("", ""))
            if not state:
                del left[jid]
                if finished(by_id[jid]) is None and by_id[jid].kind == "cell":
                    runner.job_lost(by_id[jid], f"slurm job {sid} ended ({final_state(sid)}) without finishing its cell; "
                                            f"log {log_path(out, sid)}")
            elif state == "PENDING" and reason in NEVER:
                cancel(sid)
                del left[jid]
                dep = next((by_id[d] for d in by_id[jid].deps if finished(by_id[d]) != 0), by_id[by_id[jid].deps[0]])
                dep_sid = queued.get(dep.id, "?")
                log(f"[experiment] slurm: {jid} (job {sid}) cancelled: {dep.id} (job {dep_sid}) failed")
                runner.job_blocked(by_id[jid], dep, log_path(out, dep_sid), 1)
        summary = ", ".join(f"{n} {s.lower()}" for s, n in Counter(state for state, _ in states.values()).items())
        if summary and summary != last:
            log(f"[experiment] slurm: {len(left)} jobs in the queue ({summary})")
            last = summary
        if left:
            time.sleep(poll_s)


def run_slurm(jobs: list[Job], out: Path, sched: SchedulerConfig, runner: JobRunner, *, wait_for_jobs: bool = True,
              log=print) -> bool:
    """Submit the plan; with `wait_for_jobs`, wait for it. True when every job has left the queue."""
    out = Path(out).resolve()
    queued = submit(jobs, out, sched.slurm, runner, log)
    if not wait_for_jobs:
        if queued:
            log(f"[experiment] slurm: {len(queued)} jobs queued; `remix-ds experiment` with this config again "
                "collects the table once they are done")
        return not queued
    wait(queued, jobs, out, runner, log=log, poll_s=sched.slurm.poll_s)
    return True

