"""`remix-ds forgetting replay-experiment CONFIG`: does replaying the examples predicted to be
forgotten protect upstream knowledge better than uniform replay?

Setup (needs a measured matrix, `forgetting measure`):

- The N upstream examples are split once (``replay.split_seed``) into a replay pool and an
  evaluation set: published (``replay.pool=heldout``): ``heldout_size`` examples held out, the pool
  is all the others; ours (``fraction``): ``pool_fraction`` of them form the pool. Evaluation
  examples are never replayed; every arm is scored only on them: forgetting = mean over the
  evaluation set of (NLL after - NLL before).
- Replay rows (docs/forgetting.md): published (default): floor(n x ratio) + 1 pool examples drawn
  without replacement once per run, one after every 1/ratio task rows, floor(steps x (1 + ratio))
  steps (data.replay[].draw=once, data.replay_placement=interleave); ours (``pool=fraction, draw=with_replacement, placement=shuffle,
  scale_steps=false``): the data layer's per-epoch i.i.d. draws, shuffled in.
- Held-out tasks (``replay.heldout_tasks`` or the last ``num_heldout``) never train the
  predictor. For each held-out task and seed, ``predict.revealed`` pool entries of its row are
  revealed (offline: from the completed run; online: from the early measurement) and the
  ``replay.method`` predictor, fitted on the other tasks' rows, predicts z_hat for the whole pool.
- Arms, each a fresh fine-tune of the base model on the task (seed = the seed), with replay rows
  interleaved at ``replay.ratio`` per task row per epoch:
  ``none`` (no replay), ``uniform`` (uniform over the pool), ``predicted`` (probability
  softmax(z_hat / T)), ``oracle`` (softmax(z / T), the measured row), ``online`` (the in-run
  variant, `online.py`: uniform, then the row completed from a probe at ``switch_fraction``).
- Paired tests over (task, seed) pairs: ``scipy.stats.ttest_rel`` and ``scipy.stats.wilcoxon``.

Every finished run is stored as OUT/replay/runs/TASK/ARM-seedS.json and never recomputed; the
report is OUT/replay/report.md (+ results.json).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from functools import partial
from itertools import product
from pathlib import Path

import numpy as np
from scipy import stats

from remix_ds.configtools import ConfigError
from remix_ds.data import tokenize
from remix_ds.data.config import ReplayConfig
from remix_ds.engine import dist
from remix_ds.forgetting import published
from remix_ds.forgetting.complete import make_predictor
from remix_ds.forgetting.config import ForgettingConfig
from remix_ds.forgetting.measure import RowProbe, quiet, run_with_probe, task_run_config, upstream_for
from remix_ds.forgetting.predict import reveal
from remix_ds.forgetting.online import OnlineSwitch, switch_step
from remix_ds.cachedir import write_text_atomic
from remix_ds.forgetting.store import load_matrix
from remix_ds.forgetting.tasks import as_source

COMPARISONS = (("predicted", "uniform"), ("oracle", "uniform"), ("predicted", "none"), ("uniform", "none"),
               ("oracle", "predicted"))


def split_pool(n: int, pool_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool columns, evaluation columns), disjoint, sorted."""
    perm = np.random.default_rng([seed, 0x9001]).permutation(n)
    k = min(n - 1, max(1, int(round(pool_fraction * n))))
    return np.sort(perm[:k]), np.sort(perm[k:])


def split_heldout(n: int, heldout_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool columns, evaluation columns) as published: a held-out evaluation set of ``heldout_size``
    columns (seeded), never replayed; the pool is every other column. Disjoint, sorted."""
    if heldout_size >= n:
        raise ConfigError(f"replay.heldout_size={heldout_size} leaves no replay pool of the {n} upstream examples; "
                          "set replay.heldout_size below upstream.num_examples (or replay.pool=fraction)")
    perm = np.random.default_rng([seed, 0x4E1D]).permutation(n)
    return np.sort(perm[heldout_size:]), np.sort(perm[:heldout_size])


def pool_and_eval(rc, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The replay pool and the evaluation set of ``replay.pool`` (heldout: published; fraction: ours)."""
    if rc.pool == "heldout":
        return split_heldout(n, rc.heldout_size, rc.split_seed)
    return split_pool(n, rc.pool_fraction, rc.split_seed)


def _early(fcfg: ForgettingConfig, mat) -> np.ndarray | None:
    return mat.at_fraction(fcfg.predict.online_fraction)[1] if fcfg.replay.variant == "online" else None


def fit_replay_predictor(fcfg: ForgettingConfig, mat, train_rows: list[int]):
    """The ``replay.method`` predictor fitted on the training tasks' rows (online: [Z_early | Z])."""
    early, p = _early(fcfg, mat), fcfg.predict
    train = mat.z[train_rows] if early is None else np.hstack([early[train_rows], mat.z[train_rows]])
    if fcfg.replay.method in published.METHODS:
        return published.Refit(fcfg.replay.method, seed=max(fcfg.replay.prediction_seed, 0)).fit(train)
    return make_predictor(fcfg.replay.method, p.rank, p.reg, p.iters, p.knn).fit(train)


def predicted_pool_scores(fcfg: ForgettingConfig, mat, task: int, pool: np.ndarray, seed: int,
                          predictor) -> tuple[np.ndarray, np.ndarray]:
    """(z_hat over the pool, revealed pool columns) for held-out row ``task``: ``predict.revealed``
    pool entries are revealed (never evaluation columns)."""
    k = fcfg.predict.revealed
    if k >= len(pool):
        raise ConfigError(f"predict.revealed={k} must be smaller than the replay pool ({len(pool)} examples)")
    early = _early(fcfg, mat)
    n = mat.z.shape[1]
    if fcfg.replay.prediction_seed >= 0:
        seed = fcfg.replay.prediction_seed
    if isinstance(predictor, published.Refit):
        # As the reference: its completion's revealed columns (any of the N), then the row restricted to the pool.
        cols = published.reference_columns(n, k, seed)
        key = (task, seed, early is not None)
        if key not in predictor.cache:
            pred = predictor.fold_in(cols, (mat.z if early is None else early)[task, cols])
            predictor.cache[key] = pred[n:] if early is not None else pred
        return predictor.cache[key][pool], cols
    cols = pool[reveal(len(pool), k, seed, task)]
    pred = predictor.fold_in(cols, (mat.z if early is None else early)[task, cols])
    if early is not None:
        pred = pred[n:]
    return pred[pool], cols


def paired_tests(results: list[dict], arms: list[str]) -> list[dict]:
    """Paired comparisons of forgetting over (task, seed) pairs present in both arms."""
    by = {(r["task"], r["seed"], r["arm"]): r["forgetting"] for r in results}
    keys = sorted({(r["task"], r["seed"]) for r in results})
    out = []
    for x, y in COMPARISONS:
        if x not in arms or y not in arms:
            continue
        pairs = [(by[k + (x,)], by[k + (y,)]) for k in keys if k + (x,) in by and k + (y,) in by]
        if not pairs:
            continue
        a, b = np.array(pairs).T
        diff = a - b
        row = {"a": x, "b": y, "n_pairs": len(pairs), "mean_diff": float(diff.mean()),
               "a_better_fraction": float(np.mean(diff < 0))}
        row["ttest_rel_p"] = float(stats.ttest_rel(a, b).pvalue) if len(pairs) > 1 and diff.std() > 0 else float("nan")
        try:
            row["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
        except ValueError:  # all differences zero, or too few pairs
            row["wilcoxon_p"] = float("nan")
        out.append(row)
    return out


def report(results: list[dict], tests: list[dict], fcfg: ForgettingConfig, n_pool: int, n_eval: int) -> str:
    rc = fcfg.replay
    arms = [a for a in rc.arms if any(r["arm"] == a for r in results)]
    tasks = sorted({r["task"] for r in results})
    lines = [
        "## Replay experiment: forgetting on held-out upstream examples", "",
        f"Held-out tasks: {', '.join(tasks)}; seeds {rc.seeds}; {fcfg.measure.steps} steps at lr {fcfg.measure.lr:g}; "
        f"replay ratio {rc.ratio:g} per task row ({rc.draw.replace('_', ' ')}, {rc.placement}"
        f"{', steps x (1 + ratio)' if rc.scale_steps else ''}) from a pool of {n_pool} upstream examples; "
        f"evaluation on {n_eval} upstream examples never replayed. Weighted arms: softmax(z / {rc.temperature:g}); "
        f"predicted z from {fcfg.predict.revealed} revealed pool entries ({rc.variant}) with `{rc.method}`.", "",
        "Forgetting = mean over the evaluation set of (NLL after - NLL before); lower is better. "
        "`replayed z` = mean measured z of the examples replayed in epoch 0.", "",
        "| arm | forgetting (mean ± std over task x seed) | replayed z | distinct replayed | runs |", "|---|---:|---:|---:|---:|",
    ]
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        f = np.array([r["forgetting"] for r in rs])
        rz = [r["replayed_true_z"] for r in rs if r.get("replayed_true_z") is not None]
        dz = [r["replayed_distinct"] for r in rs if r.get("replayed_distinct") is not None]
        lines.append(f"| {arm} | {f.mean():+.5f} ± {f.std():.5f} | {np.mean(rz):+.4f} | {np.mean(dz):.1f} | {len(rs)} |"
                     if rz else f"| {arm} | {f.mean():+.5f} ± {f.std():.5f} | - | - | {len(rs)} |")
    lines += ["", "Per task (mean over seeds):", "", "| task | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for t in tasks:
        cells = []
        for arm in arms:
            f = [r["forgetting"] for r in results if r["task"] == t and r["arm"] == arm]
            cells.append(f"{np.mean(f):+.5f}" if f else "-")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "Paired tests over (task, seed) pairs (difference = a - b; negative: a forgets less):", "",
              "| a vs b | pairs | mean difference | a better in | paired t-test p | Wilcoxon p |", "|---|---:|---:|---:|---:|---:|"]
    for t in tests:
        lines.append(f"| {t['a']} vs {t['b']} | {t['n_pairs']} | {t['mean_diff']:+.5f} | {t['a_better_fraction']:.0%} | "
                     f"{t['ttest_rel_p']:.4g} | {t['wilcoxon_p']:.4g} |")
    return "\n".join(lines)


RUN_INFO = ("train_seconds", "nll_seconds", "n_train_examples")


def heldout_tasks(fcfg: ForgettingConfig, names: list[str]) -> tuple[list[str], list[int]]:
    """(held-out task names, rows of the tasks that train the predictor); checks both."""
    rc = fcfg.replay
    held = rc.heldout_tasks or names[-rc.num_heldout:]
    unknown = [t for t in held if t not in names]
    if unknown:
        raise ConfigError(f"replay.heldout_tasks {unknown} have no measured row (measured: {names})")
    train_rows = [i for i, t in enumerate(names) if t not in held]
    if len(train_rows) < 2 and any(a == "predicted" for a in rc.arms):
        raise ConfigError(f"replay: {len(train_rows)} training task rows left after holding out {held}; need >= 2")
    return held, train_rows


def arm_replay(fcfg: ForgettingConfig, root: Path, task: str, seed: int, arm: str, arm_scores: np.ndarray | None,
               pool_ids: list[str], pool_path: str) -> list[ReplayConfig]:
    """The replay entries of one arm's run (none for ``none``); a weighted arm's weights are written
    to OUT/replay/weights/TASK-seedS-ARM.json (rank 0) first."""
    if arm == "none":
        return []
    rc = fcfg.replay
    weights_file = None
    if arm_scores is not None:
        weights_file = root / "weights" / f"{task}-seed{seed}-{arm}.json"
        if dist.is_main():
            weights_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(weights_file, json.dumps(dict(zip(pool_ids, map(float, arm_scores)))))
        dist.barrier()
    return [ReplayConfig(dataset=str(pool_path), subsample_seed=None, ratio=rc.ratio,
                         weights_file=None if weights_file is None else str(weights_file),
                         temperature=rc.temperature, draw="once" if rc.draw == "without_replacement" else "per_epoch")]


def replay_stats(trainer, *, ratio: float, pool_ids: list[str], true_z_of: dict[str, float],
                 arm_scores: np.ndarray | None, log=print) -> dict:
    """A run's ``before_fit``: what epoch 0 replays (measured z of the drawn rows, distinct rows,
    rows per epoch; for a weighted arm its own mean score drawn vs over the whole pool)."""
    stream = trainer.loader.stream
    drawn: dict = {}
    if stream.replay_pools and not stream.replay_counts[0]:
        log(f"[forgetting] warning: replay.ratio={ratio:g} x {len(stream.dataset)} task rows gives no "
            "replay row per epoch (floor); raise replay.ratio or use a larger task")
        drawn["replay_rows_per_epoch"] = 0
    elif stream.replay_pools:
        ids = [stream.replay_pools[0][i].id for i in stream.replay_draw(0, 0)]
        drawn.update(replayed_true_z=float(np.mean([true_z_of[i] for i in ids])),
                     replayed_distinct=len(set(ids)), replay_rows_per_epoch=len(ids))
        if arm_scores is not None:  # the arm's own scores: drawn vs whole pool
            score_of = dict(zip(pool_ids, arm_scores.tolist()))
            drawn.update(replayed_score=float(np.mean([score_of[i] for i in ids])),
                         pool_score=float(np.mean(arm_scores)))
    return drawn


def run_arm(fcfg: ForgettingConfig, root: Path, task_cfg, task: str, arm: str, seed: int,
            replay: list[ReplayConfig], probe: RowProbe, before: np.ndarray, stats, *, steps: int | None = None,
            hooks=(), eval_every: int = 0, after_run=None) -> dict:
    """Fine-tune one (task, arm, seed) from the base model; its result row (also written to
    OUT/replay/runs/TASK/ARM-seedS.json by rank 0). ``stats(trainer)`` gives the replay entries;
    ``steps``: the run's optimizer steps (default measure.steps; ``probe`` scores at the last);
    ``hooks``: eval hooks before the probe; ``after_run()``: extra entries for the row. With
    replay.save_every the run checkpoints and a killed one resumes from its folder."""
    steps = steps or fcfg.measure.steps
    save_every = fcfg.replay.save_every
    run_dir = root / "work" / f"{task}-{arm}-seed{seed}"
    if dist.is_main() and run_dir.exists() and not save_every:
        shutil.rmtree(run_dir)
    dist.barrier()
    cfg = task_run_config(fcfg, task_cfg, run_dir, seed=seed, replay=replay, eval_every=eval_every)
    if replay and fcfg.replay.placement == "interleave":
        cfg.data = dataclasses.replace(cfg.data, replay_placement="interleave")
    cfg.train = dataclasses.replace(cfg.train, max_steps=steps,
                                    **({"resume": "auto", "save_every": save_every} if save_every else {}))
    info = run_with_probe(cfg, probe, stats, hooks=hooks)
    after = probe.nll[steps]
    if after_run is not None:
        info.update(after_run())
    drawn = {k: v for k, v in info.items() if k not in RUN_INFO}
    row = {"task": task, "arm": arm, "seed": seed, "forgetting": float(np.mean(after - before)),
           "eval_nll_after": float(after.mean()), "eval_nll_before": float(before.mean()), **drawn,
           **{k: v for k, v in info.items() if k in RUN_INFO}}
    if dist.is_main():
        path = root / "runs" / task / f"{arm}-seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(row, indent=1) + "\n")
        if not fcfg.measure.keep_task_runs:
            shutil.rmtree(run_dir, ignore_errors=True)
    dist.barrier()
    return row


def complete_pool_row(fcfg: ForgettingConfig, mat, predictor, cols: np.ndarray, values: np.ndarray,
                      pool: np.ndarray) -> np.ndarray:
    """z_hat over the pool of a row revealed at matrix columns ``cols`` (as `predicted_pool_scores`:
    variant online folds ``values`` into the early half of [Z_early | Z] and reads the final half)."""
    n = mat.z.shape[1]
    pred = predictor.fold_in(np.asarray(cols), np.asarray(values))
    if _early(fcfg, mat) is not None:
        pred = pred[n:]
    return pred[pool]


def arm_hooks(fcfg: ForgettingConfig, mat, arm: str, task: int, seed: int, steps: int, pool: np.ndarray, upstream,
              predictor, true_z_of: dict, pad_id: int, rank: int, world: int, log) -> tuple[list, int, object]:
    """(eval hooks before the probe, train.eval_every, after_run) of one arm's run: none for ours
    (replay.legacy()) or the `none` arm; the switch for `online` (the published draw and placement are
    data options, set by `arm_replay` and `run_arm`)."""
    rc = fcfg.replay
    if arm != "online" or rc.legacy():
        return [], 0, None
    k = fcfg.predict.revealed
    if k >= len(pool):
        raise ConfigError(f"predict.revealed={k} must be smaller than the replay pool ({len(pool)} examples)")
    cols = pool[reveal(len(pool), k, seed, task)]
    step = switch_step(steps, rc.switch_fraction)
    switch = OnlineSwitch(step=step, items=[upstream.items[c] for c in cols.tolist()], cols=cols,
                          pool_ids=[upstream.ids[c] for c in pool.tolist()],
                          complete=partial(complete_pool_row, fcfg, mat, predictor, pool=pool),
                          temperature=rc.temperature, eval_cfg=fcfg.finetune.eval, pad_id=pad_id, rank=rank,
                          world=world, log=log, mask_replayed=rc.online_mask)

    def after_run() -> dict:
        st = switch.state
        return {"online_switch_step": st["step"], "online_probe_mean_z": float(np.mean(st["probe_z"])),
                "online_replayed_true_z": float(np.mean([true_z_of[i] for i in st["draw_ids"]])),
                "online_replayed_distinct": len(set(st["draw_ids"]))}

    return [switch], step, after_run


def replay_experiment(fcfg: ForgettingConfig, log=print) -> dict:
    """Run the missing arms x held-out tasks x seeds, then write the report (see module docstring)."""
    out = Path(fcfg.output_dir)
    mat = load_matrix(out).finished()
    rc = fcfg.replay
    names = mat.task_names
    held, train_rows = heldout_tasks(fcfg, names)
    tasks_by_name = {n: as_source(t, out) for n, t in zip(fcfg.task_names(), fcfg.tasks)}
    dist.init_distributed(fcfg.finetune.deepspeed.backend)
    rank, world = dist.rank(), dist.world_size()
    if not dist.is_main():
        log = quiet
    upstream, tokenizer = upstream_for(fcfg)
    if upstream.ids != mat.example_ids:
        raise ConfigError("replay: the configured upstream set differs from the measured matrix's (upstream.* changed)")
    n = len(upstream)
    pool, evalc = pool_and_eval(rc, n)
    pool_ids = [upstream.ids[c] for c in pool]
    root = out / "replay"
    pool_path = upstream.write_pool(pool, root / "pool") if dist.is_main() else None
    pool_path = dist.broadcast_object(pool_path)
    eval_items = [dataclasses.replace(upstream.items[c], index=k) for k, c in enumerate(evalc.tolist())]
    before = mat.nll_before[evalc]
    pad_id = tokenize.pad_id(tokenizer)
    if rc.legacy() and "online" in rc.arms:
        raise ConfigError("replay.arms: the online arm needs the published stream (replay.placement=interleave, "
                          "replay.draw=without_replacement, replay.pool=heldout or replay.scale_steps=true)")
    predictor = fit_replay_predictor(fcfg, mat, train_rows) if {"predicted", "online"} & set(rc.arms) else None
    results = []
    for task, seed in product(held, rc.seeds):
        h = names.index(task)
        z_true = mat.z[h, pool]
        scores = {"oracle": z_true, "uniform": None, "none": None, "online": None}
        if predictor is not None:
            scores["predicted"], _ = predicted_pool_scores(fcfg, mat, h, pool, seed, predictor)
        true_z_of = dict(zip(pool_ids, z_true.tolist()))
        for arm in rc.arms:
            path = root / "runs" / task / f"{arm}-seed{seed}.json"
            if path.is_file():
                results.append(json.loads(path.read_text()))
                continue
            replay = arm_replay(fcfg, root, task, seed, arm, scores[arm], pool_ids, pool_path)
            steps = fcfg.measure.steps if arm == "none" else rc.arm_steps(fcfg.measure.steps)
            probe = RowProbe(eval_items, fcfg.finetune.eval, pad_id, set(), steps, rank, world, before)
            stats = partial(replay_stats, ratio=rc.ratio, pool_ids=pool_ids, true_z_of=true_z_of,
                            arm_scores=scores[arm], log=log)
            hooks, eval_every, after_run = arm_hooks(fcfg, mat, arm, h, seed, steps, pool, upstream, predictor,
                                                     true_z_of, pad_id, rank, world, log)
            log(f"[forgetting] replay {task} / {arm} / seed {seed}")
            row = run_arm(fcfg, root, tasks_by_name[task], task, arm, seed, replay, probe, before, stats,
                          steps=steps, hooks=hooks, eval_every=eval_every, after_run=after_run)
            log(f"[forgetting] replay {task} / {arm} / seed {seed}: forgetting {row['forgetting']:+.5f}")
            results.append(row)
    tests = paired_tests(results, list(rc.arms))
    summary = {"heldout_tasks": held, "pool_size": len(pool), "eval_size": len(evalc),
               "pool_fingerprint": upstream.fingerprint("upstream-pool", columns=pool),
               "eval_fingerprint": upstream.fingerprint("upstream-eval", columns=evalc),
               "runs": results, "tests": tests}
    if dist.is_main():
        write_text_atomic(root / "results.json", json.dumps(summary, indent=1) + "\n")
        write_text_atomic(root / "report.md", report(results, tests, fcfg, len(pool), len(evalc)) + "\n")
    return summary
