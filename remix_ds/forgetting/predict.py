"""`remix-ds forgetting predict`: how well a few measured entries predict a new task's row.

Protocol (per variant, per method):

- Tasks are split into folds (``predict.folds``; 0 = leave one task out). Each fold's tasks are
  held out; the predictor is fitted once on the other tasks' rows.
- For every held-out task and seed, ``k = predict.revealed`` example columns are drawn without
  replacement (``default_rng([seed, task index]).choice(N, k, replace=False)``); the predictor
  sees the task's entries there and predicts all N.
- ``offline``: revealed entries come from the completed run; the training matrix is the final Z.
  ``online``: revealed entries come from the row measured after ``online_fraction`` of the steps;
  the training matrix is [Z_early | Z_final] (T, 2N), so every predictor learns how early
  forgetting maps to final forgetting from the training tasks, and the prediction is read from
  the final half.
- Metrics on the hidden entries (the N - k columns not revealed), against final z: RMSE,
  Pearson r (NaN for a constant prediction, e.g. row_mean), precision / recall / F1 of
  "forgotten" (z > 0), and of the top-k most forgotten (true set: the k = top_fraction x hidden
  entries with the largest z among those with z > 0; predicted set: the k largest predictions).
  Each metric is averaged over held-out tasks per seed; we report mean and std over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from remix_ds.configtools import ConfigError
from remix_ds.forgetting.complete import make_predictor
from remix_ds.forgetting.config import PredictConfig
from remix_ds.forgetting.store import Matrix, write_text

METRICS = ("rmse", "pearson", "forgotten_precision", "forgotten_recall", "forgotten_f1",
           "topk_precision", "topk_recall", "topk_f1")


def reveal(n: int, k: int, seed: int, task: int) -> np.ndarray:
    """k distinct column indices out of n (sorted), reproducible per (seed, task)."""
    if k >= n:
        raise ConfigError(f"predict.revealed={k} must be smaller than the number of upstream examples {n}")
    return np.sort(np.random.default_rng([seed, task, 0x5EE1]).choice(n, size=k, replace=False))


def _prf(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    tp = float(np.sum(pred & true))
    p = tp / pred.sum() if pred.sum() else 0.0
    r = tp / true.sum() if true.sum() else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def row_metrics(pred: np.ndarray, true: np.ndarray, top_fraction: float = 0.1) -> dict[str, float]:
    """Metrics of one predicted row on its hidden entries (see the module docstring)."""
    err = pred - true
    out = {"rmse": float(np.sqrt(np.mean(err**2)))}
    constant = np.all(pred == pred[0]) or np.all(true == true[0])
    out["pearson"] = float("nan") if constant else float(np.corrcoef(pred, true)[0, 1])
    out["forgotten_precision"], out["forgotten_recall"], out["forgotten_f1"] = _prf(pred > 0, true > 0)
    k = max(1, int(round(top_fraction * len(true))))
    true_top = np.zeros(len(true), dtype=bool)
    order = np.argsort(-true, kind="stable")[:k]
    true_top[order[true[order] > 0]] = True
    pred_top = np.zeros(len(true), dtype=bool)
    pred_top[np.argsort(-pred, kind="stable")[:k]] = True
    out["topk_precision"], out["topk_recall"], out["topk_f1"] = _prf(pred_top, true_top)
    return out


def _nanmean(values) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.any(~np.isnan(arr)) else float("nan")


def folds_of(m: int, folds: int) -> list[np.ndarray]:
    """Task indices held out together: leave-one-out (folds = 0) or `folds` interleaved groups."""
    if m < 2:
        raise ConfigError(f"predict needs at least 2 measured tasks, got {m}")
    f = m if folds == 0 else min(folds, m)
    return [np.arange(i, m, f) for i in range(f)]


def evaluate_predictors(z_final: np.ndarray, z_reveal: np.ndarray | None, cfg: PredictConfig,
                        methods: list[str] | None = None) -> dict:
    """Run the protocol on complete (M, N) matrices. ``z_reveal`` None: offline (reveal from
    ``z_final``); else online (reveal from ``z_reveal``, train on [z_reveal | z_final]).

    Returns {method: {"per_seed": {metric: [value per seed]}, "mean": {...}, "std": {...}}}.
    """
    m, n = z_final.shape
    online = z_reveal is not None
    methods = list(methods or cfg.methods)
    train_full = np.hstack([z_reveal, z_final]) if online else z_final
    # per[method][seed] = list of per-task metric dicts
    per: dict[str, dict[int, list[dict]]] = {name: {s: [] for s in cfg.seeds} for name in methods}
    for held in folds_of(m, cfg.folds):
        train = np.delete(train_full, held, axis=0)
        fitted = {name: make_predictor(name, cfg.rank, cfg.reg, cfg.iters, cfg.knn).fit(train) for name in methods}
        for i in held.tolist():
            for seed in cfg.seeds:
                cols = reveal(n, cfg.revealed, seed, i)
                values = (z_reveal if online else z_final)[i, cols]
                hidden = np.setdiff1d(np.arange(n), cols)
                for name, p in fitted.items():
                    pred = p.fold_in(cols, values)
                    if online:
                        pred = pred[n:]
                    per[name][seed].append(row_metrics(pred[hidden], z_final[i, hidden], cfg.top_fraction))
    out = {}
    for name in methods:
        seed_means = {k: [_nanmean([r[k] for r in per[name][s]]) for s in cfg.seeds] for k in METRICS}
        out[name] = {
            "per_seed": seed_means,
            "mean": {k: float(np.mean(v)) for k, v in seed_means.items()},
            "std": {k: float(np.std(v)) for k, v in seed_means.items()},
        }
    return out


def _fmt(mean: float, std: float) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def markdown(results: dict, header: str) -> str:
    lines = [header, ""]
    for variant, res in results["variants"].items():
        if not res["methods"]:
            lines += [f"### {variant} ({res['description']})", ""]
            continue
        lines += [f"### {variant} ({res['description']})", "",
                  "| method | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
        for name, r in res["methods"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(r["mean"][k], r["std"][k]) for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def predict(matrix: Matrix, cfg: PredictConfig, out_dir: str | Path | None = None, log=print) -> dict:
    """Run every variant in ``cfg.variants``; write OUT/predict.json and OUT/predict.md when out_dir is given."""
    mat = matrix.finished()
    m, n = mat.z.shape
    if m < 2:
        raise ConfigError(f"predict: {m} finished task rows; measure at least 2 tasks")
    results = {"shape": [m, n], "tasks": mat.task_names, "revealed": cfg.revealed, "seeds": cfg.seeds,
               "folds": cfg.folds or m, "variants": {}}
    for variant in cfg.variants:
        if variant == "offline":
            res = evaluate_predictors(mat.z, None, cfg)
            desc = "revealed entries from the completed run"
        elif not mat.z_at:
            results["variants"][variant] = {"description": "skipped: the matrix has no intermediate measurement "
                                                           "(measure.at_fractions)", "methods": {}}
            log(f"[forgetting] predict {variant}: skipped, no intermediate measurement")
            continue
        else:
            step, z_early = mat.at_fraction(cfg.online_fraction)
            res = evaluate_predictors(mat.z, z_early, cfg)
            desc = f"revealed entries measured after step {step} of {mat.steps}"
        results["variants"][variant] = {"description": desc, "methods": res}
        best = min(res, key=lambda k: res[k]["mean"]["rmse"])
        log(f"[forgetting] predict {variant}: best RMSE {best} {res[best]['mean']['rmse']:.4f}; "
            + ", ".join(f"{k} {v['mean']['rmse']:.4f}" for k, v in res.items()))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "predict.json", json.dumps(results, indent=1) + "\n")
        header = (f"## Forgetting prediction: {m} tasks x {n} examples, k = {cfg.revealed} revealed entries, "
                  f"{len(cfg.seeds)} seeds, {'leave-one-task-out' if not cfg.folds else f'{cfg.folds} task folds'}\n\n"
                  "Mean ± std over seeds of the per-seed mean over held-out tasks; metrics on hidden entries.")
        write_text(out / "predict.md", markdown(results, header) + "\n")
    return results
