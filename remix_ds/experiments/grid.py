"""The grid: plan cells, prepare their data, have their jobs run (sharing stage 1), tabulate.

Folders under `output_dir`:

    data/<name>.jsonl                    every D_A / D_B, materialized once (datasets.py)
    stage0/                              optional generic pretraining (its export is the base model)
    stage1/<D_A>__<stage-1 tag>/         one stage-1 run per (D_A, stage-1 mixing, loss mode), shared by cells
    cells/<D_A>__<D_B>__<strategy>[__<stage-2 setting>]/   stage2/ (a run folder), done.json or error.json
                                         (with a seed axis, stage-1 and cell keys end in __s<seed>; a
                                         stage2_sweep adds __<setting> to cell keys only)
    results.csv, results.json, report.md, *.png
    experiment_config.json               the resolved config (what `python -m remix_ds.experiments.job` reads)

The plan (plan.py) is stage 0, each shared stage 1 once, each cell after its stage 1; the
scheduler (`scheduler.kind`) runs it serially in this process or as concurrent jobs (scheduler.py,
job.py). One job (training a stage, running a cell, recording its outcome) is `jobs.GridJobs`'s;
the stage configs are stage_configs.py's. Whatever ran the cells, the table is built from their
done.json / error.json files only (`Grid.collect_rows`).

Shared state is locked (filelock): each materialized dataset, the stage-0 cache, every stage
folder (a second process waits for the first and reuses its run), every cell (a cell another
process is running is waited for, then collected) and the results files (written atomically).
Two grids in one output folder cooperate cell by cell; one with a different config is refused
while the other runs (`GridBusyError`).

Fault handling: a cell that raises gets `error.json` (message and traceback) and the grid moves
on; `done.json` is written last, so a rerun skips exactly the finished cells; a stage folder with
`stage_done.json` is never trained again, and an unfinished one resumes from its newest
checkpoint (`train.resume=auto`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import MappingProxyType

from filelock import FileLock, Timeout

from remix_ds import configtools, models
from remix_ds.cachedir import write_text_atomic
from remix_ds.config import RunConfig
from remix_ds.data.prepare import manifest_sha256
from remix_ds.errors import RemixError
from remix_ds.configtools import ConfigError
from remix_ds.experiments import datasets, frontier, report, scheduler, slurm
from remix_ds.experiments.config import ExperimentConfig, parse_strategy
from remix_ds.experiments.layout import Cell, GridLayout, cell_dir
from remix_ds.experiments.jobs import GridJobs
from remix_ds.experiments.plan import plan_jobs
from remix_ds.experiments.stage_configs import StageConfigs

STAGE0_VERSION = 2  # bump when the stage-0 recipe (passages, training) changes: cached stage-0 runs are redone

CONFIG_FILE = "experiment_config.json"


class GridBusyError(ConfigError):
    """Another live grid with a different config runs in the same output folder."""


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def seed_column(cell: Cell) -> dict:
    """The row's `seed` column (absent without a seed axis, so those tables stay as they were)."""
    return {} if cell.seed is None else {"seed": cell.seed}


class Grid:
    """Plans an ExperimentConfig's cells, prepares their data and tabulates them; `run()` has the jobs
    run (jobs.GridJobs, through the configured scheduler) and returns the table rows (one per cell)."""

    def __init__(self, cfg: ExperimentConfig, log=print):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.log = log
        self._tokenizer = None
        self._stage0_dir: Path | None = None
        self.paths: dict[str, Path] = {}
        self.data_errors: dict[str, str] = {}
        self.base_model: str | None = None
        self.data_manifest_sha256: str | None = None
        self._claim: FileLock | None = None
        self.wait_for_jobs = True
        """`scheduler.kind=slurm`: wait for the submitted jobs, then write the table (`--no-wait`: False)."""

    # ---- planning ---------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        strategies = [parse_strategy(s, self.cfg.mix_ratio) for s in self.cfg.strategies]
        modes = list(self.cfg.loss_modes) or [None]
        seeds = list(self.cfg.seeds) or [None]  # the seed axis outermost: seed 0's whole grid comes first
        sweep = [st.name for st in self.cfg.stage2_sweep] or [None]  # stage-2 settings share stage 1
        return [Cell(a, b, s, m, seed, stage2=st) for seed in seeds for m in modes for a in self.cfg.data_a
                for b in self.cfg.data_b for s in strategies for st in sweep]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            m = self.cfg.run.model
            self._tokenizer = models.load_tokenizer(m.tokenizer or models.model_source(m), m.tiny, m.trust_remote_code)
        return self._tokenizer

    # ---- stage configs (experiments/stage_configs.py) -----------------------------------------
    def stage_configs(self) -> StageConfigs:
        return StageConfigs(self.cfg, self.out, self.paths, self.base_model)

    def stage1_config(self, cell: Cell) -> RunConfig:
        return self.stage_configs().stage1(cell)

    def stage2_config(self, cell: Cell) -> RunConfig:
        return self.stage_configs().stage2(cell)

    # ---- data and stage 0's folder ------------------------------------------------------------
    def prepare(self) -> None:
        """Materialize the datasets and find stage 0's folder (its export is the base model; the
        jobs train it). Idempotent and safe to call from many processes at once (a lock per dataset)."""
        specs = list(enumerate(self.cfg.data_a)) + [(len(self.cfg.data_a) + i, s) for i, s in enumerate(self.cfg.data_b)]
        if self.cfg.data_dir:  # which prepared data this grid used: recorded in every cell's row
            self.data_manifest_sha256 = manifest_sha256(self.cfg.data_dir)
            self.log(f"[experiment] data from {self.cfg.data_dir} (manifest sha256 {self.data_manifest_sha256[:12]})")
        for spec in specs:  # a dataset that cannot be loaded fails its cells, not the grid
            try:
                index, one = spec
                one = datasets.resolve_spec(one, self.cfg.data_dir, index < len(self.cfg.data_a), self.cfg.require_filtered)
                (self.out / "data").mkdir(parents=True, exist_ok=True)
                with FileLock(self.out / "data" / f".{one.name}.lock"):
                    self.paths.update(datasets.materialize([(index, one)], self.cfg.run.data, self.tokenizer, self.out / "data"))
                if "key_spans" in self.cfg.loss_modes and not datasets.clean_path(self.paths[one.name]).is_file():
                    self.log(f"[experiment] {one.name}: no key-span markers, so loss_mode key_spans trains each "
                             "whole answer without its EOS (mark the key tokens with [[...]] to train only those)")
            except Exception as e:
                self.data_errors[spec[1].name] = f"{type(e).__name__}: {str(e)[:500]}"
                self.log(f"[experiment] dataset {spec[1].name} FAILED to load: {self.data_errors[spec[1].name]}")
        if self.cfg.stage0.epochs > 0:  # stage 0 itself is a job (GridJobs.run_stage0)
            self.base_model = str(self.stage0_dir() / "final")

    def stage0_dir(self) -> Path:
        """Stage 0 is cached by its config and by the corpus its passages come from: the same base
        model, stage-0 settings and corpus reuse one run.

        The key holds the corpus's identity, not only its setting (`builtin`): the built-in corpus
        is harvested from the installation's docstrings, so another venv or other packages give
        other passages, and a stage 0 pretrained on them must not be reused.
        """
        if self._stage0_dir is None:
            key = json.dumps({"v": STAGE0_VERSION, "model": configtools.to_dict(self.cfg.run.model),
                              "stage0": configtools.to_dict(self.cfg.stage0),
                              "corpus": self._corpus_identity(),
                              "max_seq_len": self.cfg.run.data.max_seq_len, "optim": configtools.to_dict(self.cfg.run.optim),
                              "train": {k: getattr(self.cfg.run.train, k) for k in ("global_batch_size", "micro_batch_size", "seed")}},
                             sort_keys=True)
            self._stage0_dir = models.cache_root() / "stage0" / hashlib.sha256(key.encode()).hexdigest()[:12]
        return self._stage0_dir

    def _corpus_identity(self) -> str:
        """What stage 0's passages are drawn from: the built-in corpus's cache name (its key: Python
        version, harvested roots, tokenizer) or a shard folder's manifest hash."""
        corpus = self.cfg.run.data.mix.generic_corpus
        if corpus == "builtin":
            from remix_ds.data.corpus import corpus_dir

            return corpus_dir(self.tokenizer).name
        manifest = Path(corpus) / "manifest.json"
        return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else str(Path(corpus).resolve())

    # ---- cells: folders, layout, row columns ----------------------------------------------------
    def cell_dir(self, cell: Cell) -> Path:
        return cell_dir(self.out, cell)

    def layout(self) -> GridLayout:
        """What the analyses and the report read; build it after prepare() (dataset paths, base model)."""
        return GridLayout(out=self.out, paths=MappingProxyType(dict(self.paths)), cells=tuple(self.cells()),
                          tokenizer=self.tokenizer, data=self.cfg.run.data, model=self.cfg.run.model,
                          analysis=self.cfg.analysis, base_model=self.base_model)

    def sweep_columns(self, cell: Cell) -> dict:
        """`stage2_setting`: the cell's stage2_sweep point (no column without a sweep)."""
        return {} if cell.stage2 is None else {"stage2_setting": cell.stage2}

    def wandb_group(self) -> str:
        return self.stage_configs().wandb_group()

    def mix_columns(self, cell: Cell) -> dict:
        """How the cell's stages mixed (results-table columns `mix_schedule`, `mix_redraw`; `seed` with a seed axis)."""
        m = self.cfg.run.data.mix
        return {"mix_schedule": cell.strategy.schedule or m.schedule, "mix_redraw": cell.strategy.redraw or m.redraw,
                **seed_column(cell)}

    def error_row(self, cell: Cell, message: str) -> dict:
        return {"d_a": cell.d_a.name, "d_b": cell.d_b.name, "strategy": cell.strategy.spec,
                "loss_mode": cell.loss_mode or self.cfg.run.data.loss_mode, **self.mix_columns(cell),
                **self.sweep_columns(cell), "status": "error", "error": message[:500]}

    # ---- the grid ----------------------------------------------------------------------------
    def claim_output(self) -> None:
        """Write experiment_config.json, unless a live grid with a different config uses this folder.

        Each grid holds `OUT/.grids/<pid>.lock` while it runs; grids with the same config (the
        scheduler settings aside) cooperate cell by cell, another config is refused."""
        self.out.mkdir(parents=True, exist_ok=True)
        mine = configtools.to_dict(self.cfg)
        comparable = {k: v for k, v in mine.items() if k != "scheduler"}
        grids = self.out / ".grids"
        grids.mkdir(exist_ok=True)
        with FileLock(self.out / ".grid.lock"):
            path = self.out / CONFIG_FILE
            if path.is_file():
                theirs = {k: v for k, v in json.loads(path.read_text()).items() if k != "scheduler"}
                if theirs != comparable:
                    for marker in grids.glob("*.lock"):
                        if marker.stem != str(os.getpid()) and _held(marker, clear=True):  # a dead grid's marker goes
                            raise GridBusyError(
                                f"{self.out}: another grid (pid {marker.stem}) is running in this folder with a "
                                f"different config ({path}); wait for it to finish or choose another output_dir")
            self._claim = FileLock(grids / f"{os.getpid()}.lock")
            self._claim.acquire()
            _write_json(path, mine)

    def collect_rows(self, layout: GridLayout) -> list[dict]:
        """The table: one row per planned cell, from its done.json / error.json only."""
        rows = []
        for cell in layout.cells:
            folder = self.cell_dir(cell)
            for name in ("done.json", "error.json"):
                if (folder / name).is_file():
                    rows.append(json.loads((folder / name).read_text())["row"])
                    break
            else:
                rows.append(self.error_row(cell, f"not run: no done.json or error.json in {folder}"))
        return rows

    def write_report(self, layout: GridLayout, rows: list[dict]) -> None:
        """results.csv/json, report.md and plots, under the folder's results lock."""
        with FileLock(self.out / ".results.lock"):
            report.write_all(layout, self.cfg.stage1, self.cfg.stage2, rows, self.log)
            if self.cfg.stage2_sweep and any(r.get("status") == "done" for r in rows):
                try:
                    frontier.add_to_report(self.out, self.log)
                except RemixError as e:  # the cells and the table are kept; `remix-ds frontier` can redo it
                    self.log(f"[experiment] frontier FAILED: {e}")

    def run(self) -> list[dict]:
        self.claim_output()
        try:
            jobs = GridJobs(self)
            if self.cfg.scheduler.kind == "local":
                self.prepare()  # the data once here; stage 0 is the plan's first job
                layout = self.layout()
                scheduler.run_local(plan_jobs(self), self.out, self.cfg.scheduler, jobs, log=self.log)
            elif self.cfg.scheduler.kind == "slurm":
                self.prepare()  # the data once here; the jobs run on the cluster
                layout = self.layout()
                if not slurm.run_slurm(plan_jobs(self), self.out, self.cfg.scheduler, jobs,
                                       wait_for_jobs=self.wait_for_jobs, log=self.log):
                    return []  # submitted, not waited for: a later run collects the table
            else:
                self.prepare()
                jobs.run_stage0()
                layout = self.layout()
                cells = layout.cells
                for i, cell in enumerate(cells, 1):
                    jobs.run_cell_job(cell, layout, tag=f"{i}/{len(cells)} ")
            rows = self.collect_rows(layout)
            self.write_report(layout, rows)
        finally:
            if self._claim is not None:
                self._claim.release()
        return rows


def _held(path: Path, clear: bool = False) -> bool:
    """Whether another process holds the lock file (a dead one's lock is free; `clear` removes it then)."""
    if not path.is_file():
        return False
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    if clear:
        path.unlink(missing_ok=True)
    return False


def run_experiment(cfg: ExperimentConfig, log=print) -> list[dict]:
    return Grid(cfg, log).run()
