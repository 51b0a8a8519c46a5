"""`scheduler.kind: slurm` through submitit, against a real one-node Slurm cluster started here
(tests/slurm_cluster.py; the tests that need it skip, saying why, when slurm/munge are absent).

- submitit's AutoExecutor runs a job on the cluster and returns its result;
- a 1 D_A x 2 D_B grid (one shared stage 1) runs end to end as Slurm jobs and gives the serial
  run's table (EM, forgetting) and per-example NLLs; the cells' sbatch scripts carry
  `afterok:<stage-1 job>` and the cells started only after stage 1 ended; stage 1, preempted
  with `scancel --signal=USR2` after its first checkpoint, is requeued and resumes from it;
- `--dry-run` of a Slurm config lists the jobs, their dependencies and #SBATCH lines (fast);
- placement inside an allocation (hostfile, GPUs) and the requeue hook (fast).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from helpers import GRID_RUN, REPO



def _grid_cfg(tmp_path: Path, name: str, **extra) -> Path:
    cfg = {
        "output_dir": str(tmp_path / name),
        "run": GRID_RUN,
        "data_a": [{"name": "fa", "dataset": "kvr", "num_examples": 8}],
        "data_b": [{"name": "fb", "dataset": "kvr", "num_examples": 8}, {"name": "gb", "dataset": "kvr", "num_examples": 8}],
        "strategies": ["none"],
        # save_every=2: stage 1 has a checkpoint to resume from when it is preempted
        "stage1": {"max_epochs": 8, "eval_every": 4, "overrides": ["train.save_every=2"]},
        "stage2": {"epochs": 2, "eval_every": 1},
        "analysis": {"logit_lens": False, "preservation": False},
    }
    cfg.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _wait(job, timeout: float = 120.0):
    """job.result() without sacct: the result pickle appears, or the job left the queue without one."""
    deadline = time.time() + timeout
    while not job.paths.result_pickle.exists():
        assert time.time() < deadline, f"job {job.job_id} did not finish; stderr:\n{job.stderr()}"
        time.sleep(0.5)
    return job.result()


def _show(cluster, slurm_id: str) -> dict:
    """`scontrol -o show job ID` as a dict (Key=Value words)."""
    words = cluster.run("scontrol", "-o", "show", "job", slurm_id).split()
    return dict(w.split("=", 1) for w in words if "=" in w)


def _final_nll(run_dir: Path, name: str) -> list[float]:
    step = max(int(p.name[5:]) for p in (run_dir / "eval").glob("step-*") if (p / f"{name}.jsonl").is_file())
    rows = [json.loads(line) for line in (run_dir / "eval" / f"step-{step}" / f"{name}.jsonl").read_text().splitlines()]
    return [r["answer_nll"] for r in rows]


@pytest.mark.slow
def test_submitit_smoke_on_real_slurm(slurm_cluster, tmp_path):
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=5, cpus_per_task=1, nodes=1)
    # a stdlib-only callable: the job's python cannot import this test module
    job = executor.submit(submitit.helpers.CommandFunction(["bash", "-c", "echo $SLURM_JOB_ID $SLURM_JOB_PARTITION $((6*7))"]))
    assert _wait(job).split() == [job.job_id, slurm_cluster.partition, "42"]
    deadline = time.time() + 60  # the result pickle is written before the job step ends
    while _show(slurm_cluster, job.job_id)["JobState"] in ("RUNNING", "COMPLETING"):
        assert time.time() < deadline
        time.sleep(0.2)
    assert _show(slurm_cluster, job.job_id)["JobState"] == "COMPLETED"


@pytest.mark.slow
def test_grid_on_slurm_matches_serial_with_dependencies_and_preemption(slurm_cluster, tmp_path, capsys):
    serial_cfg = _grid_cfg(tmp_path, "serial")
    slurm_cfg = _grid_cfg(tmp_path, "slurm", scheduler={"kind": "slurm", "slurm": {
        "partition": slurm_cluster.partition, "time_min": 15, "cpus_per_task": 1, "poll_s": 0.5}})
    cmd = [sys.executable, "-m", "remix_ds.experiments"]
    env = {**slurm_cluster.env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # the serial reference runs beside the Slurm jobs (outside the cluster)
    serial = subprocess.Popen(cmd + [str(serial_cfg)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    grid = subprocess.Popen(cmd + [str(slurm_cfg)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = tmp_path / "slurm"
    record, s1 = out / "slurm" / "submitted.json", out / "stage1" / "fa__plain"
    try:
        deadline = time.time() + 900
        while not (s1 / "latest").exists():  # stage 1 wrote its first checkpoint: preempt it
            assert grid.poll() is None and time.time() < deadline, "stage 1 ended before its first checkpoint"
            time.sleep(0.2)
        ids = json.loads(record.read_text())
        s1_id = ids["stage1:fa__plain"]
        slurm_cluster.run("scancel", "--signal=USR2", s1_id)
        while _show(slurm_cluster, s1_id)["JobState"] != "PENDING":  # requeued by submitit's handler
            assert time.time() < deadline, _show(slurm_cluster, s1_id)
            time.sleep(0.2)
        # skip most of Slurm's requeue delay, not all of it: slurmd refused ("Job credential revoked") the
        # job relaunched within the second in which it had revoked that job id's credential (CI, loaded CPUs)
        slurm_cluster.run("scontrol", "update", f"JobId={s1_id}", "StartTime=now+3")
        grid_out, _ = grid.communicate(timeout=900)
        serial_out, _ = serial.communicate(timeout=900)
    finally:
        for p in (grid, serial):
            p.kill() if p.poll() is None else None
    assert grid.returncode == 0, grid_out[-4000:]
    assert serial.returncode == 0, serial_out[-4000:]

    # the same table and per-example NLLs as the serial run (stage 1 preempted and resumed included)
    keys = ("d_a", "d_b", "strategy", "status", "em_a_stage1", "em_a_stage2", "em_b_stage2", "forgetting", "stage1_steps", "stage2_steps")
    table = {r["d_b"]: r for r in json.loads((out / "results.json").read_text())}
    ref = {r["d_b"]: r for r in json.loads((tmp_path / "serial" / "results.json").read_text())}
    assert sorted(table) == ["fb", "gb"]
    for b in ("fb", "gb"):
        assert {k: table[b][k] for k in keys} == {k: ref[b][k] for k in keys}
        cell = f"cells/fa__{b}__none/stage2"
        for name in ("fa", b):
            assert _final_nll(out / cell, name) == pytest.approx(_final_nll(tmp_path / "serial" / cell, name), abs=1e-5)
    assert _final_nll(s1, "fa") == pytest.approx(_final_nll(tmp_path / "serial" / "stage1" / "fa__plain", "fa"), abs=1e-5)

    # stage 1 was preempted once and resumed from its checkpoint
    done1 = json.loads((s1 / "stage_done.json").read_text())
    assert done1["resumed_from_step"] >= 2 and done1["steps"] == 8, done1
    assert _show(slurm_cluster, s1_id)["Restarts"] == "1"

    # one Slurm job per plan job; each cell's sbatch script says afterok on the stage-1 job, and Slurm held it
    assert sorted(ids) == ["cell:fa__fb__none", "cell:fa__gb__none", "stage1:fa__plain"]
    script = (out / "slurm" / s1_id / f"{s1_id}_submission.sh").read_text()
    assert "--dependency" not in script and "#SBATCH --partition=remix" in script
    s1_info = _show(slurm_cluster, s1_id)
    for b in ("fb", "gb"):
        cid = ids[f"cell:fa__{b}__none"]
        assert f"#SBATCH --dependency=afterok:{s1_id}\n" in (out / "slurm" / cid / f"{cid}_submission.sh").read_text()
        info = _show(slurm_cluster, cid)
        assert info["JobState"] == "COMPLETED"
        assert info["SubmitTime"] < s1_info["EndTime"] <= info["StartTime"], (info, s1_info)

    # a rerun (in this process: no jobs left to run) collects: nothing submitted again, the same table
    from remix_ds.experiments.__main__ import main

    (out / "results.json").unlink()
    assert main([str(slurm_cfg)]) == 0
    assert "submitted" not in capsys.readouterr().out and json.loads(record.read_text()) == ids
    assert json.loads((out / "results.json").read_text()) == list(table.values())


def test_dry_run_lists_jobs_dependencies_and_sbatch_lines(tmp_path, capsys, monkeypatch):
    from remix_ds.experiments.__main__ import main

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # off a cluster: no srun/sbatch on PATH
    assert shutil.which("srun") is None
    cfg = _grid_cfg(tmp_path, "dry", scheduler={"kind": "slurm", "slurm": {
        "partition": "gpu", "account": "proj42", "qos": "high", "time_min": 120, "nodes": 2, "gpus_per_node": 8,
        "cpus_per_task": 16, "mem_gb": 400, "constraint": "h100", "additional": {"reservation": "grid"},
        "setup": ["module load cuda/12.4"]}})
    assert main([str(cfg), "--dry-run"]) == 2  # 2 nodes x 8 GPUs = 16 ranks cannot share 8 examples per step
    assert "world size 16" in capsys.readouterr().err
    assert main([str(cfg), "run.train.global_batch_size=16", "run.train.micro_batch_size=1", "--dry-run"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "stage1:fa__plain  [to run]  deps: -" in lines
    assert "cell:fa__gb__none  [to run]  deps: stage1:fa__plain" in lines
    for flag in ("--partition=gpu", "--account=proj42", "--qos=high", "--time=120", "--nodes=2", "--gpus-per-node=8",
                 "--cpus-per-task=16", "--mem=400GB", "--constraint=h100", "--reservation=grid", "--signal=USR2@90",
                 "--dependency=afterok:stage1:fa__plain"):
        assert f"  #SBATCH {flag}" in lines, (flag, text)
    assert text.count("--dependency=afterok:stage1:fa__plain") == 2  # both cells, not stage 1
    assert not (tmp_path / "dry" / "slurm").exists()  # nothing submitted, nothing written


def test_placement_inside_an_allocation(tmp_path, monkeypatch):
    from remix_ds.experiments import scheduler, slurm

    assert slurm.placement(1, 0, {}, tmp_path) == (None, None)  # CPU job: the configured launcher
    devices, launcher = slurm.placement(1, 2, {"CUDA_VISIBLE_DEVICES": "2,3"}, tmp_path)
    assert (devices, launcher) == ("2,3", None)  # Slurm's GPUs, not 0,1
    assert scheduler.restrict_launcher(["deepspeed"], devices.split(","), 29511, True)[1:3] == ["--include", "localhost:2,3"]
    if shutil.which("scontrol") is None:
        pytest.skip("scontrol not installed (apt-get install -y slurm-wlm): the multi-node hostfile is not checked")
    conf = tmp_path / "slurm.conf"  # scontrol reads a config even to expand a host list
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=localhost CPUs=1\nPartitionName=p Nodes=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    devices, launcher = slurm.placement(2, 4, {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "77"}, tmp_path)
    assert devices is None
    assert (tmp_path / "hostfile-77").read_text() == "gpu07 slots=4\ngpu08 slots=4\n"
    words = launcher.split()
    assert words[:5] == ["deepspeed", "--hostfile", str(tmp_path / "hostfile-77"), "--master_addr", "gpu07"]
    assert words[5] == "--master_port" and int(words[6]) > 0


def test_requeue_hook_resubmits_the_same_task():
    from remix_ds.experiments.slurm import SlurmTask

    task = SlurmTask("/grid", "cell:fa__fb__none", 1, 0)
    again = task.checkpoint()  # what submitit calls on USR2 (preemption / timeout) before requeueing
    assert again.function is task and again.args == () and again.kwargs == {}


def test_wait_cancels_the_cells_of_a_failed_stage1_and_records_lost_cells(tmp_path, monkeypatch):
    from remix_ds.experiments import slurm
    from remix_ds.experiments.plan import Job

    jobs = [Job("stage1:a", "stage1", (), "stage 1 a"), Job("stage1:b", "stage1", (), "stage 1 b"),
            Job("cell:x", "cell", ("stage1:a",), "cell x"), Job("cell:y", "cell", ("stage1:b",), "cell y")]
    queued = {"stage1:a": "11", "cell:x": "12", "cell:y": "13"}  # stage1:b finished before
    polls = iter([{"11": ("RUNNING", "None"), "12": ("PENDING", "Dependency"), "13": ("RUNNING", "None")},
                  {"12": ("PENDING", "DependencyNeverSatisfied")}])  # then: 11 failed, 13 died without a result
    monkeypatch.setattr(slurm, "queue_states", lambda ids: next(polls))
    monkeypatch.setattr(slurm, "final_state", lambda sid: {"13": "OUT_OF_MEMORY"}[sid])
    cancelled, blocked, lost, logged = [], [], [], []
    monkeypatch.setattr(slurm, "cancel", cancelled.append)
    runner = SimpleNamespace(job_finished=lambda job: 0 if job.id == "stage1:b" else None,
                             job_blocked=lambda job, dep, log, code: blocked.append((job.id, dep.id, log, code)),
                             job_lost=lambda job, message: lost.append((job.id, message)))
    slurm.wait(queued, jobs, tmp_path, runner, log=logged.append, poll_s=0)
    assert cancelled == ["12"]
    assert blocked == [("cell:x", "stage1:a", tmp_path / "slurm" / "11" / "11_0_log.err", 1)]
    assert lost == [("cell:y", f"slurm job 13 ended (OUT_OF_MEMORY) without finishing its cell; log {tmp_path}/slurm/13/13_0_log.err")]
    assert "[experiment] slurm: cell:x (job 12) cancelled: stage1:a (job 11) failed" in logged


def test_no_wait_returns_after_submission(tmp_path, monkeypatch):
    from remix_ds.experiments import slurm
    from remix_ds.experiments.config import SchedulerConfig, SlurmConfig
    from remix_ds.experiments.plan import Job

    jobs = [Job("stage1:a", "stage1", (), "stage 1 a"), Job("cell:x", "cell", ("stage1:a",), "cell x")]
    monkeypatch.setattr(slurm, "submit", lambda jobs, out, cfg, finished, log: {"stage1:a": "7", "cell:x": "8"})
    monkeypatch.setattr(slurm, "wait", lambda *a, **k: pytest.fail("--no-wait must not wait"))
    lines = []
    sched = SchedulerConfig(kind="slurm", slurm=SlurmConfig(partition="p"))
    kw = dict(runner=SimpleNamespace(job_finished=lambda job: None), log=lines.append)
    assert slurm.run_slurm(jobs, tmp_path, sched, wait_for_jobs=False, **kw) is False  # not collected yet
    assert lines == ["[experiment] slurm: 2 jobs queued; `remix-ds experiment` with this config again collects "
                     "the table once they are done"]
    monkeypatch.setattr(slurm, "submit", lambda jobs, out, cfg, finished, log: {})
    assert slurm.run_slurm(jobs, tmp_path, sched, wait_for_jobs=False, **kw) is True  # nothing queued: collect now
