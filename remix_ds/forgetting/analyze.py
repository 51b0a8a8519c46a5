"""`remix-ds forgetting analyze`: the structure of a forgetting matrix (finished rows only).

- Spectrum: singular values of Z, and rank-k R^2 for k = 1..max_rank, where Z_k is the truncated
  SVD and R^2 = 1 - mean((Z - Z_k)^2) / mean((Z - mean Z)^2).
- Multiplicative rank-1 fit z_ij ~ a_i * b_j from the top singular triplet: b_j = v_j / rms(v)
  (example susceptibility, unit RMS, sign chosen so that mean b >= 0), a_i = s_1 u_i rms(v)
  (task strength). Its R^2 is the rank-1 R^2.
- Additive fit z_ij ~ mu + b_i + b_j: ``additive.r2`` is the paper's (surprise BaselineOnly with
  ALS, 100 epochs, reg_u 15, reg_i 10: `published.baseline_als`), ``additive.r2_least_squares``
  the exact least-squares fit (row and column means on a complete matrix) beside it; the biases
  reported are the least-squares ones.
- Heatmap (OUT/heatmap.png): Z with rows sorted by a and columns by b (both descending),
  diverging colours centred at 0.
- Embedding similarity: cos(task embedding_i, example embedding_j) against z_ij, Pearson and
  Spearman over all entries and Spearman within each task (mean over tasks). Embeddings are mean
  last-layer hidden states of the base model (remix_ds.forgetting.nll.embed); a task's is the mean
  over its first measure.embed_task_examples training examples.
- Gradient similarity (when OUT/features.npz exists, `forgetting features`): the same
  correlations for cos(task gradient, example gradient) of projected LM-head gradients.

Writes OUT/analysis.json, OUT/analysis.md, OUT/analysis.npz (a, b, additive biases), OUT/heatmap.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from remix_ds.configtools import ConfigError
from remix_ds.forgetting.complete import fit_additive, r2, rank_r2
from remix_ds.forgetting.published import additive_als_fit
from remix_ds.forgetting.config import AnalyzeConfig
from remix_ds.cachedir import write_text_atomic
from remix_ds.forgetting.store import Matrix, save_npz


def rank1_factors(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a (M,), b (N,)) with a_i b_j the best rank-1 approximation, rms(b) = 1, mean(b) >= 0."""
    u, s, vt = np.linalg.svd(Z, full_matrices=False)
    v = vt[0]
    sign = -1.0 if v.mean() < 0 else 1.0
    rms = float(np.sqrt(np.mean(v**2)))
    return sign * s[0] * u[:, 0] * rms, sign * v / rms


def embedding_similarity(task_emb: np.ndarray, example_emb: np.ndarray) -> np.ndarray:
    """(M, N) cosine similarities."""
    t = task_emb / np.linalg.norm(task_emb, axis=1, keepdims=True)
    e = example_emb / np.linalg.norm(example_emb, axis=1, keepdims=True)
    return t @ e.T


def similarity_correlation(Z: np.ndarray, S: np.ndarray) -> dict[str, float]:
    within = [stats.spearmanr(S[i], Z[i]).statistic for i in range(len(Z)) if Z[i].std() > 0 and S[i].std() > 0]
    return {
        "pearson": float(stats.pearsonr(S.ravel(), Z.ravel()).statistic),
        "spearman": float(stats.spearmanr(S.ravel(), Z.ravel()).statistic),
        "spearman_within_task_mean": float(np.mean(within)) if within else float("nan"),
    }


def heatmap(Z: np.ndarray, a: np.ndarray, b: np.ndarray, task_names: list[str], path: Path, max_columns: int = 2000) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.argsort(-a, kind="stable")
    cols = np.argsort(-b, kind="stable")
    if len(cols) > max_columns:
        cols = cols[np.linspace(0, len(cols) - 1, max_columns).round().astype(int)]
    data = Z[np.ix_(rows, cols)]
    vmax = float(np.percentile(np.abs(data), 99)) or 1.0
    fig, ax = plt.subplots(figsize=(10, max(3.5, min(12, 0.25 * len(rows) + 2))))
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_xlabel(f"upstream examples, sorted by susceptibility b (descending; {len(cols)} of {Z.shape[1]} shown)")
    ax.set_ylabel("tasks (by strength a)")
    if len(rows) <= 60:
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([task_names[i] for i in rows], fontsize=7)
    fig.colorbar(im, ax=ax, label="z = NLL after - NLL before")
    ax.set_title("Forgetting matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyze(matrix: Matrix, cfg: AnalyzeConfig, out_dir: str | Path | None = None, log=print) -> dict:
    """Analyse the finished rows; write the outputs under out_dir when given."""
    mat = matrix.finished()
    Z = mat.z
    m, n = Z.shape
    if m < 1:
        raise ConfigError("analyze: no finished task row; run `remix-ds forgetting measure` first")
    s, r2_k = rank_r2(Z, cfg.max_rank)
    a, b = rank1_factors(Z)
    mu, row_b, col_b = fit_additive(Z)
    result = {
        "shape": [m, n],
        "tasks": mat.task_names,
        "mean_z": float(Z.mean()),
        "fraction_forgotten": float(np.mean(Z > 0)),
        "singular_values": s[: max(cfg.max_rank, 20)].tolist(),
        "energy_fraction": (s**2 / np.sum(s**2)).tolist()[: max(cfg.max_rank, 20)] if np.sum(s**2) > 0 else [],
        "r2_by_rank": {str(k + 1): v for k, v in enumerate(r2_k)},
        "rank1": {"r2": r2_k[0] if r2_k else float("nan"), "task_strength": dict(zip(mat.task_names, a.tolist()))},
        "additive": {"r2": r2(Z, additive_als_fit(Z)), "r2_least_squares": r2(Z, mu + row_b[:, None] + col_b[None, :]),
                     "mu": mu,
                     "task_bias": dict(zip(mat.task_names, row_b.tolist()))},
    }
    if mat.task_embeddings is not None and mat.example_embeddings is not None and m > 0:
        S = embedding_similarity(mat.task_embeddings, mat.example_embeddings)
        result["embedding_similarity"] = similarity_correlation(Z, S)
    if mat.task_grad is not None and mat.example_grad is not None and np.all(np.isfinite(mat.task_grad)):
        result["gradient_similarity"] = similarity_correlation(Z, embedding_similarity(mat.task_grad, mat.example_grad))
    log(f"[forgetting] analyze {m}x{n}: rank-1 R^2 {result['rank1']['r2']:.3f}, additive R^2 "
        f"{result['additive']['r2']:.3f}, rank-k R^2 " + ", ".join(f"{v:.3f}" for v in r2_k))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "analysis.json", json.dumps(result, indent=1) + "\n")
        save_npz(out / "analysis.npz", task_names=np.array(mat.task_names), example_ids=np.array(mat.example_ids),
                 a=a, b=b, additive_mu=np.array(mu), additive_task_bias=row_b, additive_example_bias=col_b)
        heatmap(Z, a, b, mat.task_names, out / "heatmap.png", cfg.heatmap_max_columns)
        write_text_atomic(out / "analysis.md", markdown(result) + "\n")
    return result


def markdown(r: dict) -> str:
    m, n = r["shape"]
    lines = [f"## Forgetting matrix analysis ({m} tasks x {n} upstream examples)", "",
             f"Mean z {r['mean_z']:+.4f}; fraction of entries with z > 0: {r['fraction_forgotten']:.3f}.", "",
             "| fit | R^2 |", "|---|---:|",
             f"| additive mu + b_i + b_j (the paper's: BaselineOnly ALS, 100 epochs) | {r['additive']['r2']:.4f} |",
             f"| additive mu + b_i + b_j (exact least squares) | {r['additive']['r2_least_squares']:.4f} |",
             f"| multiplicative a_i * b_j (rank 1) | {r['rank1']['r2']:.4f} |"]
    lines += [f"| rank {k} (truncated SVD) | {v:.4f} |" for k, v in r["r2_by_rank"].items()]
    lines += ["", "| task | strength a | additive bias |", "|---|---:|---:|"]
    for t in r["tasks"]:
        lines.append(f"| {t} | {r['rank1']['task_strength'][t]:+.4f} | {r['additive']['task_bias'][t]:+.4f} |")
    if "embedding_similarity" in r:
        e = r["embedding_similarity"]
        lines += ["", "Correlation of z with cos(task embedding, example embedding) (mean last-layer hidden state "
                  f"of the base model): Pearson {e['pearson']:+.3f}, Spearman {e['spearman']:+.3f}, "
                  f"Spearman within task (mean) {e['spearman_within_task_mean']:+.3f}."]
    if "gradient_similarity" in r:
        g = r["gradient_similarity"]
        lines += ["", "Correlation of z with cos(task gradient, example gradient) (projected LM-head gradients, "
                  f"features.npz): Pearson {g['pearson']:+.3f}, Spearman {g['spearman']:+.3f}, "
                  f"Spearman within task (mean) {g['spearman_within_task_mean']:+.3f}."]
    lines += ["", "Heatmap: heatmap.png (rows sorted by a, columns by b)."]
    return "\n".join(lines)
