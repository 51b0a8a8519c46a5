"""The runner of a grid's jobs (plan.py): stage 0, one shared stage-1 run, one cell (stage 2,
analyses, done.json / error.json), each with its locks, subprocesses and recorded outcome.

:class:`GridJobs` is the `plan.JobRunner` the schedulers take (`job_finished`, `job_log`,
`job_claim`, `job_blocked`, `job_lost`), and what the serial loop (`Grid.run`) and one job's
process (`python -m remix_ds.experiments.job`) run. It reads the prepared `Grid` (cells, dataset
paths, stage configs, folders) and never plans or tabulates.

Locks: every stage folder (a second process waits for the first and reuses its run), every cell
(a cell another process is running is waited for, then found finished) and the stage-0 cache.
A cell that raises gets `error.json` (message and traceback); `done.json` is written last.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from remix_ds import configtools
from remix_ds.cachedir import write_text_atomic
from remix_ds.config import RunConfig
from remix_ds.engine.metrics import plain_values, start_wandb
from remix_ds.eval.data import load_eval_set
from remix_ds.eval.runner import eval_steps, evaluate, latest_eval_rows, read_rows, rows_file, step_dir, write_results
from remix_ds.experiments import analysis, datasets, prune, report, scheduler
from remix_ds.experiments import stage as stage_lib
from remix_ds.experiments.config import launcher_argv
from remix_ds.experiments.layout import Cell, GridLayout
from remix_ds.experiments.plan import Job, cell_id
from remix_ds.experiments.stage_configs import STAGE_COMMON

if TYPE_CHECKING:
    from remix_ds.experiments.grid import Grid

LOCK = ".lock"
"""The lock file inside every stage and cell folder (held while a process trains or runs it)."""


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def em_of(rows: list[dict]) -> float:
    return sum(bool(r["correct"]) for r in rows) / len(rows) if rows else math.nan


def span_acc_of(rows: list[dict]) -> float | None:
    """Fraction of marked key spans greedy decoding reproduces (None: the set has no marked spans)."""
    spans = [c for r in rows for c in r.get("span_correct", ())]
    return sum(spans) / len(spans) if spans else None


def em_curve(run_dir: Path, name: str) -> list[tuple[int, float]]:
    """EM of set `name` at every eval step of a run (from the per-example files)."""
    return [(step, em_of(read_rows(f))) for step, f in eval_steps(run_dir, name)]


class GridJobs:
    """Runs the jobs of a prepared `Grid` (a `plan.JobRunner`); `launcher`, `devices` and `port`
    place its stages (a scheduled job's device group and master port)."""

    def __init__(self, grid: Grid, launcher: str | None = None, devices: list[str] | None = None,
                 port: int | None = None):
        self.grid = grid
        self.launcher = launcher_argv(grid.cfg.launcher if launcher is None else launcher)
        """The stages' launcher words (`launcher_argv`): the config's `launcher`, or `launcher` in its place."""
        self.devices = devices
        """A job's device group (`scheduler.kind=local`): its stages run on exactly these devices."""
        self.port = port
        """A job's master port for its stages' launcher."""
        self._failed_stage1: dict[str, str] = {}

    @property
    def cfg(self):
        return self.grid.cfg

    @property
    def out(self) -> Path:
        return self.grid.out

    @property
    def log(self):
        return self.grid.log

    def stage_launcher(self) -> list[str] | None:
        """`launcher_argv(cfg.launcher)`, restricted to the job's device group and port when it has one.

        One device and a launcher without deepspeed: the stage runs as configured (the job's
        CUDA_VISIBLE_DEVICES already holds its one GPU; a world of one finds its own port). Else
        `deepspeed --include localhost:<ids>` (GPUs; the deepspeed runner drops
        CUDA_VISIBLE_DEVICES and sets it per rank) or `--num_gpus <n>` (CPU ranks), with the
        job's `--master_port`; other flags of a configured deepspeed launcher are kept.
        """
        if self.devices is None or (len(self.devices) == 1 and not self.launcher):
            return self.launcher
        return scheduler.restrict_launcher(self.launcher or ["deepspeed"], self.devices, self.port, _cuda())

    def final_eval_b(self, s2cfg: RunConfig, name: str, step: int) -> None:
        """stage2.eval_b=end: score D_B once on the stage-2 export, beside the final D_A rows."""
        folder = step_dir(Path(s2cfg.train.output_dir) / "eval", step)
        if rows_file(folder, name).is_file():
            return
        model = analysis.load_model(Path(s2cfg.train.output_dir) / "final", self.cfg.analysis.device)
        try:
            eval_cfg = s2cfg.eval
            budget = next((d.max_new_tokens for d in self.cfg.data_b if d.name == name), 0)
            if budget:
                eval_cfg = dataclasses.replace(eval_cfg, max_new_tokens=budget)
            s = load_eval_set(str(self.grid.paths[name]), eval_cfg)
            result = evaluate(model, self.grid.tokenizer, s.examples, eval_cfg, prompt_format=s2cfg.data.prompt_format)
            write_results(result, folder, name, extra={"step": step}, fingerprint=s.fingerprint)
        finally:
            del model

    def run_stage(self, cfg: RunConfig, label: str) -> dict:
        """Train a stage unless its folder says it is done; returns its stats.

        The folder's lock is held while training: a second process (another job, another grid)
        asking for the same stage waits for the first and then reuses its run."""
        out = Path(cfg.train.output_dir)
        if stage_lib.is_done(out):
            return stage_lib.read_done(out)
        out.mkdir(parents=True, exist_ok=True)
        with _wait_lock(out / LOCK, self.log, label):
            if stage_lib.is_done(out):
                self.log(f"[experiment] {label}: done by another process, reused")
                return stage_lib.read_done(out)
            stats = self._train_stage(cfg, out, label)
            prune.drop_checkpoints(out, self.cfg.analysis.keep_models, stage_lib.is_done(out), self.log)
            return stats

    def _train_stage(self, cfg: RunConfig, out: Path, label: str) -> dict:
        cfg_path = out / "stage_config.json"
        cfg.save(cfg_path)
        self.log(f"[experiment] {label}: training -> {out}")
        launcher = self.stage_launcher()
        if launcher is None:
            return stage_lib.run_stage(cfg)
        if launcher:  # deepspeed --num_gpus N ...
            exe = Path(sys.executable).with_name("deepspeed")
            cmd = [str(exe) if exe.exists() else "deepspeed", *launcher[1:], "--module"]
        else:
            cmd = [sys.executable, "-m"]
        cmd += ["remix_ds.experiments.stage", str(cfg_path)]
        with (out / "stage.log").open("a") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0 or not stage_lib.is_done(out):
            tail = (out / "stage.log").read_text()[-3000:]
            raise RuntimeError(f"{label} failed (exit {proc.returncode}); log {out / 'stage.log'}:\n{tail}")
        return stage_lib.read_done(out)

    def run_cell(self, cell: Cell, layout: GridLayout) -> dict:
        t0 = time.perf_counter()
        for name in (cell.d_a.name, cell.d_b.name):
            if name in self.grid.data_errors:
                raise RuntimeError(f"dataset {name} could not be loaded: {self.grid.data_errors[name]}")
        s1cfg = self.grid.stage1_config(cell)
        if cell.stage1_key in self._failed_stage1:
            raise RuntimeError(f"shared stage 1 {cell.stage1_key} failed earlier in this run: {self._failed_stage1[cell.stage1_key]}")
        try:
            st1 = self.run_stage(s1cfg, f"{cell.stage1_key} stage 1")
        except Exception as e:
            self._failed_stage1[cell.stage1_key] = f"{type(e).__name__}: {str(e)[:300]}"
            raise
        prune.require_export(Path(s1cfg.train.output_dir), f"cell {cell.key}")
        s2cfg = self.grid.stage2_config(cell)
        st2 = self.run_stage(s2cfg, f"{cell.key} stage 2")
        s1dir, s2dir = Path(s1cfg.train.output_dir), Path(s2cfg.train.output_dir)
        a, b = cell.d_a.name, cell.d_b.name
        step1, rows1 = latest_eval_rows(s1dir, a)
        step2, rows2 = latest_eval_rows(s2dir, a)
        if self.cfg.stage2.eval_b == "end":
            self.final_eval_b(s2cfg, b, step2)
        _, rows_b = latest_eval_rows(s2dir, b)
        em1, em2 = em_of(rows1), em_of(rows2)
        if em1 < self.cfg.stage1.em_threshold:
            self.log(report.below_threshold_line(cell.stage1_key, em1, self.cfg.stage1.em_threshold, round(st1["epochs"], 3)))
        row = {
            "d_a": a, "d_b": b, "strategy": cell.strategy.spec, "loss_mode": cell.loss_mode or self.cfg.run.data.loss_mode,
            "status": "done", **self.grid.mix_columns(cell), **self.grid.sweep_columns(cell),
            "em_a_stage1": em1, "em_a_stage2": em2, "em_b_stage2": em_of(rows_b), "forgetting": em1 - em2,
            "stage1_reached_threshold": em1 >= self.cfg.stage1.em_threshold, "stage1_key": cell.stage1_key,
            "stage1_steps": st1["steps"], "stage1_epochs": round(st1["epochs"], 3), "stage2_steps": st2["steps"],
            "stage1_stop": stage_lib.stop_reason(st1), "stage2_stop": stage_lib.stop_reason(st2),
            "stage1_wall_s": round(st1["wall_s"], 2), "stage1_eval_s": round(st1["eval_s"], 2),
            "stage2_wall_s": round(st2["wall_s"], 2), "stage2_eval_s": round(st2["eval_s"], 2),
            "stage1_eval_step": step1, "stage2_eval_step": step2,
        }
        if span_acc_of(rows1) is not None:
            row.update(span_acc_a_stage1=span_acc_of(rows1), span_acc_a_stage2=span_acc_of(rows2))
        if self.grid.data_manifest_sha256:
            row["data_manifest_sha256"] = self.grid.data_manifest_sha256
        curve = [(0, em1)] + em_curve(s2dir, a)
        ta = time.perf_counter()
        row.update(analysis.analyse_cell(layout, cell, s1dir, s2dir, rows1, rows2))
        row["analysis_s"] = round(time.perf_counter() - ta, 2)
        row["cell_wall_s"] = round(time.perf_counter() - t0, 2)
        _write_json(self.grid.cell_dir(cell) / "done.json", {"row": row, "curve_a": curve})
        prune.after_cell(cell, layout.cells, self.cfg.analysis.keep_models, s1dir, s2dir,
                         lambda c: (self.grid.cell_dir(c) / "done.json").is_file(), self.log)
        self.track_cell(cell, row, {"stage1": configtools.to_dict(s1cfg), "stage2": configtools.to_dict(s2cfg)})
        return row

    def track_cell(self, cell: Cell, row: dict, stages: dict) -> None:
        """With metrics.wandb: the cell as a W&B run (job_type `cell`) in the grid's group, its config and
        final row (summary), under CELL/wandb. A tracking failure is logged; the cell stays done."""
        w = self.cfg.run.metrics.wandb
        if w is None:
            return
        try:
            w = dataclasses.replace(w, group=self.grid.wandb_group())
            config = {"cell": {"key": cell.key, "d_a": cell.d_a.name, "d_b": cell.d_b.name, "strategy": cell.strategy.spec,
                               "loss_mode": row["loss_mode"], "seed": cell.seed}, **stages}
            run = start_wandb(w, self.grid.cell_dir(cell), cell.key, config, job_type="cell")
            run.summary.update(plain_values(row))
            run.finish()
        except Exception as e:  # tracking must never cost a finished cell
            self.log(f"[experiment] {cell.key}: W&B tracking failed ({type(e).__name__}: {str(e)[:300]})")

    def record_error(self, cell: Cell, message: str, tb: str = "") -> dict:
        """Write the cell's error.json (its row in the table) and log it."""
        row = self.grid.error_row(cell, message)
        folder = self.grid.cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "error.json", {"row": row, "traceback": tb})
        self.log(f"[experiment] cell {cell.key} FAILED: {row['error']}")
        return row

    def cell_finished(self, cell: Cell) -> str | None:
        """`done`, `error` (recorded and not to be retried) or None (to run)."""
        folder = self.grid.cell_dir(cell)
        if (folder / "done.json").is_file():
            return "done"
        if (folder / "error.json").is_file() and not self.cfg.retry_failed:
            return "error"
        return None

    def run_cell_job(self, cell: Cell, layout: GridLayout, tag: str = "") -> str:
        """Run one cell unless it is finished; `done` or `error` (error.json written, never raised).

        The cell folder's lock is held throughout: a cell another process runs is waited for and
        then found finished."""
        folder = self.grid.cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        with _wait_lock(folder / LOCK, self.log, f"cell {cell.key}"):
            finished = self.cell_finished(cell)
            if finished == "done":
                self.log(f"[experiment] cell {tag}{cell.key}: done earlier, skipped")
            if finished:
                return finished
            self.log(f"[experiment] cell {tag}{cell.key}")
            try:
                self.run_cell(cell, layout)
                (folder / "error.json").unlink(missing_ok=True)
                return "done"
            except Exception as e:  # record, keep going: one broken cell must not lose the grid
                self.record_error(cell, f"{type(e).__name__}: {str(e)[:500]}", traceback.format_exc())
                return "error"

    def run_stage1_job(self, stage1_key: str) -> None:
        """Train one shared stage-1 run (raises on failure). A D_A that failed to load leaves the
        error to its cells (the message the serial path gives)."""
        cell = next(c for c in self.grid.cells() if c.stage1_key == stage1_key)
        if cell.d_a.name in self.grid.data_errors:
            self.log(f"[experiment] stage 1 {stage1_key}: dataset {cell.d_a.name} could not be loaded; its cells record it")
            return
        self.run_stage(self.grid.stage1_config(cell), f"{stage1_key} stage 1")

    def job_finished(self, job: Job) -> int | None:
        """The scheduler's skip test: 0 (done), 1 (failed, not to be retried) or None (to run)."""
        if job.kind == "stage0":
            return 0 if stage_lib.is_done(self.grid.stage0_dir()) else None
        if job.kind == "stage1":
            return 0 if stage_lib.is_done(self.out / "stage1" / job.id.split(":", 1)[1]) else None
        cell = self._cells_by_id()[job.id]
        finished = self.cell_finished(cell)
        return None if finished is None else (0 if finished == "done" else 1)

    def _cells_by_id(self) -> dict[str, Cell]:
        return {cell_id(c.key): c for c in self.grid.cells()}

    def job_claim(self, job: Job) -> Path:
        """The lock file a scheduler holds while its job runs (cooperating grids skip each other's)."""
        return self.job_log(job).with_name(".scheduled.lock")

    def job_log(self, job: Job) -> Path:
        """Where a job's stdout/stderr go: in the folder of what it trains."""
        if job.kind == "stage0":
            return self.out / "stage0.job.log"
        if job.kind == "stage1":
            return self.out / "stage1" / job.id.split(":", 1)[1] / "job.log"
        return self.grid.cell_dir(self._cells_by_id()[job.id]) / "job.log"

    def job_blocked(self, job: Job, cause: Job, log: Path, code: int) -> None:
        """A cell that will not run because `cause` (a dependency) failed, or whose own job died
        without recording why, gets error.json naming the log, so the table shows why."""
        if job.kind != "cell":
            return
        cell = self._cells_by_id()[job.id]
        if cause.id == job.id and (self.grid.cell_dir(cell) / "error.json").is_file():
            return  # the job recorded its own error (exit 1)
        self.record_error(cell, f"RuntimeError: {cause.label} failed (exit {code}); log {log}")

    def job_lost(self, job: Job, message: str) -> None:
        """A cell's Slurm job ended without done.json (killed, out of time): record why, unless the
        job recorded its own error.json."""
        cell = self._cells_by_id()[job.id]
        if not (self.grid.cell_dir(cell) / "error.json").is_file():
            self.record_error(cell, message)

    def run_stage0(self) -> None:
        """Run stage 0 unless it is done or not configured (locked on the stage-0 cache, which grids
        share; its passages are drawn past the slots the grid's generic datasets use)."""
        s0 = self.cfg.stage0
        if s0.epochs > 0 and not stage_lib.is_done(self.grid.stage0_dir()):
            n_specs = len(self.cfg.data_a) + len(self.cfg.data_b)
            skip = datasets.PRESERVE_SLOTS + sum(s.num_examples or 64 for s in self.cfg.data_a + self.cfg.data_b
                                                 if s.dataset == "generic") * (n_specs + 1)
            patch = {
                **STAGE_COMMON,
                "train.output_dir": str(self.grid.stage0_dir()), "train.epochs": s0.epochs,
                "train.eval_every": 0, "train.early_stop_metric": None,
                "optim.lr": s0.lr, "data.loss_mode": "all", "data.replay": [],
                "data.mix.random_ratio": 0.0, "data.mix.generic_ratio": 0.0, "eval.datasets": [],
            }
            self.grid.stage0_dir().mkdir(parents=True, exist_ok=True)
            with FileLock(self.grid.stage0_dir() / ".stage0.lock"):  # the passages file too: grids share this cache
                if not stage_lib.is_done(self.grid.stage0_dir()):
                    path = datasets.stage0_passages(self.grid.tokenizer, self.cfg.run.data, s0.num_passages, s0.passage_words,
                                                    skip, self.grid.stage0_dir().parent / f"{self.grid.stage0_dir().name}-data")
                    patch["data.dataset"] = str(path)
                    self.run_stage(self.grid.stage_configs().stage_config(patch, s0.overrides), "stage 0 (generic pretraining)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _wait_lock:
    """A FileLock that says, once, when it has to wait for another process."""

    def __init__(self, path: Path, log, label: str):
        self.lock, self.log, self.label = FileLock(path), log, label

    def __enter__(self):
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            self.log(f"[experiment] {self.label}: another process is running it; waiting ({self.lock.lock_file})")
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()
