"""On-disk layout of a forgetting study, written atomically so a crash never leaves a half row.

    OUT/config.json        the resolved ForgettingConfig
    OUT/base.npz           example_ids (N,), nll_before (N,), counted_tokens (N,), example_embeddings (N, H)
    OUT/rows/NAME.npz      one finished task: nll_after (N,), steps (S,), nll_at (S, N),
                           task_embedding (H,), settings (JSON string), timings
    OUT/matrix.npz         assembled after every task: z (M, N) (NaN rows: not measured yet),
                           z_step<S> (M, N) per intermediate step, nll_before, nll_after,
                           example_ids, task_names, done (M,), example_embeddings, task_embeddings
    OUT/matrix.json        metadata: example ids, task names and status, steps, lr, timings
    OUT/features.npz       optional (similarity.py): task_names, example_ids, task_grad (M, D),
                           example_grad (N, D): projected LM-head gradients (grad_sim predictor)

EM (optional, for the binary matrix): ``em_before`` (N,) bool in base.npz and ``em_after`` (N,)
bool in a row file, when measure records the fused verdicts; the assembled matrix then holds
``em_before`` and ``em_after`` (M, N) (NaN where a row has none).

z[i, j] = nll_after[i, j] - nll_before[j]: the mean NLL over example j's counted tokens after
fine-tuning the base model on task i alone, minus before. A row file exists only once its task
finished, and is never recomputed; rows measured under other settings (upstream set, model, steps,
lr, optimizer, packing, the task's own definition) are refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from remix_ds.cachedir import open_atomic, write_text_atomic
from remix_ds.configtools import ConfigError


def ids_hash(ids) -> str:
    return "sha256:" + hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def save_npz(path: Path, **arrays) -> None:
    """np.savez to `path` atomically (`cachedir.open_atomic`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(path, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclass
class Matrix:
    """An assembled forgetting matrix (what analyze / predict / replay read)."""

    z: np.ndarray
    """(M, N) NLL after - before; NaN rows for tasks not measured yet."""
    task_names: list[str]
    example_ids: list[str]
    done: np.ndarray
    """(M,) bool."""
    z_at: dict[int, np.ndarray] = field(default_factory=dict)
    """Intermediate step -> (M, N) z measured after that many steps."""
    steps: int = 0
    nll_before: np.ndarray | None = None
    example_embeddings: np.ndarray | None = None
    task_embeddings: np.ndarray | None = None
    em_before: np.ndarray | None = None
    """(N,) base-model EM (1/0), when measured."""
    em_after: np.ndarray | None = None
    """(M, N) EM after each task's fine-tune (NaN: not recorded), when measured."""
    task_grad: np.ndarray | None = None
    """(M, D) projected LM-head gradient of each task (OUT/features.npz), when computed."""
    example_grad: np.ndarray | None = None
    """(N, D) projected LM-head gradient of each upstream example, when computed."""

    def finished(self) -> "Matrix":
        """Only the measured rows."""
        d = self.done

        def rows(a):
            return None if a is None else a[d]

        return Matrix(self.z[d], [n for n, ok in zip(self.task_names, d) if ok], self.example_ids, d[d],
                      {s: z[d] for s, z in self.z_at.items()}, self.steps, self.nll_before, self.example_embeddings,
                      rows(self.task_embeddings), self.em_before, rows(self.em_after), rows(self.task_grad),
                      self.example_grad)

    def at_fraction(self, fraction: float) -> tuple[int, np.ndarray]:
        """The intermediate matrix nearest to ``fraction`` of the steps (step, (M, N))."""
        if not self.z_at:
            raise ConfigError("this matrix has no intermediate measurement; set measure.at_fractions and measure again")
        step = min(self.z_at, key=lambda s: abs(s - fraction * self.steps))
        return step, self.z_at[step]


class MatrixStore:
    """Reads and writes OUT/base.npz, OUT/rows/*.npz and the assembled OUT/matrix.*."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.rows = self.root / "rows"

    # ---- base (before) ----------------------------------------------------------------------
    @property
    def base_path(self) -> Path:
        return self.root / "base.npz"

    def load_base(self, ids: list[str]) -> dict | None:
        if not self.base_path.is_file():
            return None
        base = load_npz(self.base_path)
        if base["example_ids"].tolist() != list(ids):
            raise ConfigError(f"{self.base_path} was measured on another upstream set (upstream.* changed); "
                              "use a new output_dir")
        return base

    def save_base(self, ids: list[str], nll_before: np.ndarray, counted_tokens: np.ndarray, embeddings: np.ndarray,
                  em_before: np.ndarray | None = None) -> None:
        """``em_before``: the base model's (N,) fused EM (nll.score_nll_em), for the binary matrix; rows then
        pass ``em_after=`` to ``save_row``."""
        extra = {} if em_before is None else {"em_before": np.asarray(em_before, dtype=bool)}
        save_npz(self.base_path, example_ids=np.array(ids), nll_before=nll_before, counted_tokens=counted_tokens,
                 example_embeddings=embeddings, **extra)

    # ---- rows --------------------------------------------------------------------------------
    def row_path(self, name: str) -> Path:
        return self.rows / f"{name}.npz"

    def load_row(self, name: str, settings: dict) -> dict | None:
        """The finished row of task ``name``, or None; raises if it was measured under other settings."""
        path = self.row_path(name)
        if not path.is_file():
            return None
        row = load_npz(path)
        have = json.loads(str(row["settings"]))
        if have != settings:
            diff = {k: (have.get(k), settings.get(k)) for k in set(have) | set(settings) if have.get(k) != settings.get(k)}
            raise ConfigError(f"{path} was measured with other settings {diff} (stored, now); use a new output_dir "
                              "or delete the row to re-measure it")
        return row

    def save_row(self, name: str, settings: dict, nll_after: np.ndarray, nll_at: dict[int, np.ndarray],
                 task_embedding: np.ndarray, **extra) -> None:
        steps = sorted(nll_at)
        n = len(nll_after)
        save_npz(self.row_path(name), nll_after=nll_after, steps=np.array(steps, dtype=np.int64),
                 nll_at=np.array([nll_at[s] for s in steps]).reshape(len(steps), n), task_embedding=task_embedding,
                 settings=np.array(json.dumps(settings, sort_keys=True)), **{k: np.asarray(v) for k, v in extra.items()})

    # ---- assembled matrix --------------------------------------------------------------------
    def assemble(self, task_settings: dict[str, dict], info: dict) -> Matrix:
        """Write OUT/matrix.npz + OUT/matrix.json from base and the finished rows; return the Matrix.

        task_settings: task name -> the settings its row must have been measured with (row order);
        info: metadata for matrix.json, with at least ``steps``.
        """
        task_names = list(task_settings)
        base = load_npz(self.base_path)
        ids = base["example_ids"].tolist()
        before = base["nll_before"]
        m, n = len(task_names), len(ids)
        z = np.full((m, n), np.nan)
        after = np.full((m, n), np.nan)
        done = np.zeros(m, dtype=bool)
        emb_up = base["example_embeddings"]
        task_emb = np.full((m, emb_up.shape[1]), np.nan)
        z_at: dict[int, np.ndarray] = {}
        em_before = base.get("em_before")
        em_after = np.full((m, n), np.nan) if em_before is not None else None
        tasks_meta = []
        for i, name in enumerate(task_names):
            row = self.load_row(name, task_settings[name])
            meta = {"name": name, "done": row is not None}
            if row is not None:
                done[i] = True
                after[i] = row["nll_after"]
                z[i] = row["nll_after"] - before
                task_emb[i] = row["task_embedding"]
                for s, nll in zip(row["steps"].tolist(), row["nll_at"]):
                    z_at.setdefault(s, np.full((m, n), np.nan))[i] = nll - before
                if em_after is not None and "em_after" in row:
                    em_after[i] = row["em_after"]
                for key in ("train_seconds", "nll_seconds", "n_train_examples", "surprise_supervised_frac"):
                    if key in row:
                        meta[key] = row[key].item()
                meta["mean_z"] = float(z[i].mean())
            tasks_meta.append(meta)
        save_npz(self.root / "matrix.npz", z=z, nll_before=before, nll_after=after, example_ids=np.array(ids),
                 task_names=np.array(task_names), done=done, example_embeddings=emb_up, task_embeddings=task_emb,
                 steps=np.array(info["steps"]), **{f"z_step{s}": v for s, v in sorted(z_at.items())},
                 **({} if em_before is None else {"em_before": em_before, "em_after": em_after}))
        meta = {
            "z": "z[i, j] = mean NLL over the counted tokens of example j after fine-tuning the base model on task i, minus before",
            "shape": [m, n], "done": int(done.sum()), **info,
            "intermediate_steps": sorted(z_at), "tasks": tasks_meta, "example_ids": ids,
        }
        write_text_atomic(self.root / "matrix.json", json.dumps(meta, indent=1) + "\n")
        return Matrix(z, task_names, ids, done, z_at, info["steps"], before, emb_up, task_emb, em_before, em_after)


def load_matrix(root: str | Path) -> Matrix:
    """Read OUT/matrix.npz (or a path to a matrix .npz)."""
    path = Path(root)
    if path.is_dir():
        path = path / "matrix.npz"
    if not path.is_file():
        raise ConfigError(f"{path}: no forgetting matrix; run `remix-ds forgetting measure` first")
    d = load_npz(path)
    z_at = {int(k[len("z_step"):]): v for k, v in d.items() if k.startswith("z_step")}
    mat = Matrix(d["z"], d["task_names"].tolist(), d["example_ids"].tolist(), d["done"].astype(bool), z_at,
                 int(d["steps"]), d.get("nll_before"), d.get("example_embeddings"), d.get("task_embeddings"),
                 d.get("em_before"), d.get("em_after"))
    feats = path.parent / "features.npz"
    if feats.is_file():
        mat.task_grad, mat.example_grad = load_features(feats, mat.task_names, mat.example_ids)
    return mat


def save_features(path: Path, task_names: list[str], example_ids: list[str], task_grad: np.ndarray,
                  example_grad: np.ndarray) -> None:
    """OUT/features.npz (atomic): the projected gradients of the grad_sim predictor."""
    save_npz(path, task_names=np.array(task_names), example_ids=np.array(example_ids), task_grad=task_grad,
             example_grad=example_grad)


def load_features(path: Path, task_names: list[str], example_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(task_grad (M, D) in ``task_names`` order, NaN for tasks without features; example_grad (N, D))."""
    f = load_npz(path)
    if f["example_ids"].tolist() != list(example_ids):
        raise ConfigError(f"{path} was computed on another upstream set; delete it and compute the features again")
    have = {t: i for i, t in enumerate(f["task_names"].tolist())}
    grad = f["task_grad"]
    out = np.full((len(task_names), grad.shape[1]), np.nan)
    for i, t in enumerate(task_names):
        if t in have:
            out[i] = grad[have[t]]
    return out, f["example_grad"]
