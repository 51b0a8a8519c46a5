"""`remix-ds forgetting predict`: how well a few measured entries predict a new task's row.

Protocol (per variant, per split, per method):

- Splits (forgetting/splits.py): named splits ``predict.splits`` (published: in-domain held-out
  tasks and out-of-domain families, all predicted from the tasks no split names), else task folds
  (``predict.folds``; 0 = leave one task out), each fold predicted from all other tasks. The
  predictor is fitted once per split (fold) on its training rows.
- For every test task and seed, ``k = predict.revealed`` example columns are revealed (without
  replacement): ``predict.reveal = shared`` (published) draws them once per seed for all test
  tasks, ``per_task`` per (seed, task). The predictor sees the task's entries there and predicts
  all N (``mf`` folds the row in; ``mf_refit`` refits on the training rows + the partial row).
- ``offline``: revealed entries come from the completed run; the training matrix is the final Z.
  ``online``: revealed entries come from the row measured after ``online_fraction`` of the steps;
  the training matrix is [Z_early | Z_final] (T, 2N), so every predictor learns how early
  forgetting maps to final forgetting from the training tasks, and the prediction is read from
  the final half. ``binary``: the binary matrix (1 - EM after on base-correct examples;
  forgetting/binary.py) with ``predict.binary_methods``, revealed from itself.
- Published methods (forgetting/published.py: additive, knn_baseline, svd; binary lgmf,
  lgmf_additive) refit per test row as the paper; ours (mf, mf_refit, knn, lmf, ...) are reported
  in a separate block of the same table.
- Metrics on the hidden entries (the N - k columns not revealed), against the final matrix
  (forgetting/metrics.py). Pooled (the paper's): RMSE, F1 / precision / recall of "forgotten"
  (z > 0; binary: probability > 0.5, lgmf logits > 0) and AUROC over every test row's hidden
  entries of a seed together. Per-row averages (labelled as such): RMSE, Pearson r, AUROC,
  precision / recall / F1, top-k per row, averaged over test rows per seed. Both: mean and std
  over seeds.
- Paired tests (forgetting/stats.py): RMSE and AUROC of every method against ``predict.compare_to``
  (binary: ``lmf``) over the (task, seed) pairs, Wilcoxon signed-rank, Holm-corrected across methods.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from remix_ds.configtools import ConfigError
from remix_ds.forgetting import binary as binary_matrix
from remix_ds.forgetting.complete import SimilarityPredictor, cosine_similarity, make_predictor
from remix_ds.forgetting.config import PredictConfig
from remix_ds.forgetting import published
from remix_ds.forgetting.metrics import METRICS, POOLED, pooled_metrics, row_metrics
from remix_ds.forgetting.splits import Split, fold_splits, folds_of, named_splits, reveal, revealed_columns
from remix_ds.forgetting.stats import compare
from remix_ds.cachedir import write_text_atomic
from remix_ds.forgetting.store import Matrix

__all__ = ["METRICS", "row_metrics", "reveal", "folds_of", "evaluate_predictors", "evaluate_splits", "predict",
           "similarity_inputs", "complete_row"]

SIMILARITY = ("emb_cos", "rep_dot", "grad_sim")
COMPLETION = ("row_mean", "col_mean", "additive", "knn", "mf")
TESTED = (("rmse", True), ("auroc", False))  # (metric, lower is better) of the paired tests


def _nanmean(values) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.any(~np.isnan(arr)) else float("nan")


def _nanstd(values) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanstd(arr)) if np.any(~np.isnan(arr)) else float("nan")


def similarity_inputs(mat: Matrix) -> dict[str, np.ndarray]:
    """The (M, N) similarity scores the matrix has inputs for: emb_cos / rep_dot (task and example
    embeddings: base-model mean hidden states), grad_sim (projected LM-head gradients)."""
    out = {}
    if mat.task_embeddings is not None and mat.example_embeddings is not None \
            and np.all(np.isfinite(mat.task_embeddings)):
        out["emb_cos"] = cosine_similarity(mat.task_embeddings, mat.example_embeddings)
        out["rep_dot"] = mat.task_embeddings @ mat.example_embeddings.T
    if mat.task_grad is not None and mat.example_grad is not None and np.all(np.isfinite(mat.task_grad)):
        out["grad_sim"] = cosine_similarity(mat.task_grad, mat.example_grad)
    return out


def _make(name: str, cfg: PredictConfig, similarities: dict, width: int, binary: bool):
    if name in SIMILARITY:
        S = similarities[name]
        return SimilarityPredictor(name, np.hstack([S] * (width // S.shape[1])))  # online: [S | S]
    if binary and name in ("lmf", "lmf_additive"):
        return make_predictor(name, cfg.binary_rank, cfg.binary_reg, cfg.binary_iters)
    return make_predictor(name, cfg.rank, cfg.reg, cfg.iters, cfg.knn)


def _columns(n: int, cfg: PredictConfig, seed: int, task: int) -> np.ndarray:
    if cfg.reveal == "reference":
        return published.reference_columns(n, cfg.revealed, seed)
    return revealed_columns(n, cfg.revealed, seed, task, cfg.reveal)


def _summary(by_seed: dict[int, dict[str, float]], seeds: list[int], keys) -> dict:
    per_seed = {k: [by_seed[s][k] for s in seeds] for k in keys}
    return {"per_seed": per_seed, "mean": {k: _nanmean(v) for k, v in per_seed.items()},
            "std": {k: _nanstd(v) for k, v in per_seed.items()}}


def evaluate_splits(z_final: np.ndarray, z_reveal: np.ndarray | None, cfg: PredictConfig, splits: list[Split],
                    methods: list[str], similarities: dict[str, np.ndarray] | None = None,
                    binary: bool = False, log=None) -> dict:
    """Run the protocol on complete (M, N) matrices for each split (see the module docstring).

    Returns {split: {method: {"family": "published" | "ours", "pooled": {"per_seed": {metric: [per
    seed]}, "mean": {...}, "std": {...}} (the paper's metrics: every test row's hidden entries of a
    seed together), "per_seed" / "mean" / "std" (per-row averages: each metric averaged over the test
    rows of a seed), "pairs": [{"task": i, "seed": s, metric: value, ...}]}}}; splits sharing a name
    (folds) are pooled.
    """
    m, n = z_final.shape
    online = z_reveal is not None
    similarities = similarities or {}
    train_full = np.hstack([z_reveal, z_final]) if online else z_final
    source = z_reveal if online else z_final
    pub = [x for x in methods if x in published.METHODS]
    ours = [x for x in methods if x not in published.METHODS]
    per: dict[str, dict[str, list[dict]]] = {}
    pooled: dict[str, dict[str, dict[int, list]]] = {}

    def record(split_name, name, i, seed, pred, hidden):
        thr = 0.0 if name in published.PUBLISHED_BINARY else (0.5 if binary else 0.0)
        met = row_metrics(pred[hidden], z_final[i, hidden], cfg.top_fraction, thr)
        per[split_name][name].append({"task": i, "seed": seed, **met})
        acc = pooled[split_name][name].setdefault(seed, [[], [], thr])
        acc[0].append(pred[hidden])
        acc[1].append(z_final[i, hidden])

    for split in splits:
        train = train_full[split.train]
        fitted = {}
        for name in ours:
            p = _make(name, cfg, similarities, train.shape[1], binary)
            fitted[name] = p.fit(train, split.train) if getattr(p, "needs_task", False) else p.fit(train)
        per.setdefault(split.name, {name: [] for name in methods})
        pooled.setdefault(split.name, {name: {} for name in methods})
        for i in split.test.tolist():
            for seed in cfg.seeds:
                cols = _columns(n, cfg, seed, i)
                values = source[i, cols]
                hidden = np.setdiff1d(np.arange(n), cols)
                for name, p in fitted.items():
                    pred = p.fold_in(cols, values, task=i) if getattr(p, "needs_task", False) else p.fold_in(cols, values)
                    if online:
                        pred = pred[n:]
                    record(split.name, name, i, seed, pred, hidden)
        if pub:
            # Published methods: a fresh fit per test row; rows sharing the revealed columns run together.
            test = split.test.tolist()
            padded = np.hstack([source, np.zeros_like(z_final)]) if online else source
            for seed in cfg.seeds:
                groups: dict[tuple, list[int]] = {}
                for i in test:
                    groups.setdefault(tuple(_columns(n, cfg, seed, i).tolist()), []).append(i)
                for key, rows in groups.items():
                    cols = np.array(key, dtype=np.int64)
                    if log:
                        log(f"[forgetting] predict {split.name} seed {seed}: {', '.join(pub)} refit for {len(rows)} rows")
                    preds = published.complete_all(pub, train, padded[rows], cols, seed=seed)
                    hidden = np.setdiff1d(np.arange(n), cols)
                    for name, P in preds.items():
                        for i, pred in zip(rows, P):
                            record(split.name, name, i, seed, pred[n:] if online else pred, hidden)
    out = {}
    for split_name, by_method in per.items():
        out[split_name] = {}
        for name in methods:
            pairs = sorted(by_method[name], key=lambda r: (r["task"], r["seed"]))
            rows = {s: {k: _nanmean([r[k] for r in pairs if r["seed"] == s]) for k in METRICS} for s in cfg.seeds}
            pool = {s: pooled_metrics(a[0], a[1], a[2]) for s, a in pooled[split_name][name].items()}
            out[split_name][name] = {"family": "published" if name in published.METHODS else "ours",
                                     "pooled": _summary(pool, cfg.seeds, POOLED), **_summary(rows, cfg.seeds, METRICS),
                                     "pairs": pairs}
    return out


def evaluate_predictors(z_final: np.ndarray, z_reveal: np.ndarray | None, cfg: PredictConfig,
                        methods: list[str] | None = None) -> dict:
    """The folds protocol (``predict.folds``); methods default to the fold-in completion predictors
    (row_mean, col_mean, additive, knn, mf) that ``cfg.methods`` lists.

    Returns {method: {"per_seed": {metric: [value per seed]}, "mean": {...}, "std": {...}, "pairs": [...]}}.
    """
    methods = list(methods or [x for x in cfg.methods if x in COMPLETION])
    return evaluate_splits(z_final, z_reveal, cfg, fold_splits(len(z_final), cfg.folds), methods)["folds"]


def complete_row(z_train: np.ndarray, cols: np.ndarray, values: np.ndarray, cfg: PredictConfig,
                 method: str = "mf") -> np.ndarray:
    """One new task's full (C,) row from ``values`` revealed at ``cols``, by ``method`` fitted on
    ``z_train`` (T, C) with ``cfg``'s settings: ``make_predictor(...).fit(z_train).fold_in(cols, values)``."""
    p = _make(method, cfg, {}, z_train.shape[1], method in ("lmf", "lmf_additive"))
    return p.fit(z_train).fold_in(np.asarray(cols), np.asarray(values, dtype=np.float64))


def paired_tests(res: dict, reference: str, alpha: float) -> list[dict]:
    """RMSE and AUROC of every method against ``reference`` over (task, seed), Holm across methods."""
    if reference not in res:
        return []
    rows = []
    for metric, lower in TESTED:
        values = {name: {(r["task"], r["seed"]): r[metric] for r in r_["pairs"]} for name, r_ in res.items()}
        rows += [{"metric": metric, **row} for row in compare(values, reference, alpha, lower)]
    return rows


def _splits(task_names: list[str], cfg: PredictConfig) -> list[Split]:
    return named_splits(task_names, cfg.splits) if cfg.splits else fold_splits(len(task_names), cfg.folds)


def _fmt(mean: float, std: float) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def _p(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3g}"


def pooled_table(methods: dict) -> str:
    """The paper's table: pooled metrics x 100, mean ± std over seeds; the published methods
    (forgetting/published.py) in one block, ours in another, on the same splits and seeds."""
    lines = ["Pooled over the test rows' hidden entries (the paper's metrics), x 100, mean ± std over seeds:", "",
             "| | method | " + " | ".join(POOLED) + " |", "|---|---|" + "---:|" * len(POOLED)]
    for family in ("published", "ours"):
        for name, r in methods.items():
            if r.get("family", "ours") != family:
                continue
            cells = ["n/a" if np.isnan(r["pooled"]["mean"][k]) else
                     f"{100 * r['pooled']['mean'][k]:.2f} ± {100 * r['pooled']['std'][k]:.2f}" for k in POOLED]
            lines.append(f"| {family} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results: dict, header: str) -> str:
    lines = [header, ""]
    for variant, res in results["variants"].items():
        lines += [f"### {variant} ({res['description']})", ""]
        for split, methods in res.get("splits", {}).items():
            info = res["split_tasks"][split]
            lines += [f"#### split `{split}`: {len(info['test'])} test tasks, {len(info['train'])} training tasks", "",
                      pooled_table(methods), "",
                      "Per-row averages (ours: each metric averaged over the test rows of a seed; the paper pools):", "",
                      "| method | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
            for name, r in methods.items():
                lines.append(f"| {name} | " + " | ".join(_fmt(r["mean"][k], r["std"][k]) for k in METRICS) + " |")
            tests = res["tests"].get(split, [])
            if tests:
                ref = tests[0]["reference"]
                lines += ["", f"Paired tests against `{ref}` over (task, seed) pairs: two-sided Wilcoxon signed-rank, "
                          f"Holm-corrected across the {len({t['method'] for t in tests})} compared methods per metric "
                          f"(alpha {results['alpha']:g}); diff = method - {ref}.", "",
                          "| metric | method | pairs | mean diff | Wilcoxon p | Holm p | significant |",
                          "|---|---|---:|---:|---:|---:|---|"]
                for t in tests:
                    lines.append(f"| {t['metric']} | {t['method']} | {t['n_pairs']} | {t['mean_diff']:+.4f} | "
                                 f"{_p(t['wilcoxon_p'])} | {_p(t['holm_p'])} | {'yes' if t['significant'] else 'no'} |")
            lines.append("")
        if res.get("skipped_methods"):
            lines += [f"Skipped (no input): {', '.join(res['skipped_methods'])}.", ""]
    return "\n".join(lines)


def _run_variant(z_final, z_reveal, task_names, cfg, methods, sims, binary, reference, log=None) -> dict:
    splits = _splits(task_names, cfg)
    res = evaluate_splits(z_final, z_reveal, cfg, splits, methods, sims, binary, log=log)
    split_tasks = {}
    for s in splits:
        d = split_tasks.setdefault(s.name, {"test": [], "train": []})
        d["test"] += [task_names[i] for i in s.test]
        d["train"] = sorted(set(d["train"]) | {task_names[i] for i in s.train})
    return {"splits": res, "split_tasks": split_tasks,
            "tests": {name: paired_tests(r, reference, cfg.alpha) for name, r in res.items()}}


def _binary(mat: Matrix, cfg: PredictConfig, log) -> tuple[binary_matrix.BinaryMatrix | None, str]:
    if cfg.binary_eval_dir:
        return binary_matrix.from_eval_dir(cfg.binary_eval_dir, mat.task_names, log), \
            f"per-example eval files in {cfg.binary_eval_dir}"
    if mat.em_before is not None and mat.em_after is not None:
        have = np.all(np.isfinite(mat.em_after), axis=1)
        b = binary_matrix.from_em(mat.em_before, mat.em_after[have], [t for t, h in zip(mat.task_names, have) if h],
                                  mat.example_ids)
        return b, "EM stored with the study"
    return None, ""


def predict(matrix: Matrix, cfg: PredictConfig, out_dir: str | Path | None = None, log=print) -> dict:
    """Run every variant in ``cfg.variants`` (+ ``binary`` when EM is available); write
    OUT/predict.json and OUT/predict.md when out_dir is given."""
    mat = matrix.finished()
    m, n = mat.z.shape
    if m < 2:
        raise ConfigError(f"predict: {m} finished task rows; measure at least 2 tasks")
    # Read and check every input before any fit, so a bad eval file or split never costs finished work.
    _splits(mat.task_names, cfg)
    bm, source = _binary(mat, cfg, log)
    if bm is not None and len(bm.task_names) >= 2:
        _splits(bm.task_names, cfg)
    sims = similarity_inputs(mat)
    methods = [x for x in cfg.methods if x not in SIMILARITY or x in sims]
    skipped = [x for x in cfg.methods if x not in methods]
    results = {"shape": [m, n], "tasks": mat.task_names, "revealed": cfg.revealed, "reveal": cfg.reveal,
               "seeds": cfg.seeds, "folds": cfg.folds or m, "splits": cfg.splits, "alpha": cfg.alpha, "variants": {}}
    for variant in cfg.variants:
        if variant == "offline":
            z_reveal, desc = None, "revealed entries from the completed run"
        elif not mat.z_at:
            results["variants"][variant] = {"description": "skipped: the matrix has no intermediate measurement "
                                                           "(measure.at_fractions)", "methods": {}}
            log(f"[forgetting] predict {variant}: skipped, no intermediate measurement")
            continue
        else:
            step, z_reveal = mat.at_fraction(cfg.online_fraction)
            desc = f"revealed entries measured after step {step} of {mat.steps}"
        res = _run_variant(mat.z, z_reveal, mat.task_names, cfg, methods, sims, False, cfg.compare_to, log)
        first = next(iter(res["splits"].values()))
        results["variants"][variant] = {"description": desc, "methods": first, "skipped_methods": skipped, **res}
        best = min(first, key=lambda k: first[k]["mean"]["rmse"])
        log(f"[forgetting] predict {variant}: best RMSE {best} {first[best]['mean']['rmse']:.4f}; "
            + ", ".join(f"{k} {v['mean']['rmse']:.4f}" for k, v in first.items()))
    if bm is not None:
        if len(bm.task_names) < 2 or bm.z.shape[1] <= cfg.revealed:
            log(f"[forgetting] predict binary: skipped ({len(bm.task_names)} tasks x {bm.z.shape[1]} base-correct examples)")
        else:
            ref = "lmf" if "lmf" in cfg.binary_methods else cfg.binary_methods[0]
            res = _run_variant(bm.z, None, bm.task_names, cfg, list(cfg.binary_methods), {}, True, ref, log)
            first = next(iter(res["splits"].values()))
            desc = (f"1 - EM after on the {bm.z.shape[1]} of {bm.n_examples} examples the base model answered "
                    f"correctly, {len(bm.task_names)} tasks, from {source}; forgotten = probability > 0.5")
            results["variants"]["binary"] = {"description": desc, "methods": first, "skipped_methods": [], **res}
            log(f"[forgetting] predict binary: " + ", ".join(f"{k} F1 {v['mean']['forgotten_f1']:.3f}"
                                                              for k, v in first.items()))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "predict.json", json.dumps(results, indent=1) + "\n")
        protocol = (f"named splits {', '.join(cfg.splits)}" if cfg.splits else
                    "leave-one-task-out" if not cfg.folds else f"{cfg.folds} task folds")
        header = (f"## Forgetting prediction: {m} tasks x {n} examples, k = {cfg.revealed} revealed entries "
                  f"({'the same columns for every test task of a seed' if cfg.reveal == 'shared' else 'drawn per task'}), "
                  f"{len(cfg.seeds)} seeds, {protocol}\n\n"
                  "Metrics on hidden entries; mean ± std over seeds. Pooled: the paper's metrics over every test row "
                  "of a seed at once; per-row averages: each row's metric, averaged over the rows of a seed.")
        write_text_atomic(out / "predict.md", markdown(results, header) + "\n")
    return results
