"""Replay rows: an earlier stage's dataset (or a pool of token windows) replayed into this stage.

Two concerns, kept apart: the *pool* (`replay_pool`: the rows, tokenized in the stage's kind of
mask) and the *selection* (which pool rows an epoch replays, and how often): `epoch_draw` (per
epoch, `data.replay[].draw=per_epoch`) and `run_draw` (once per run, as published). Where the
selected rows go in the epoch is the stream layout's business (`remix_ds.data.layout`).

- `per_epoch` (ours): floor(n x ratio) rows, redrawn every epoch from (seed, epoch, pool index):
  without replacement (whole passes over the pool when it is smaller), or with a `weights_file`
  i.i.d. with probability softmax(score / temperature) over the pool.
- `once` (published, Jin & Ren `data_utils/replay_helper.py`): floor(n x ratio) + 1 distinct pool
  rows drawn once per run with ``Generator.choice(pool, count, replace=False, p=w)`` (w: the
  softmax weights, uniform without a weights file); every epoch replays that same draw.

Replayed rows get the stage's kind of mask (the mode is the entry's `loss_mode`, else
`data.loss_mode`): `key_spans` supervises the spans marked in the replayed file itself, and a
replayed file with no marked span at all trains as `answer` rows (logged: it would train nothing);
a replay `dataset` ending in `.npz` is a pool of raw token windows (`ids`, `tokens`), e.g.
pretraining windows, trained on every token but the first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from remix_ds.data.config import DataConfig, ReplayConfig
from remix_ds.data.datasets import load_examples
from remix_ds.data.records import DataError
from remix_ds.data.tokenize import IGNORE, TokenizedExample, from_token_ids, tokenize_for

log = logging.getLogger(__name__)

_EPOCH_TAG, _RUN_TAG = 0x5EED, 0xD12A


def replay_pool(cfg: DataConfig, rcfg: ReplayConfig, tokenizer, key: str = "data.replay") -> tuple[list[TokenizedExample], int]:
    """A replay entry's rows before any surprise mask, and how many were dropped as too long.

    Token windows (`.npz`) train every token but the first; files are tokenized in the entry's
    mode (`surprise`: as `answer`, the mask applies afterwards). In `key_spans` mode a file with no
    marked span trains as `answer` rows instead of nothing, with a warning naming the entry."""
    if Path(rcfg.dataset).suffix.lower() == ".npz":
        return token_window_pool(rcfg.dataset, cfg.max_seq_len)
    mode = rcfg.loss_mode or cfg.loss_mode
    examples = load_examples(rcfg.source(), cfg.kvr, "train")
    pool, dropped = tokenize_for(examples, cfg, tokenizer, mode)
    if mode == "key_spans" and pool and not any((t.labels != IGNORE).any() for t in pool):
        log.warning("%s (%s): no %s...%s marked span in any row, so its rows replay as `answer` rows (answer tokens "
                    "and EOS); mark the key tokens or set %s.loss_mode to choose", key, rcfg.dataset,
                    *cfg.key_span_delimiters, key)
        pool, dropped = tokenize_for(examples, cfg, tokenizer, "answer")
    return pool, dropped


def token_window_pool(path: str, max_seq_len: int) -> tuple[list[TokenizedExample], int]:
    """A replay pool of raw token windows from a .npz with `ids` (n,) str and `tokens` (n, L) int."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, tokens = z["ids"], z["tokens"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not a token-window pool (.npz with `ids` and `tokens`): {e}") from None
    if tokens.ndim != 2 or len(ids) != len(tokens):
        raise DataError(f"{path}: `tokens` must be (n, L) with one id per row; got ids {ids.shape}, tokens {tokens.shape}")
    kept = [from_token_ids(t, str(i)) for i, t in zip(ids.tolist(), tokens) if len(t) <= max_seq_len]
    return kept, len(tokens) - len(kept)


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(scores / temperature), computed stably (float64)."""
    x = np.asarray(scores, dtype=np.float64) / temperature
    e = np.exp(x - x.max())
    return e / e.sum()


def replay_probabilities(pool: list[TokenizedExample], rcfg: ReplayConfig) -> np.ndarray | None:
    """Sampling probabilities of the pool rows from `rcfg.weights_file` (None without one).

    The file maps example id -> score (extra ids are ignored, so one file can score a larger
    set); every pool row must have a score.
    """
    if not rcfg.weights_file:
        return None
    try:
        scores = json.loads(Path(rcfg.weights_file).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"replay weights_file {rcfg.weights_file}: {e}") from None
    if not isinstance(scores, dict):
        raise DataError(f"replay weights_file {rcfg.weights_file} must hold a JSON object {{example id: score}}")
    missing = [ex.id for ex in pool if ex.id not in scores]
    if missing:
        raise DataError(f"replay weights_file {rcfg.weights_file} has no score for {len(missing)} pool rows "
                        f"(e.g. {', '.join(missing[:3])})")
    return softmax(np.array([float(scores[ex.id]) for ex in pool]), rcfg.temperature)


# ---- selection ---------------------------------------------------------------------------------
def epoch_draw(pool: int, count: int, probs: np.ndarray | None, seed: int, key: int, k: int) -> np.ndarray:
    """Indices into replay pool k for the epoch with shuffle key `key`: without replacement, whole
    passes if count > pool; weighted pools: i.i.d. draws with the pool's probabilities."""
    rng = np.random.default_rng([seed, key, k, _EPOCH_TAG])
    if probs is not None:
        return rng.choice(pool, size=count, replace=True, p=probs)
    reps = -(-count // pool)
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:count]


def published_count(n_task: int, ratio: float) -> int:
    """Replay rows of a run, as `pred_sample`: floor(n x ratio) + 1."""
    return int(np.floor(n_task * ratio + 1e-9)) + 1


def draw_without_replacement(pool: int, count: int, probs: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct indices of ``range(pool)`` with probabilities ``probs`` (None: uniform)."""
    if count > pool:
        raise DataError(f"replay: {count} distinct replay rows asked of a pool of {pool}; lower replay.ratio "
                        "or use a larger pool")
    if probs is None:
        return rng.choice(pool, size=count, replace=False)
    if np.count_nonzero(probs) < count:
        raise DataError(f"replay: softmax(z / T) leaves {np.count_nonzero(probs)} pool rows with nonzero weight, "
                        f"fewer than the {count} to draw; raise replay.temperature")
    return rng.choice(pool, size=count, replace=False, p=probs)


def run_draw(pool: int, count: int, probs: np.ndarray | None, seed: int, k: int) -> np.ndarray:
    """Replay pool k's rows of the whole run (`draw=once`): ``count`` distinct rows."""
    return draw_without_replacement(pool, count, probs, np.random.default_rng([seed, k, _RUN_TAG]))
