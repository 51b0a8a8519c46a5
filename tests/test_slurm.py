"""Slurm through submitit, against a real one-node Slurm cluster started here (tests/slurm_cluster.py)."""

from __future__ import annotations

import time

import pytest


def _wait(job, timeout: float = 120.0):
    """job.result() without sacct: the result pickle appears, or the job left the queue without one."""
    deadline = time.time() + timeout
    while not job.paths.result_pickle.exists():
        assert time.time() < deadline, f"job {job.job_id} did not finish; stderr:\n{job.stderr()}"
        time.sleep(0.5)
    return job.result()


@pytest.mark.slow
def test_submitit_smoke_on_real_slurm(slurm_cluster, tmp_path):
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=5, cpus_per_task=1, nodes=1)
    # a stdlib-only callable: the job's python cannot import this test module
    job = executor.submit(submitit.helpers.CommandFunction(["bash", "-c", "echo $SLURM_JOB_ID $SLURM_JOB_PARTITION $((6*7))"]))
    assert _wait(job).split() == [job.job_id, slurm_cluster.partition, "42"]
    assert "JobState=COMPLETED" in slurm_cluster.run("scontrol", "show", "job", job.job_id)
