"""The cell scheduler (scheduler.kind=local) and shared-state safety (issue 13, items 1 and 3).

Fast: the plan (a shared stage 1 appears once; deps), device groups (8 GPUs / 2 per cell -> 4
disjoint groups), the launcher restriction, the scheduler loop on stand-in jobs (at most K at once,
disjoint groups and distinct ports among running jobs, deps respected, a failed stage 1 fails only
its cells), and a second grid with another config refused in a busy folder.

Slow (one module-scoped set of runs shared by the assertions; tiny model, 4 facts, a few steps):
a 1 D_A x 2 D_B x 2 strategy grid with stage 0, run serially, and at the same time twice with
scheduler.kind=local, max_concurrent=2 in one other folder (two cooperating grids), all three on
one fresh cache root; then a concurrent grid killed (SIGTERM to its process group) once a cell is
done and rerun. Every table equals the serial one, every cache and shared stage was built once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from filelock import FileLock

from helpers import REPO
from remix_ds.configtools import ConfigError
from remix_ds.experiments import scheduler
from remix_ds.experiments.config import SchedulerConfig, SlurmConfig, load_experiment
from remix_ds.experiments.grid import Grid, GridBusyError
from remix_ds.experiments.jobs import GridJobs
from remix_ds.experiments.plan import Job, plan_jobs

GRID = {
    "run": {
        "model": {"name_or_path": "tiny"},
        "optim": {"lr": 3.0e-3, "warmup_ratio": 0.05, "min_lr_ratio": 0.1},
        "train": {"global_batch_size": 4, "micro_batch_size": 4, "log_every": 5, "progress_bar": False,
                  "tensorboard": False, "keep_last": 1, "save_every": 2},
        "data": {"max_seq_len": 128},
        "eval": {"mode": "fused"},
    },
    "data_a": [{"name": "fa", "dataset": "kvr", "num_examples": 4}],
    "data_b": [{"name": "fb", "dataset": "kvr", "num_examples": 4}, {"name": "fc", "dataset": "kvr", "num_examples": 4}],
    "strategies": ["none", "replay=0.5"],
    "stage0": {"epochs": 1, "num_passages": 8, "passage_words": 16},
    "stage1": {"max_epochs": 4, "eval_every": 2},
    "stage2": {"epochs": 2, "eval_every": 1},
    "analysis": {"logit_lens": False, "preservation": False},
}


def _cfg(tmp_path: Path, out: str, **extra) -> Path:
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump({**GRID, "output_dir": str(tmp_path / out), **extra}))
    return path


# ---- fast -----------------------------------------------------------------------------------
def test_plan_shares_stage1_and_orders_deps(tmp_path):
    cfg = load_experiment(_cfg(tmp_path, "g"), ["strategies=[none,replay=0.5,random@1]"])
    jobs = plan_jobs(Grid(cfg))
    assert [j.id for j in jobs] == [
        "stage0", "stage1:fa__plain", "stage1:fa__random2",
        "cell:fa__fb__none", "cell:fa__fb__replay-0.5", "cell:fa__fb__random-at1",
        "cell:fa__fc__none", "cell:fa__fc__replay-0.5", "cell:fa__fc__random-at1"]
    deps = {j.id: j.deps for j in jobs}
    assert deps["stage0"] == () and deps["stage1:fa__plain"] == ("stage0",)
    assert deps["cell:fa__fc__replay-0.5"] == ("stage1:fa__plain",) and deps["cell:fa__fb__random-at1"] == ("stage1:fa__random2",)
    no_stage0 = plan_jobs(Grid(load_experiment(_cfg(tmp_path, "g"), ["stage0.epochs=0"])))
    assert [j.deps for j in no_stage0 if j.kind == "stage1"] == [()]


def test_scheduler_config_errors():
    assert SchedulerConfig(kind="slurm").slurm.time_min == 240  # scheduler.slurm: tests/test_slurm.py
    with pytest.raises(ConfigError, match="scheduler.slurm.additional.dependency: the scheduler sets"):
        SchedulerConfig(kind="slurm", slurm=SlurmConfig(additional={"dependency": "afterany:1"}))
    with pytest.raises(ConfigError, match="scheduler.slurm.time_min and scheduler.slurm.nodes must be >= 1"):
        SlurmConfig(nodes=0)
    with pytest.raises(ConfigError, match="scheduler.gpus_per_cell must be >= 1"):
        SchedulerConfig(kind="local", gpus_per_cell=0)
    with pytest.raises(ConfigError, match="scheduler.max_concurrent must be >= 0"):
        SchedulerConfig(max_concurrent=-1)


def test_device_groups_and_launcher():
    gpus = [str(i) for i in range(8)]
    groups = scheduler.device_groups(gpus, 2)
    assert [g.devices for g in groups] == [("0", "1"), ("2", "3"), ("4", "5"), ("6", "7")]
    assert len(scheduler.device_groups(gpus, 2, max_concurrent=3)) == 3
    assert [g.devices for g in scheduler.device_groups(["4", "6", "7"], 1)] == [("4",), ("6",), ("7",)]
    with pytest.raises(ConfigError, match="gpus_per_cell=4 but only 3 device"):
        scheduler.device_groups(["0", "1", "2"], 4)
    words = ["deepspeed", "--num_gpus", "8", "--master_port=29500", "--no_local_rank"]
    assert scheduler.restrict_launcher(words, ("2", "3"), 1234, cuda=True) == [
        "deepspeed", "--no_local_rank", "--include", "localhost:2,3", "--master_port", "1234"]
    assert scheduler.restrict_launcher(["deepspeed"], ("0", "1"), 99, cuda=False) == [
        "deepspeed", "--num_gpus", "2", "--master_port", "99"]
    assert scheduler.free_port(exclude=set(range(1, 32768))) >= 32768  # a port no running job has


def test_job_runner_places_stages_on_the_job_launcher_group_and_port(tmp_path, monkeypatch):
    grid = Grid(load_experiment(_cfg(tmp_path, "g", launcher="deepspeed --num_gpus 4 --no_local_rank")))
    monkeypatch.setattr("remix_ds.experiments.jobs._cuda", lambda: True)
    assert GridJobs(grid).stage_launcher() == ["deepspeed", "--num_gpus", "4", "--no_local_rank"]  # no group: as configured
    assert GridJobs(grid, devices=["2", "3"], port=1234).stage_launcher() == [
        "deepspeed", "--no_local_rank", "--include", "localhost:2,3", "--master_port", "1234"]
    # a job's --launcher replaces the config's, `inprocess` included (None: the stage runs in the job's process)
    assert GridJobs(grid, launcher="inprocess").stage_launcher() is None
    assert GridJobs(grid, launcher="subprocess", devices=["5"], port=7).stage_launcher() == []  # one device: as given
    ids = {j.id: j for j in plan_jobs(grid)}
    runner = GridJobs(grid)
    assert runner.job_log(ids["stage0"]) == tmp_path / "g" / "stage0.job.log"
    assert runner.job_claim(ids["stage1:fa__plain"]) == tmp_path / "g" / "stage1" / "fa__plain" / ".scheduled.lock"
    assert runner.job_log(ids["cell:fa__fc__replay-0.5"]) == tmp_path / "g" / "cells" / "fa__fc__replay-0.5" / "job.log"


def test_run_local_groups_ports_deps_and_failures(tmp_path, monkeypatch):
    """Stand-in jobs (a short python) record their devices, port and times: 8 GPUs, 2 per cell."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(8)))
    jobs = [Job("stage1:a", "stage1", (), "stage 1 a"), Job("stage1:bad", "stage1", (), "stage 1 bad")]
    jobs += [Job(f"cell:a{i}", "cell", ("stage1:a",), f"cell a{i}") for i in range(6)]
    jobs += [Job("cell:b0", "cell", ("stage1:bad",), "cell b0"), Job("cell:done", "cell", ("stage1:a",), "cell done"),
             Job("cell:other", "cell", ("stage1:a",), "cell other")]  # another grid's scheduler runs it
    held = FileLock(tmp_path / "other.claim")
    held.acquire()
    asked = []

    def finished(job):
        if job.id == "cell:other":
            asked.append(1)
            return 0 if len(asked) > 3 else None  # found finished on the third poll after it became ready
        return 0 if job.id == "cell:done" else None

    rec = tmp_path / "rec"
    rec.mkdir()
    code = ("import json, os, sys, time; t = time.time(); time.sleep(0.4); "
            "json.dump({'devices': os.environ['CUDA_VISIBLE_DEVICES'], 'port': int(sys.argv[3]), 'start': t, "
            "'end': time.time(), 'args': sys.argv[1:]}, open(sys.argv[1], 'w')); sys.exit(3 if 'bad' in sys.argv[2] else 0)")

    def command(out, job, group, port):
        return [sys.executable, "-c", code, str(rec / f"{job.id.replace(':', '_')}.json"), job.id, str(port)]

    blocked = []
    lines = []
    runner = SimpleNamespace(
        job_finished=finished, job_log=lambda j: tmp_path / "logs" / f"{j.id}.log",
        job_claim=lambda j: tmp_path / ("other.claim" if j.id == "cell:other" else f"{j.id}.claim"),
        job_blocked=lambda job, cause, log, code: blocked.append((job.id, cause.id, log.name, code)))
    codes = scheduler.run_local(
        jobs, tmp_path, SchedulerConfig(kind="local", gpus_per_cell=2), runner, cuda=True, command=command, poll_s=0.05,
        log=lines.append)
    held.release()
    assert codes == {"stage1:a": 0, "stage1:bad": 3, **{f"cell:a{i}": 0 for i in range(6)}, "cell:b0": 3, "cell:done": 0,
                     "cell:other": 0}
    assert "[scheduler] done  cell other by another grid" in lines
    assert sorted(blocked) == [("cell:b0", "stage1:bad", "stage1:bad.log", 3), ("stage1:bad", "stage1:bad", "stage1:bad.log", 3)]
    runs = {p.stem.replace("_", ":", 1): json.loads(p.read_text()) for p in rec.glob("*.json")}
    assert set(runs) == {"stage1:a", "stage1:bad"} | {f"cell:a{i}" for i in range(6)}  # b0 never ran, done skipped
    assert all(runs[f"cell:a{i}"]["start"] >= runs["stage1:a"]["end"] for i in range(6))
    for x in runs.values():
        assert x["devices"] in {"0,1", "2,3", "4,5", "6,7"}
        live = [y for y in runs.values() if y["start"] <= x["start"] < y["end"]]  # running when x started
        assert len(live) <= 4  # at most 4 at once
        assert len({y["devices"] for y in live}) == len({y["port"] for y in live}) == len(live)  # disjoint, distinct
    assert max(len([y for y in runs.values() if y["start"] <= x["start"] < y["end"]]) for x in runs.values()) > 1
    assert sum(line.startswith("[scheduler] start") for line in lines) == 8
    assert sum(line.startswith("[scheduler] done") for line in lines) == 8
    assert any("FAILED stage 1 bad (exit 3)" in line for line in lines)
    assert any("skip  cell b0: stage 1 bad failed" in line for line in lines)


def test_stage0_cache_is_keyed_by_the_corpus_it_pretrains_on(tmp_path, monkeypatch, shard_corpus):
    """The same stage-0 settings on another corpus are another stage 0 (the key held only the
    corpus setting: a fresh clone reused a stage 0 pretrained on another installation's corpus)."""
    import shutil

    from remix_ds.data import corpus

    def stage0(generic_corpus: str) -> Path:
        return Grid(load_experiment(_cfg(tmp_path, "g"), [f"run.data.mix.generic_corpus={generic_corpus}"])).stage0_dir()

    other = tmp_path / "other_shards"
    shutil.copytree(shard_corpus, other)
    assert stage0(shard_corpus) == stage0(str(other))  # the same shards (same manifest), wherever they are
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "documents": manifest.get("documents", 0) + 1}))
    assert stage0(shard_corpus) != stage0(str(other))
    builtin = {}
    for sha in ("a" * 64, "b" * 64):  # two built-in corpora (another shipped text: another sha256)
        monkeypatch.setattr(corpus, "BUILTIN_SHA256", sha)
        builtin[sha] = stage0("builtin")
    assert builtin["a" * 64] != builtin["b" * 64]
    assert builtin["a" * 64].parent == stage0(shard_corpus).parent  # the stage-0 cache folder


def test_second_grid_with_another_config_is_refused(tmp_path):
    first = Grid(load_experiment(_cfg(tmp_path, "g")))
    first.claim_output()  # writes experiment_config.json, holds this process's marker
    first._claim.release()
    other = load_experiment(_cfg(tmp_path, "g"), ["strategies=[none]"])
    # a live grid of another process: its marker lock is held
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               "l = FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / "g" / ".grids" / "4242.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GridBusyError, match=r"g: another grid \(pid 4242\) is running in this folder"):
            Grid(other).claim_output()
        same = Grid(load_experiment(_cfg(tmp_path, "g"), ["scheduler.kind=local"]))
        same.claim_output()  # the same grid (scheduler aside) cooperates
        same._claim.release()
    finally:
        holder.kill()
        holder.wait()
    again = Grid(other)
    again.claim_output()  # the other grid is gone: a changed config is a rerun, as before
    again._claim.release()
    assert not (tmp_path / "g" / ".grids" / "4242.lock").exists()  # a dead grid's marker is cleared
    written = json.loads((tmp_path / "g" / "experiment_config.json").read_text())
    assert written["strategies"] == ["none"]


# ---- slow: real grids ---------------------------------------------------------------------------
def _popen(cfg: Path, *overrides: str, env: dict, log: Path) -> subprocess.Popen:
    f = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "remix_ds.experiments", str(cfg), *overrides], cwd=REPO, env=env,
                            stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _table(out: Path) -> list[dict]:
    """results.json without the wall-clock columns."""
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in json.loads((out / "results.json").read_text())]


def _eval_rows(out: Path) -> dict[str, list[dict]]:
    """Every per-example eval file of the cells' stage 2 and of stage 1 (the data path aside)."""
    rows = {}
    for f in sorted(out.glob("*/*/stage2/eval/step-*/*.jsonl")) + sorted(out.glob("stage1/*/eval/step-*/*.jsonl")):
        rows[str(f.relative_to(out))] = [{k: v for k, v in json.loads(line).items() if k != "data_fingerprint"}
                                         for line in f.read_text().splitlines()]
    return rows


def _logs(*paths: Path) -> str:
    return "".join(p.read_text() for p in paths)


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sched")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", REMIX_DS_CACHE=str(tmp / "cache"))
    serial, shared = _cfg(tmp, "serial"), _cfg(tmp, "local")
    local = ("scheduler.kind=local", "scheduler.max_concurrent=2")
    procs = [_popen(serial, env=env, log=tmp / "serial.log"),
             _popen(shared, *local, env=env, log=tmp / "local1.log"),
             _popen(shared, *local, env=env, log=tmp / "local2.log")]
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:  # the groups this fixture started (a grid's SIGTERM handler ends its jobs)
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=60)
    assert codes == [0, 0, 0], _logs(tmp / "serial.log", tmp / "local1.log", tmp / "local2.log")[-6000:]
    # a concurrent grid killed once one cell is done, then rerun
    killed = _cfg(tmp, "killed")
    proc = _popen(killed, *local, env=env, log=tmp / "killed.log")
    try:
        deadline = time.time() + 600
        while not list((tmp / "killed" / "cells").glob("*/done.json")):
            assert proc.poll() is None and time.time() < deadline, (tmp / "killed.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the scheduler's group; it terminates its jobs' groups
        proc.wait(timeout=60)
    rerun = subprocess.run([sys.executable, "-m", "remix_ds.experiments", str(killed), *local], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return tmp, rerun


@pytest.mark.slow
def test_local_scheduler_matches_serial(grids):
    tmp, _ = grids
    serial = _table(tmp / "serial")
    assert [r["status"] for r in serial] == ["done"] * 4
    assert _table(tmp / "local") == serial
    assert _eval_rows(tmp / "local") == _eval_rows(tmp / "serial") and len(_eval_rows(tmp / "serial")) >= 10
    log = (tmp / "local1.log").read_text() + (tmp / "local2.log").read_text()
    assert log.count("[scheduler] start") >= 5 and "0 failed" in log
    assert len((tmp / "local" / "results.csv").read_text().splitlines()) == 5
    assert not list((tmp / "local").glob("**/.tmp-*"))  # no temp file left by the concurrent writers


@pytest.mark.slow
def test_shared_caches_built_once(grids):
    tmp, _ = grids
    logs = _logs(tmp / "serial.log", tmp / "local1.log", tmp / "local2.log", *tmp.glob("local/**/job.log"),
                 *tmp.glob("local/stage0.job.log"))
    built = [line for line in logs.splitlines() if line.startswith("[cache] built")]
    assert len([b for b in built if "/models/tiny-" in b]) == 1, built
    assert len([b for b in built if "/corpus/builtin-" in b]) == 1, built
    assert logs.count("stage 0 (generic pretraining): training") == 1  # one stage-0 cache for all three grids
    stage1 = _logs(*tmp.glob("local/stage1/*/job.log"))
    assert stage1.count("stage 1: training ->") == 1  # the two cooperating grids trained stage 1 once
    assert len(list((tmp / "cache" / "stage0").glob("*/stage_done.json"))) == 1
    assert not list((tmp / "cache").glob("**/.tmp-*"))


@pytest.mark.slow
def test_killed_concurrent_grid_reruns_to_the_same_table(grids):
    tmp, rerun = grids
    assert "interrupted: terminating" in (tmp / "killed.log").read_text()
    assert "jobs finished earlier" in rerun.stdout
    assert _table(tmp / "killed") == _table(tmp / "serial")
    assert _eval_rows(tmp / "killed") == _eval_rows(tmp / "serial")


def test_cells_record_why_they_did_not_finish(tmp_path):
    grid = Grid(load_experiment(_cfg(tmp_path, "g")))
    runner = GridJobs(grid)
    jobs = {j.id: j for j in plan_jobs(grid)}
    cell, stage1 = jobs["cell:fa__fb__none"], jobs["stage1:fa__plain"]
    err = tmp_path / "g" / "cells" / "fa__fb__none" / "error.json"
    runner.job_blocked(cell, cell, Path("/x/job.log"), -9)  # died without a word
    row = json.loads(err.read_text())["row"]
    assert row["status"] == "error" and row["error"] == "RuntimeError: cell fa__fb__none failed (exit -9); log /x/job.log"
    assert (row["d_a"], row["d_b"], row["strategy"]) == ("fa", "fb", "none")
    err.write_text(json.dumps({"row": dict(row, error="ValueError: its own")}))
    runner.job_blocked(cell, cell, Path("/x/job.log"), 1)  # exit 1: the job recorded its own error
    assert json.loads(err.read_text())["row"]["error"] == "ValueError: its own"
    runner.job_blocked(cell, stage1, Path("/s1/job.log"), 1)
    assert json.loads(err.read_text())["row"]["error"] == "RuntimeError: stage 1 fa__plain failed (exit 1); log /s1/job.log"
    runner.job_blocked(stage1, stage1, Path("/s1/job.log"), 1)  # a stage-1 job has no row of its own
    assert runner.job_finished(cell) is None and runner.job_finished(stage1) is None  # retry_failed: run again
    assert [r["status"] for r in grid.collect_rows(grid.layout())] == ["error"] * 4
