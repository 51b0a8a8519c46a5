"""The grid runner: plan cells, run their stages (sharing stage 1), analyse, tabulate.

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
job.py). Whatever ran the cells, the table is built from their done.json / error.json files only
(`Grid.collect_rows`).

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

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import MappingProxyType

from filelock import FileLock, Timeout

from remix_ds import configtools, models
from remix_ds.cachedir import write_text_atomic
from remix_ds.baselines.strategies import strategy_patch
from remix_ds.config import RunConfig
from remix_ds.data.mixing import mix_count
from remix_ds.data.prepare import manifest_sha256
from remix_ds.engine.metrics import plain_values, start_wandb
from remix_ds.errors import RemixError
from remix_ds.eval.data import load_eval_set
from remix_ds.eval.runner import evaluate, write_results
from remix_ds.configtools import ConfigError
from remix_ds.experiments import analysis, datasets, frontier, prune, report, scheduler, slurm
from remix_ds.experiments import stage as stage_lib
from remix_ds.experiments.config import ExperimentConfig, launcher_argv, parse_strategy
from remix_ds.experiments.layout import latest_eval_rows  # moved there; still grid.latest_eval_rows
from remix_ds.experiments.layout import Cell, GridLayout, cell_dir
from remix_ds.experiments.plan import Job, cell_id, plan_jobs

# Every stage trains its own dataset file (no subsampling, no held-out split) for whole epochs
# and resumes from its newest checkpoint after an interruption.
STAGE_COMMON = {
    "train.max_steps": 0, "train.resume": "auto",
    "data.data_files": None, "data.num_examples": 0, "data.heldout_size": 0,
}


STAGE0_VERSION = 2  # bump when the stage-0 recipe (passages, training) changes: cached stage-0 runs are redone

CONFIG_FILE = "experiment_config.json"
LOCK = ".lock"
"""The lock file inside every stage and cell folder (held while a process trains or runs it)."""


class GridBusyError(ConfigError):
    """Another live grid with a different config runs in the same output folder."""


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def seed_patch(cell: Cell) -> dict:
    """A seeded cell's stages: train.seed (data order, any training randomness) and data.mix.seed (mixing draws)."""
    return {} if cell.seed is None else {"train.seed": cell.seed, "data.mix.seed": cell.seed}


def seed_column(cell: Cell) -> dict:
    """The row's `seed` column (absent without a seed axis, so those tables stay as they were)."""
    return {} if cell.seed is None else {"seed": cell.seed}


def em_of(rows: list[dict]) -> float:
    return sum(bool(r["correct"]) for r in rows) / len(rows) if rows else math.nan


def span_acc_of(rows: list[dict]) -> float | None:
    """Fraction of marked key spans greedy decoding reproduces (None: the set has no marked spans)."""
    spans = [c for r in rows for c in r.get("span_correct", ())]
    return sum(spans) / len(spans) if spans else None


def em_curve(run_dir: Path, name: str) -> list[tuple[int, float]]:
    """EM of set `name` at every eval step of a run (from the per-example files)."""
    out = []
    for p in (run_dir / "eval").glob("step-*"):
        f = p / f"{name}.jsonl"
        if f.is_file():
            out.append((int(p.name.split("-")[1]), em_of([json.loads(l) for l in f.read_text().splitlines()])))
    return sorted(out)


class Grid:
    """Runs an ExperimentConfig. `run()` returns the table rows (one per cell)."""

    def __init__(self, cfg: ExperimentConfig, log=print):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.log = log
        self.launcher = launcher_argv(cfg.launcher)
        self._tokenizer = None
        self._stage0_dir: Path | None = None
        self._failed_stage1: dict[str, str] = {}
        self.paths: dict[str, Path] = {}
        self.data_errors: dict[str, str] = {}
        self.base_model: str | None = None
        self.data_manifest_sha256: str | None = None
        self.devices: list[str] | None = None
        """A job's device group (`scheduler.kind=local`): its stages run on exactly these devices."""
        self.port: int | None = None
        """A job's master port for its stages' launcher."""
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

    def world_size(self) -> int:
        words = self.stage_launcher() or []
        for flag in ("--num_gpus", "--num-gpus"):
            if flag in words:
                return int(words[words.index(flag) + 1])
        return int(os.environ.get("WORLD_SIZE", "1"))

    # ---- stage configs -----------------------------------------------------------------------
    def _stage_config(self, patch: dict, overrides: list[str]) -> RunConfig:
        d = configtools.to_dict(self.cfg.run)
        if d["metrics"]["wandb"] is not None and not d["metrics"]["wandb"]["group"]:
            d["metrics"]["wandb"]["group"] = self.wandb_group()  # the grid's stages and cells: one W&B group
        for dotted, value in patch.items():
            node = d
            *head, last = dotted.split(".")
            for part in head:
                node = node[part]
            node[last] = value
        return configtools.from_dict(RunConfig, configtools.apply_overrides(d, list(overrides)),
                                     source=f"{self.cfg.output_dir} (derived stage config)")

    def _train_path(self, name: str, loss_mode: str | None) -> str:
        p = self.paths[name]
        if loss_mode == "key_spans":
            return str(p.with_name(f"{name}.spans.jsonl"))
        clean = datasets.clean_path(p)  # marked data: the other modes train on the text without markers
        return str(clean) if clean.is_file() else str(p)

    def _eval_every(self, n: int, ratios: tuple[float, ...], setting: int) -> int:
        """`setting`, or about one epoch of optimizer steps (dataset rows plus mixed/replayed rows)."""
        if setting:
            return setting
        rows = n + sum(mix_count(r, n) for r in ratios)
        return max(1, round(rows / self.cfg.run.train.global_batch_size))

    def _n(self, name: str) -> int:
        with self.paths[name].open() as f:
            return sum(1 for line in f if line.strip())

    def stage1_config(self, cell: Cell) -> RunConfig:
        s, a = cell.strategy, cell.d_a.name
        n = self._n(a)
        patch = {
            **STAGE_COMMON,
            "model.init_from": self.base_model or self.cfg.run.model.init_from,
            "train.output_dir": str(self.out / "stage1" / cell.stage1_key),
            "train.epochs": self.cfg.stage1.max_epochs,
            "train.eval_every": self._eval_every(n, (s.random[0], s.generic[0]), self.cfg.stage1.eval_every),
            "train.early_stop_metric": f"eval/{a}/em",
            "train.early_stop_value": self.cfg.stage1.em_threshold,
            "data.dataset": self._train_path(a, cell.loss_mode),
            "data.mix.random_ratio": s.random[0],
            "data.mix.generic_ratio": s.generic[0],
            "data.replay": [],
            "eval.datasets": [str(self.paths[a])],
            "eval.write_rows": True,
            **s.mix_patch(),
        }
        if cell.loss_mode:
            patch["data.loss_mode"] = cell.loss_mode
        patch.update(seed_patch(cell))
        return self._stage_config(patch, self.cfg.stage1.overrides)

    def stage2_config(self, cell: Cell) -> RunConfig:
        s, a, b = cell.strategy, cell.d_a.name, cell.d_b.name
        n = self._n(b)
        setting = self.cfg.stage2_setting(cell.stage2)
        epochs = setting.epochs if setting and setting.epochs is not None else self.cfg.stage2.epochs
        replay = [{"dataset": self._train_path(a, cell.loss_mode), "ratio": s.replay}] if s.replay else []
        patch = {
            **STAGE_COMMON,
            "model.init_from": str(self.out / "stage1" / cell.stage1_key / "final"),
            "train.output_dir": str(self.cell_dir(cell) / "stage2"),
            "train.epochs": epochs,
            "train.eval_every": self._eval_every(n, (s.random[1], s.generic[1], s.replay), self.cfg.stage2.eval_every),
            "train.early_stop_metric": None,
            "train.stop_loss_below": self.cfg.stage2.stop_loss if self.cfg.stage2.stop == "loss" else 0.0,
            "train.stop_loss_steps": self.cfg.stage2.stop_loss_steps,
            "data.dataset": self._train_path(b, cell.loss_mode),
            "data.mix.random_ratio": s.random[1],
            "data.mix.generic_ratio": s.generic[1],
            "data.replay": replay,
            "eval.datasets": [str(self.paths[a])] + ([str(self.paths[b])] if self.cfg.stage2.eval_b == "every_eval" else []),
            "eval.write_rows": True,
            **s.mix_patch(),
        }
        if s.regularize:
            # Cells sharing a stage-1 model share one Fisher/anchor estimate (the first computes it).
            patch.update(strategy_patch(s.regularize, stage1_dataset=str(self.paths[a]),
                                        ewc_state_dir=str(self.out / "stage1" / cell.stage1_key / "ewc-fisher")))
        if cell.loss_mode:
            patch["data.loss_mode"] = cell.loss_mode
        patch.update(seed_patch(cell))
        return self._stage_config(patch, list(self.cfg.stage2.overrides) + (list(setting.overrides) if setting else []))

    def final_eval_b(self, s2cfg: RunConfig, name: str, step: int) -> None:
        """stage2.eval_b=end: score D_B once on the stage-2 export, beside the final D_A rows."""
        folder = Path(s2cfg.train.output_dir) / "eval" / f"step-{step}"
        if (folder / f"{name}.jsonl").is_file():
            return
        model = analysis.load_model(Path(s2cfg.train.output_dir) / "final", self.cfg.analysis.device)
        try:
            eval_cfg = s2cfg.eval
            budget = next((d.max_new_tokens for d in self.cfg.data_b if d.name == name), 0)
            if budget:
                eval_cfg = dataclasses.replace(eval_cfg, max_new_tokens=budget)
            s = load_eval_set(str(self.paths[name]), eval_cfg)
            result = evaluate(model, self.tokenizer, s.examples, eval_cfg, prompt_format=s2cfg.data.prompt_format)
            write_results(result, folder, name, extra={"step": step}, fingerprint=s.fingerprint)
        finally:
            del model

    # ---- running stages ----------------------------------------------------------------------
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
            prune.drop_checkpoints(out, self.cfg.analysis.keep_models, stage_lib.is_done(out), self.log)  # pruning
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

    def prepare(self, stage0: bool = True) -> None:
        """Materialize the datasets and run stage 0 (if configured; `stage0=False`: only find its
        folder). Idempotent and safe to call from many processes at once (locks per dataset and
        on the stage-0 cache)."""
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
        s0 = self.cfg.stage0
        if s0.epochs > 0:
            self.base_model = str(self.stage0_dir() / "final")
            if stage0 and not stage_lib.is_done(self.stage0_dir()):
                skip = datasets.PRESERVE_SLOTS + sum(s.num_examples or 64 for s in self.cfg.data_a + self.cfg.data_b
                                                     if s.dataset == "generic") * (len(specs) + 1)
                patch = {
                    **STAGE_COMMON,
                    "train.output_dir": str(self.stage0_dir()), "train.epochs": s0.epochs,
                    "train.eval_every": 0, "train.early_stop_metric": None,
                    "optim.lr": s0.lr, "data.loss_mode": "all", "data.replay": [],
                    "data.mix.random_ratio": 0.0, "data.mix.generic_ratio": 0.0, "eval.datasets": [],
                }
                self.stage0_dir().mkdir(parents=True, exist_ok=True)
                with FileLock(self.stage0_dir() / ".stage0.lock"):  # the passages file too: grids share this cache
                    if not stage_lib.is_done(self.stage0_dir()):
                        path = datasets.stage0_passages(self.tokenizer, self.cfg.run.data, s0.num_passages,
                                                        s0.passage_words, skip, self.stage0_dir().parent / f"{self.stage0_dir().name}-data")
                        patch["data.dataset"] = str(path)
                        self.run_stage(self._stage_config(patch, s0.overrides), "stage 0 (generic pretraining)")

    def stage0_dir(self) -> Path:
        """Stage 0 is cached by its config and by the corpus its passages come from: the same base
        model, stage-0 settings and corpus reuse one run.

        NOTE: the key held only the corpus *setting* (`builtin`), so a run whose built-in corpus
        differed (it is harvested from the installation's docstrings: another venv, other
        packages) silently reused a stage 0 pretrained on another corpus's passages (found on a
        fresh clone: other passages, other demo rows). The corpus's identity is in the key now.
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

    # ---- one cell ----------------------------------------------------------------------------
    def cell_dir(self, cell: Cell) -> Path:
        return cell_dir(self.out, cell)

    def layout(self) -> GridLayout:
        """What the analyses and the report read; build it after prepare() (dataset paths, base model)."""
        return GridLayout(out=self.out, paths=MappingProxyType(dict(self.paths)), cells=tuple(self.cells()),
                          tokenizer=self.tokenizer, data=self.cfg.run.data, model=self.cfg.run.model,
                          analysis=self.cfg.analysis, base_model=self.base_model)

    def run_cell(self, cell: Cell, layout: GridLayout) -> dict:
        t0 = time.perf_counter()
        for name in (cell.d_a.name, cell.d_b.name):
            if name in self.data_errors:
                raise RuntimeError(f"dataset {name} could not be loaded: {self.data_errors[name]}")
        s1cfg = self.stage1_config(cell)
        if cell.stage1_key in self._failed_stage1:
            raise RuntimeError(f"shared stage 1 {cell.stage1_key} failed earlier in this run: {self._failed_stage1[cell.stage1_key]}")
        try:
            st1 = self.run_stage(s1cfg, f"{cell.stage1_key} stage 1")
        except Exception as e:
            self._failed_stage1[cell.stage1_key] = f"{type(e).__name__}: {str(e)[:300]}"
            raise
        prune.require_export(Path(s1cfg.train.output_dir), f"cell {cell.key}")  # pruning
        s2cfg = self.stage2_config(cell)
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
            "status": "done", **self.mix_columns(cell), **self.sweep_columns(cell),
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
        if self.data_manifest_sha256:
            row["data_manifest_sha256"] = self.data_manifest_sha256
        curve = [(0, em1)] + em_curve(s2dir, a)
        ta = time.perf_counter()
        row.update(analysis.analyse_cell(layout, cell, s1dir, s2dir, rows1, rows2))
        row["analysis_s"] = round(time.perf_counter() - ta, 2)
        row["cell_wall_s"] = round(time.perf_counter() - t0, 2)
        _write_json(self.cell_dir(cell) / "done.json", {"row": row, "curve_a": curve})
        prune.after_cell(cell, layout.cells, self.cfg.analysis.keep_models, s1dir, s2dir,  # pruning
                         lambda c: (self.cell_dir(c) / "done.json").is_file(), self.log)
        self.track_cell(cell, row, {"stage1": configtools.to_dict(s1cfg), "stage2": configtools.to_dict(s2cfg)})
        return row

    def sweep_columns(self, cell: Cell) -> dict:
        """`stage2_setting`: the cell's stage2_sweep point (no column without a sweep)."""
        return {} if cell.stage2 is None else {"stage2_setting": cell.stage2}

    def wandb_group(self) -> str:
        """metrics.wandb.group, default: the name of the grid's output folder."""
        w = self.cfg.run.metrics.wandb
        return (w.group if w and w.group else None) or self.out.resolve().name

    def track_cell(self, cell: Cell, row: dict, stages: dict) -> None:
        """With metrics.wandb: the cell as a W&B run (job_type `cell`) in the grid's group, its config and
        final row (summary), under CELL/wandb. A tracking failure is logged; the cell stays done."""
        w = self.cfg.run.metrics.wandb
        if w is None:
            return
        try:
            w = dataclasses.replace(w, group=self.wandb_group())
            config = {"cell": {"key": cell.key, "d_a": cell.d_a.name, "d_b": cell.d_b.name, "strategy": cell.strategy.spec,
                               "loss_mode": row["loss_mode"], "seed": cell.seed}, **stages}
            run = start_wandb(w, self.cell_dir(cell), cell.key, config, job_type="cell")
            run.summary.update(plain_values(row))
            run.finish()
        except Exception as e:  # tracking must never cost a finished cell
            self.log(f"[experiment] {cell.key}: W&B tracking failed ({type(e).__name__}: {str(e)[:300]})")

    def mix_columns(self, cell: Cell) -> dict:
        """How the cell's stages mixed (results-table columns `mix_schedule`, `mix_redraw`; `seed` with a seed axis)."""
        m = self.cfg.run.data.mix
        return {"mix_schedule": cell.strategy.schedule or m.schedule, "mix_redraw": cell.strategy.redraw or m.redraw,
                **seed_column(cell)}

    # ---- jobs (plan.py): what the serial loop and `python -m remix_ds.experiments.job` run ----------
    def error_row(self, cell: Cell, message: str) -> dict:
        return {"d_a": cell.d_a.name, "d_b": cell.d_b.name, "strategy": cell.strategy.spec,
                "loss_mode": cell.loss_mode or self.cfg.run.data.loss_mode, **self.mix_columns(cell),
                **self.sweep_columns(cell), "status": "error", "error": message[:500]}

    def record_error(self, cell: Cell, message: str, tb: str = "") -> dict:
        """Write the cell's error.json (its row in the table) and log it."""
        row = self.error_row(cell, message)
        folder = self.cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "error.json", {"row": row, "traceback": tb})
        self.log(f"[experiment] cell {cell.key} FAILED: {row['error']}")
        return row

    def cell_finished(self, cell: Cell) -> str | None:
        """`done`, `error` (recorded and not to be retried) or None (to run)."""
        folder = self.cell_dir(cell)
        if (folder / "done.json").is_file():
            return "done"
        if (folder / "error.json").is_file() and not self.cfg.retry_failed:
            return "error"
        return None

    def run_cell_job(self, cell: Cell, layout: GridLayout, tag: str = "") -> str:
        """Run one cell unless it is finished; `done` or `error` (error.json written, never raised).

        The cell folder's lock is held throughout: a cell another process runs is waited for and
        then found finished."""
        folder = self.cell_dir(cell)
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
        cell = next(c for c in self.cells() if c.stage1_key == stage1_key)
        if cell.d_a.name in self.data_errors:
            self.log(f"[experiment] stage 1 {stage1_key}: dataset {cell.d_a.name} could not be loaded; its cells record it")
            return
        self.run_stage(self.stage1_config(cell), f"{stage1_key} stage 1")

    def job_finished(self, job: Job) -> int | None:
        """The scheduler's skip test: 0 (done), 1 (failed, not to be retried) or None (to run)."""
        if job.kind == "stage0":
            return 0 if stage_lib.is_done(self.stage0_dir()) else None
        if job.kind == "stage1":
            return 0 if stage_lib.is_done(self.out / "stage1" / job.id.split(":", 1)[1]) else None
        cell = self._cells_by_id()[job.id]
        finished = self.cell_finished(cell)
        return None if finished is None else (0 if finished == "done" else 1)

    def _cells_by_id(self) -> dict[str, Cell]:
        return {cell_id(c.key): c for c in self.cells()}

    def job_claim(self, job: Job) -> Path:
        """The lock file a scheduler holds while its job runs (cooperating grids skip each other's)."""
        return self.job_log(job).with_name(".scheduled.lock")

    def job_log(self, job: Job) -> Path:
        """Where a job's stdout/stderr go: in the folder of what it trains."""
        if job.kind == "stage0":
            return self.out / "stage0.job.log"
        if job.kind == "stage1":
            return self.out / "stage1" / job.id.split(":", 1)[1] / "job.log"
        return self.cell_dir(self._cells_by_id()[job.id]) / "job.log"

    def job_blocked(self, job: Job, cause: Job, log: Path, code: int) -> None:
        """A cell that will not run because `cause` (a dependency) failed, or whose own job died
        without recording why, gets error.json naming the log, so the table shows why."""
        if job.kind != "cell":
            return
        cell = self._cells_by_id()[job.id]
        if cause.id == job.id and (self.cell_dir(cell) / "error.json").is_file():
            return  # the job recorded its own error (exit 1)
        self.record_error(cell, f"RuntimeError: {cause.label} failed (exit {code}); log {log}")

    def job_lost(self, job: Job, message: str) -> None:
        """A cell's Slurm job ended without done.json (killed, out of time): record why, unless the
        job recorded its own error.json."""
        cell = self._cells_by_id()[job.id]
        if not (self.cell_dir(cell) / "error.json").is_file():
            self.record_error(cell, message)

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
            if self.cfg.scheduler.kind == "local":
                self.prepare(stage0=False)  # the data once here; stage 0 is the plan's first job
                layout = self.layout()
                scheduler.run_local(plan_jobs(self), self.out, self.cfg.scheduler, finished=self.job_finished,
                                    job_log=self.job_log, blocked=self.job_blocked, claim=self.job_claim, log=self.log)
            elif self.cfg.scheduler.kind == "slurm":
                self.prepare(stage0=False)  # the data once here; the jobs run on the cluster
                layout = self.layout()
                if not slurm.run_slurm(plan_jobs(self), self.out, self.cfg.scheduler, finished=self.job_finished,
                                       blocked=self.job_blocked, record_lost=self.job_lost, wait_for_jobs=self.wait_for_jobs,
                                       log=self.log):
                    return []  # submitted, not waited for: a later run collects the table
            else:
                self.prepare()
                layout = self.layout()
                cells = layout.cells
                for i, cell in enumerate(cells, 1):
                    self.run_cell_job(cell, layout, tag=f"{i}/{len(cells)} ")
            rows = self.collect_rows(layout)
            self.write_report(layout, rows)
        finally:
            if self._claim is not None:
                self._claim.release()
        return rows


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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


def run_experiment(cfg: ExperimentConfig, log=print) -> list[dict]:
    return Grid(cfg, log).run()
