"""Replay as published (Jin & Ren, `data_utils/replay_helper.py`): a stage stream whose replay rows
are drawn without replacement and interleaved at fixed positions, and the trainer seam that
installs it.

`ReplayStream` is a `remix_ds.data.mixing.StageStream` (same rows, same loader contract) with:

- ``draw=without_replacement``: the run replays ``floor(n x ratio) + 1`` distinct pool rows
  (n = task rows), drawn once per run with ``Generator.choice(pool, count, replace=False, p=w)``,
  w = the pool's softmax(score / T) (uniform without a weights file); every epoch replays that
  same draw. ``with_replacement``: the data layer's i.i.d. draw, renewed every epoch.
- ``placement=interleave``: each epoch's non-replay rows (task, generic, random) are permuted by
  ``default_rng(seed + epoch)`` and replay slot j is inserted after
  ``min((j + 1) x every, n_task)`` of them (every = round(1 / ratio)), i.e. at position
  ``interleave_positions(...)[j]``. ``shuffle``: one permutation of all rows, as `pooled`.
- A *switch* (the in-run online variant, `forgetting/online.py`): from loader position
  (epoch, row) on, replay slot j holds ``after[j]`` (the prediction-weighted draw) instead of the
  first draw. Task rows keep their order, so every task row is still seen once per epoch.

Rows are a pure function of (seed, epoch, position, switch), so a resumed run needs only the
switch state (saved by the online hook) to see exactly the same batches.

`install_stream(trainer, stream)` swaps the trainer's loader for one over ``stream`` with the same
batching (called from an eval hook's ``setup``, before any resume): the engine keeps no forgetting
import, the entry point assembles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from remix_ds.data.loader import BackgroundLoader, TrainLoader
from remix_ds.data.mixing import StageStream
from remix_ds.data.records import DataError

_DRAW_TAG = 0xD12A


def published_count(n_task: int, ratio: float) -> int:
    """Replay rows of a run, as `pred_sample`: floor(n x ratio) + 1."""
    return int(np.floor(n_task * ratio + 1e-9)) + 1


def interleave_positions(n_task: int, count: int, every: int) -> np.ndarray:
    """(count,) positions of the replay slots in an epoch of n_task + count rows: slot j follows
    the first min((j + 1) x every, n_task) task rows (surplus slots go to the end, in order)."""
    j = np.arange(count, dtype=np.int64)
    return np.minimum((j + 1) * every, n_task) + j


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


@dataclass
class ReplayStream(StageStream):
    """A stage stream with published replay (module docstring). Build it with `from_stream`."""

    placement: str = "interleave"
    """`interleave` or `shuffle`."""
    every: int = 1
    """Task rows between two replay rows (interleave)."""
    fixed_draws: list = field(default_factory=list)
    """Per replay pool: the run's draw (without replacement), or None (per-epoch i.i.d. draw)."""
    switch: tuple[int, int] | None = None
    """(epoch, row position) from which replay slots hold `after` (None: no switch)."""
    after: list = field(default_factory=list)
    """Per replay pool: the draw used from the switch on."""

    @classmethod
    def from_stream(cls, stream: StageStream, *, ratio: float, draw: str, placement: str) -> "ReplayStream":
        """The published-replay version of ``stream`` (the trainer's, built from a config whose
        replay entry gives the pool, its weights and ``ratio``)."""
        if stream.schedule != "pooled":
            raise DataError(f"replay: placement={placement} orders the epoch itself; use data.mix.schedule=pooled")
        n = len(stream.dataset)
        counts = list(stream.replay_counts)
        fixed: list = [None] * len(counts)
        if draw == "without_replacement":
            counts = [published_count(n, ratio) if pool else 0 for pool in stream.replay_pools]
            for k, pool in enumerate(stream.replay_pools):
                rng = np.random.default_rng([stream.seed, k, _DRAW_TAG])
                fixed[k] = draw_without_replacement(len(pool), counts[k], stream.replay_probs[k], rng)
        out = cls(dataset=stream.dataset, generic=stream.generic, random=stream.random,
                  replay_pools=stream.replay_pools, replay_counts=counts, replay_probs=stream.replay_probs,
                  seed=stream.seed, reshuffle=stream.reshuffle, dropped=stream.dropped, schedule="pooled",
                  redraw=stream.redraw, generic_count=stream.generic_count, random_count=stream.random_count,
                  drawer=stream.drawer, placement=placement, every=max(1, int(round(1 / ratio))),
                  fixed_draws=fixed)
        return out

    @property
    def lazy(self) -> bool:
        return True  # rows always come from `layout` (ours), never the parent's epoch_items order

    def replay_draw(self, epoch: int, k: int) -> np.ndarray:
        """Replay pool k's rows of ``epoch`` before any switch: the run's fixed draw, or the parent's."""
        if self.fixed_draws and self.fixed_draws[k] is not None:
            return self.fixed_draws[k]
        return super().replay_draw(epoch, k)

    def set_switch(self, epoch: int, row: int, after: list[np.ndarray]) -> None:
        """From (epoch, row) on, replay slot j of pool k holds ``after[k][j]``; drops cached rows."""
        if len(after) != len(self.replay_pools) or any(len(a) < c for a, c in zip(after, self.replay_counts)):
            raise DataError("replay switch: one draw per replay pool, at least as long as its rows per epoch")
        self.switch, self.after = (int(epoch), int(row)), [np.asarray(a, dtype=np.int64) for a in after]
        self._layouts.clear()
        self._blocks.clear()

    def layout(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(kind, index within the kind) of every row of ``epoch`` in training order."""
        key = (epoch, self.switch)
        if key in self._layouts:
            return self._layouts[key]
        base = [len(self.dataset), self.generic_count, self.random_count]
        kinds = np.repeat(np.arange(3, dtype=np.int64), base)
        slot = np.concatenate([np.arange(c, dtype=np.int64) for c in base])
        r_kinds = np.repeat(3 + np.arange(len(self.replay_counts), dtype=np.int64), self.replay_counts)
        r_slot = np.concatenate([np.arange(c, dtype=np.int64) for c in self.replay_counts] or [np.zeros(0, np.int64)])
        if self.placement == "interleave":
            perm = np.random.default_rng(self.seed + self._key(epoch)).permutation(len(kinds))
            kinds, slot = kinds[perm], slot[perm]
            total = len(kinds) + len(r_kinds)
            at = interleave_positions(len(kinds), len(r_kinds), self.every)
            is_replay = np.zeros(total, dtype=bool)
            is_replay[at] = True
            k_out, s_out = np.empty(total, np.int64), np.empty(total, np.int64)
            k_out[is_replay], s_out[is_replay] = r_kinds, r_slot
            k_out[~is_replay], s_out[~is_replay] = kinds, slot
        else:
            k_all, s_all = np.concatenate([kinds, r_kinds]), np.concatenate([slot, r_slot])
            perm = np.random.default_rng(self.seed + self._key(epoch)).permutation(len(k_all))
            k_out, s_out = k_all[perm], s_all[perm]
        idx = s_out.copy()
        positions = np.arange(len(idx))
        for k in range(len(self.replay_counts)):
            mine = k_out == 3 + k
            if not mine.any():
                continue
            idx[mine] = self.replay_draw(epoch, k)[s_out[mine]]
            if self.switch is not None:
                e, r = self.switch
                late = mine & ((epoch > e) | ((epoch == e) & (positions >= r)))
                idx[late] = self.after[k][s_out[late]]
        if len(self._layouts) > 2:
            self._layouts.clear()
        self._layouts[key] = out = (k_out, idx)
        return out


def install_stream(trainer, stream: StageStream) -> None:
    """Replace ``trainer.loader`` by a loader over ``stream`` with the same batching and prefetch."""
    old = trainer.loader
    base = old.loader if isinstance(old, BackgroundLoader) else old
    if isinstance(old, BackgroundLoader):
        old.close()
    new = TrainLoader(stream, micro_batch_size=base.micro_batch_size, rank=base.rank, world_size=base.world_size,
                      max_seq_len=base.max_seq_len, pad_id=base.pad_id, eos_id=base.eos_id,
                      pad_to_multiple_of=base.pad_to_multiple_of, reference_compat=base.reference_compat,
                      micro_batch_tokens=base.micro_batch_tokens, step_examples=base.step_rows)
    trainer.loader = BackgroundLoader(new, depth=old.depth, pin_memory=old.pin_memory) \
        if isinstance(old, BackgroundLoader) else new


class PublishedReplay:
    """Eval hook whose only job is ``setup``: install the published-replay stream (returns no metrics)."""

    def __init__(self, *, ratio: float, draw: str, placement: str):
        self.ratio, self.draw, self.placement = ratio, draw, placement
        self.stream: ReplayStream | None = None

    def setup(self, trainer) -> None:
        self.stream = ReplayStream.from_stream(trainer.loader.stream, ratio=self.ratio, draw=self.draw,
                                               placement=self.placement)
        install_stream(trainer, self.stream)

    def __call__(self, model, step: int, out_dir=None) -> dict:
        return {}
