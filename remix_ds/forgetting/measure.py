"""`remix-ds forgetting measure CONFIG`: one fine-tuning run per task, one matrix row per run.

For each task not yet stored (in config order): build the task's run config from
``finetune`` (dataset = the task, lr = measure.lr, max_steps = measure.steps, no resume, no
export), start a `Trainer` with a `RowProbe` eval hook, and

1. the first time only, score the upstream set with the untouched engine (step 0: the base
   model) -> ``nll_before`` and the upstream embeddings (OUT/base.npz);
2. embed the task's first ``measure.embed_task_examples`` training examples (base model);
3. ``fit()``: the probe scores the upstream set at the intermediate steps (measure.at_fractions)
   and at the end;
4. write OUT/rows/TASK.npz atomically, re-assemble OUT/matrix.npz + matrix.json, delete the
   task's run folder (unless measure.keep_task_runs).

A crash mid-task loses only that task: its row file does not exist, and the next call starts it
again from the base model. Finished rows are never recomputed.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import shutil
import time
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from remix_ds import configtools, models
from remix_ds.assemble import build_trainer
from remix_ds.config import RunConfig
from remix_ds.data.config import ReplayConfig
from remix_ds.engine import dist
from remix_ds.data.surprise import read_mask
from remix_ds.forgetting.config import ForgettingConfig, TaskConfig
from remix_ds.data import tokenize
from remix_ds.forgetting.nll import embed, score_nll_em
from remix_ds.forgetting.store import Matrix, MatrixStore, ids_hash, load_matrix
from remix_ds.forgetting.tasks import as_source, prepare_tasks, task_steps
from remix_ds.forgetting.upstream import UpstreamSet, load_upstream


class RowProbe:
    """Trainer eval hook: score ``items`` after the wanted steps and at the end of training.

    ``nll[step]`` holds the (N,) NLL arrays (same on every rank); ``seconds`` the time spent scoring.
    """

    def __init__(self, items, eval_cfg, pad_id: int, steps: set[int], final_step: int, rank: int, world: int,
                 before: np.ndarray | None = None):
        self.items, self.eval_cfg, self.pad_id = items, eval_cfg, pad_id
        self.steps, self.final_step = set(steps), final_step
        self.rank, self.world = rank, world
        self.before = before
        self.nll: dict[int, np.ndarray] = {}
        self.em: dict[int, np.ndarray] = {}  # the fused pass's EM verdicts, for the binary matrix
        self.seconds = 0.0

    def setup(self, trainer) -> None:
        pass  # items, rank and world are given at construction

    def __call__(self, model, step: int, out_dir=None) -> dict:
        if step not in self.steps and step != self.final_step:
            return {}
        start = time.perf_counter()
        nll, em = score_nll_em(model, self.items, self.eval_cfg, self.pad_id, self.rank, self.world)
        self.seconds += time.perf_counter() - start
        self.nll[step], self.em[step] = nll, em
        out = {"forgetting/upstream_nll": float(nll.mean())}
        if self.before is not None:
            out["forgetting/mean_z"] = float((nll - self.before).mean())
        return out


def task_run_config(fcfg: ForgettingConfig, task: TaskConfig, run_dir: Path, *, seed: int | None = None,
                    replay: list[ReplayConfig] | None = None, eval_every: int = 0) -> RunConfig:
    """The run config of one task's fine-tune: the finetune template with the task as dataset."""
    cfg = copy.deepcopy(fcfg.finetune)
    cfg.optim = replace(cfg.optim, lr=fcfg.measure.lr)
    train = dict(max_steps=fcfg.measure.steps, stop_at_step=0, output_dir=str(run_dir), resume="none", save_every=0,
                 eval_every=eval_every, export_final=False, save_final=False, seed=cfg.train.seed if seed is None else seed)
    if "early_stop_metric" in {f.name for f in fields(cfg.train)}:
        train["early_stop_metric"] = None  # a row is measured after exactly measure.steps steps
    cfg.train = replace(cfg.train, **train)
    cfg.data = replace(cfg.data, dataset=task.dataset, data_files=task.data_files, num_examples=task.num_examples,
                       heldout_size=task.heldout_size, subsample_seed=task.subsample_seed,
                       loss_mode=task.loss_mode or cfg.data.loss_mode, replay=list(replay or []))
    cfg.eval = replace(cfg.eval, datasets=[])  # the probe is the only eval hook
    return cfg


def row_settings(fcfg: ForgettingConfig, upstream_ids: list[str], task: TaskConfig) -> dict:
    """What a stored row depends on; rows measured otherwise are refused (store.load_row)."""
    f = fcfg.finetune
    optim = configtools.to_dict(f.optim)
    optim.pop("lr")
    return {
        "upstream": ids_hash(upstream_ids),
        "model": f.model.name_or_path if f.model.name_or_path != "tiny" else
        "tiny:" + json.dumps(configtools.to_dict(f.model.tiny), sort_keys=True),
        "init_from": f.model.init_from,
        "steps": fcfg.measure.steps,
        "lr": fcfg.measure.lr,
        "optim": optim,
        "global_batch_size": f.train.global_batch_size,
        "seed": f.train.seed,
        "data": {k: configtools.to_dict(f.data)[k] for k in ("max_seq_len", "loss_mode", "prompt_format")},
        **({"surprise": [f.data.surprise_threshold, f.data.surprise_eos]}
           if (task.loss_mode or f.data.loss_mode) == "surprise" else {}),
        "intermediate_steps": fcfg.measure.intermediate_steps(),
        "task": configtools.to_dict(task),
        **({"max_epochs": fcfg.measure.max_epochs} if fcfg.measure.max_epochs else {}),
    }


def quiet(*args, **kwargs) -> None:
    """The log function of ranks other than 0."""


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_probe(cfg: RunConfig, probe: RowProbe, before_fit=None, hooks=()) -> dict:
    """Train one task with ``probe`` as eval hook (after ``hooks``, e.g. the replay arms' stream and
    switch hooks) and the regularizers ``cfg.regularize`` asks for; ``before_fit(trainer)`` runs
    at step 0 and returns extra entries for the result.

    Returns timings, the trainer's dataset size and ``before_fit``'s entries. The trainer is closed and freed.
    """
    # data.loss_mode=surprise: build_trainer sets the mask of the model being fine-tuned on cfg.data
    trainer = build_trainer(cfg, [*hooks, probe], log=print if dist.rank() == 0 else quiet)
    mask = cfg.data.surprise_mask
    try:
        extra = before_fit(trainer) if before_fit is not None else {}
        start = time.perf_counter()
        scored_before = probe.seconds
        trainer.fit()
        wall = time.perf_counter() - start
        info = {"train_seconds": wall - (probe.seconds - scored_before), "nll_seconds": probe.seconds,
                "n_train_examples": len(trainer.loader.stream.dataset), **(extra or {})}
        if mask is not None:
            info["surprise_supervised_frac"] = float(read_mask(mask)[2]["fraction"])
    finally:
        trainer.close()
        del trainer
        _free_memory()
    return info


def base_measurement(trainer, fcfg: ForgettingConfig, upstream: UpstreamSet, store: MatrixStore, pad_id: int,
                     log=print) -> np.ndarray:
    """The untouched model's (N,) upstream NLLs; writes them, its fused EM verdicts (the binary matrix's
    base-correct examples) and the upstream embeddings to OUT/base.npz."""
    t = time.perf_counter()
    model, eval_cfg, m = trainer.engine.module, fcfg.finetune.eval, fcfg.measure
    nll0, em0 = score_nll_em(model, upstream.items, eval_cfg, pad_id, trainer.rank, trainer.world)
    emb = embed(model, upstream.sequences(), eval_cfg, pad_id, m.embed_batch_size, trainer.rank, trainer.world)
    if dist.is_main():
        store.save_base(upstream.ids, nll0, upstream.counted_tokens(), emb, em_before=em0)
    dist.barrier()
    log(f"[forgetting] base model: mean upstream NLL {nll0.mean():.4f} ({time.perf_counter() - t:.1f}s)")
    return nll0


def task_embedding(trainer, fcfg: ForgettingConfig, pad_id: int) -> np.ndarray:
    """Mean embedding of the task's first ``measure.embed_task_examples`` training rows (current model)."""
    m = fcfg.measure
    seqs = [x.input_ids for x in trainer.loader.stream.dataset[: m.embed_task_examples]]
    return embed(trainer.engine.module, seqs, fcfg.finetune.eval, pad_id, m.embed_batch_size,
                 trainer.rank, trainer.world).mean(0)


def at_step0(trainer, *, fcfg: ForgettingConfig, upstream: UpstreamSet, store: MatrixStore, probe: RowProbe,
             pad_id: int, log=print) -> dict:
    """A task's ``before_fit``: the first time only (``probe.before`` unset), measure the base model
    and set ``probe.before``; then ``{"task_embedding": ...}`` of the task (base model)."""
    if probe.before is None:
        probe.before = base_measurement(trainer, fcfg, upstream, store, pad_id, log)
    return {"task_embedding": task_embedding(trainer, fcfg, pad_id)}


def measure(fcfg: ForgettingConfig, log=print) -> Matrix:
    """Measure every missing task row; returns the assembled matrix (see module docstring)."""
    fcfg.require_tasks()
    dist.init_distributed(fcfg.finetune.deepspeed.backend)
    rank, world = dist.rank(), dist.world_size()
    if not dist.is_main():
        log = quiet
    if dist.is_main():
        prepare_tasks(fcfg, log)  # family tasks -> OUT/tasks/NAME.jsonl (once, under a file lock)
    dist.barrier()
    out = Path(fcfg.output_dir)
    store = MatrixStore(out)
    upstream, tokenizer = upstream_for(fcfg)
    pad_id = tokenize.pad_id(tokenizer)
    names = fcfg.task_names()
    settings = {n: row_settings(fcfg, upstream.ids, t) for t, n in zip(fcfg.tasks, names)}
    meta = {"upstream_kind": fcfg.upstream.kind, "model": fcfg.finetune.model.name_or_path,
            "init_from": fcfg.finetune.model.init_from, "steps": fcfg.measure.steps, "lr": fcfg.measure.lr,
            "upstream_fingerprint": upstream.fingerprint("upstream", configtools.to_dict(fcfg.upstream))}
    # Refuse a changed upstream set or changed settings before anything is written.
    base = store.load_base(upstream.ids)
    todo = [(t, n) for t, n in zip(fcfg.tasks, names) if store.load_row(n, settings[n]) is None]
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(configtools.to_dict(fcfg), indent=2) + "\n")
    inter = fcfg.measure.intermediate_steps()
    eval_every = math.gcd(*inter) if inter else 0
    eval_cfg = fcfg.finetune.eval
    log(f"[forgetting] {len(names)} tasks x {len(upstream)} upstream examples ({fcfg.upstream.kind}); "
        f"{len(names) - len(todo)} rows stored, {len(todo)} to measure; {fcfg.measure.steps} steps at lr "
        f"{fcfg.measure.lr:g}, intermediate steps {inter or 'none'}")
    for k, (task, name) in enumerate(todo):
        run_dir = out / "runs" / name
        if dist.is_main() and run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted attempt: start the task over
        dist.barrier()
        cfg = task_run_config(fcfg, as_source(task, out), run_dir, eval_every=eval_every)
        steps = task_steps(fcfg, as_source(task, out), cfg.data.kvr)
        if steps != fcfg.measure.steps:
            cfg.train = replace(cfg.train, max_steps=steps)
            log(f"[forgetting] {name}: {steps} steps (measure.max_epochs={fcfg.measure.max_epochs:g} caps measure.steps)")
        before = None if base is None else base["nll_before"]
        probe = RowProbe(upstream.items, eval_cfg, pad_id, set(inter), steps, rank, world, before)
        log(f"[forgetting] task {k + 1}/{len(todo)}: {name}")
        info = run_with_probe(cfg, probe, partial(at_step0, fcfg=fcfg, upstream=upstream, store=store, probe=probe,
                                                  pad_id=pad_id, log=log))
        if base is None:
            base = {"nll_before": probe.before}  # measured at this task's step 0
        task_emb = info.pop("task_embedding")
        nll_after = probe.nll[steps]
        if dist.is_main():
            store.save_row(name, settings[name], nll_after, {s: probe.nll[s] for s in inter}, task_emb,
                           em_after=probe.em[steps], **info)
            if not fcfg.measure.keep_task_runs:
                shutil.rmtree(run_dir, ignore_errors=True)
            store.assemble(settings, meta)
        dist.barrier()
        z = nll_after - base["nll_before"]
        log(f"[forgetting] {name}: mean z {z.mean():+.4f} (min {z.min():+.4f}, max {z.max():+.4f}); "
            f"train {info['train_seconds']:.1f}s, NLL passes {info['nll_seconds']:.1f}s")
    if base is None:
        raise RuntimeError("no base measurement: no task was run and OUT/base.npz is missing")
    if dist.is_main() and not todo:
        store.assemble(settings, meta)
    dist.barrier()
    return load_matrix(out)


def upstream_for(fcfg: ForgettingConfig) -> tuple[UpstreamSet, object]:
    """(upstream set, tokenizer) of a study, as measure builds them."""
    m = fcfg.finetune.model
    tokenizer = models.load_tokenizer(m.tokenizer or models.model_source(m), m.tiny, m.trust_remote_code)
    return load_upstream(fcfg.upstream, tokenizer, fcfg.finetune.data), tokenizer
