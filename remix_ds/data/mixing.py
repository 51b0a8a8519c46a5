"""REMIX mixing: one stream per stage = stage dataset + generic text + random words + replay.

Ratios count mixed rows per stage-dataset row (the reference's `mix_ratio`): with 2,000 facts and
`generic_ratio=2.0`, an epoch holds 2,000 facts and 4,000 generic rows. Each kind of row comes from
one place, asked the same way, ``rows(epoch, step, slots)``: generic rows from
`remix_ds.data.generic.GenericRows`, random-word rows from `remix_ds.data.random_rows.RandomRows`
(both fixed for the stage with `data.mix.redraw=stage`, as in the reference, or drawn fresh every
epoch with `epoch` / `step`), replay rows from their pool (`remix_ds.data.replay_rows`: the pool,
and which pool rows each epoch selects). Where each row goes is the layout's business
(`remix_ds.data.layout`: `pooled`, `stratified`, or published replay's `interleave`).

`StageStream.epoch_items(epoch)` is an epoch's ordered list (pooled + redraw=stage: the
reference's global permutation from `np.random.default_rng(seed + epoch)`; `reference_compat`:
the same permutation and replay draw in every epoch); the loader slices it across ranks. Every
other setting is `lazy`: the loader asks `StageStream.rows(epoch, lo, hi, block)`, materialized a
step at a time (redraw=step) or an epoch at a time (otherwise), in the loader's preparation thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from remix_ds.data import surprise
from remix_ds.data.config import DataConfig
from remix_ds.data.datasets import load_examples
from remix_ds.data.generic import GenericRows
from remix_ds.data.layout import epoch_layout
from remix_ds.data.random_rows import RandomRows
from remix_ds.data.records import DataError
from remix_ds.data.replay_rows import (epoch_draw, published_count, replay_pool, replay_probabilities, run_draw)
from remix_ds.data.tokenize import TokenizedExample, tokenize_for

KINDS = ("dataset", "generic", "random")
"""Row kinds of an epoch's layout, in order; kind 3 + k is replay pool k."""


def mix_count(ratio: float, n: int) -> int:
    """Mixed rows for `n` dataset rows at `ratio` (floor, as the reference's int(n * ratio))."""
    return int(math.floor(ratio * n + 1e-9))


@dataclass
class StageStream:
    """The rows of one stage, by kind, and the per-epoch order over all of them."""

    dataset: list[TokenizedExample]
    generic: list[TokenizedExample] = field(default_factory=list)
    """Generic rows of redraw=stage (a stream built by hand; `build_stage_stream` passes `generic_source`)."""
    random: list[TokenizedExample] = field(default_factory=list)
    """Random-word rows of redraw=stage (as `generic`)."""
    replay_pools: list[list[TokenizedExample]] = field(default_factory=list)
    replay_counts: list[int] = field(default_factory=list)
    replay_probs: list[np.ndarray | None] = field(default_factory=list)
    """Per replay pool: sampling probabilities (weighted replay) or None (uniform)."""
    seed: int = 0
    reshuffle: bool = True
    dropped: dict[str, int] = field(default_factory=dict)
    """Examples dropped for exceeding max_seq_len, by kind, and `bad_records`: dataset rows dropped
    under `data.on_bad_record=drop` (reported, never silently lost)."""
    schedule: str = "pooled"
    """data.mix.schedule: `pooled` or `stratified` (module docstring)."""
    redraw: str = "stage"
    """data.mix.redraw: `stage`, `epoch` or `step`."""
    generic_source: GenericRows | None = None
    """Where the generic rows come from (None: the fixed `generic` list)."""
    random_source: RandomRows | None = None
    """Where the random-word rows come from (None: the fixed `random` list)."""
    fixed_draws: list = field(default_factory=list)
    """Per replay pool: the run's draw (`data.replay[].draw=once`) or None (a fresh draw every epoch)."""
    placement: str = "schedule"
    """data.replay_placement: `schedule` (replay rows placed as every other kind) or `interleave`."""
    every: int = 1
    """Task rows between two replay rows (interleave)."""
    switch: tuple[int, int] | None = None
    """(epoch, row position) from which replay slots hold `after` (None: no switch)."""
    after: list = field(default_factory=list)
    """Per replay pool: the draw used from the switch on."""

    def __post_init__(self):
        if self.generic_source is None:
            self.generic_source = GenericRows.of(self.generic)
        if self.random_source is None:
            self.random_source = RandomRows.of(self.random)
        self.generic, self.random = self.generic_source.fixed, self.random_source.fixed
        self._layouts: dict = {}
        self._blocks: dict = {}
        if not self.dataset:
            raise DataError("the stage dataset has no example that fits data.max_seq_len")
        for i, (pool, count) in enumerate(zip(self.replay_pools, self.replay_counts)):
            if count and not pool:
                raise DataError(f"data.replay[{i}] has no example that fits data.max_seq_len")
        self.replay_probs = list(self.replay_probs) + [None] * (len(self.replay_pools) - len(self.replay_probs))
        self.fixed_draws = list(self.fixed_draws) + [None] * (len(self.replay_pools) - len(self.fixed_draws))
        for i, (pool, p) in enumerate(zip(self.replay_pools, self.replay_probs)):
            if p is not None and len(p) != len(pool):
                raise DataError(f"data.replay[{i}]: {len(p)} sampling probabilities for a pool of {len(pool)} rows")

    @property
    def generic_count(self) -> int:
        """Generic rows per epoch."""
        return self.generic_source.per_epoch

    @property
    def random_count(self) -> int:
        """Random-word rows per epoch."""
        return self.random_source.per_epoch

    def __len__(self) -> int:
        return len(self.dataset) + self.generic_count + self.random_count + sum(self.replay_counts)

    def counts(self) -> dict[str, int]:
        return {"dataset": len(self.dataset), "generic": self.generic_count, "random": self.random_count,
                "replay": sum(self.replay_counts)}

    @property
    def lazy(self) -> bool:
        """True unless pooled + redraw=stage with per-epoch replay placed as the rest (whose order is
        `epoch_items`, unchanged since the reference)."""
        return (self.schedule != "pooled" or self.redraw != "stage" or self.placement != "schedule"
                or any(d is not None for d in self.fixed_draws) or self.switch is not None)

    def _key(self, epoch: int) -> int:
        return 0 if not self.reshuffle else epoch

    def published(self, *, ratio: float, draw: str, placement: str) -> "StageStream":
        """This stream with replay as published (for a stream built by hand; `build_stage_stream` reads
        the same from data.replay[].draw and data.replay_placement): ``draw=without_replacement``:
        floor(n x ratio) + 1 distinct rows of each pool, drawn once per run; ``placement=interleave``:
        one replay row after every round(1 / ratio) task rows (``shuffle``: placed as the rest)."""
        if self.schedule != "pooled":
            raise DataError(f"replay: placement={placement} orders the epoch itself; use data.mix.schedule=pooled")
        counts, draws = list(self.replay_counts), list(self.fixed_draws)
        if draw == "without_replacement":
            counts = [published_count(len(self.dataset), ratio) if pool else 0 for pool in self.replay_pools]
            draws = [run_draw(len(pool), c, p, self.seed, k)
                     for k, (pool, c, p) in enumerate(zip(self.replay_pools, counts, self.replay_probs))]
        return replace(self, generic=[], random=[], replay_counts=counts, fixed_draws=draws,
                       placement="interleave" if placement == "interleave" else "schedule",
                       every=max(1, int(round(1 / ratio))), switch=None, after=[])

    def replay_draw(self, epoch: int, k: int) -> np.ndarray:
        """Indices into replay pool k for this epoch before any switch: the run's draw (draw=once), or
        a fresh one (without replacement, whole passes if count > pool; weighted pools: i.i.d. draws)."""
        if self.fixed_draws[k] is not None:
            return self.fixed_draws[k]
        return epoch_draw(len(self.replay_pools[k]), self.replay_counts[k], self.replay_probs[k], self.seed,
                          self._key(epoch), k)

    def set_switch(self, epoch: int, row: int, after: list[np.ndarray]) -> None:
        """From (epoch, row) on, replay slot j of pool k holds ``after[k][j]``; drops cached rows."""
        if len(after) != len(self.replay_pools) or any(len(a) < c for a, c in zip(after, self.replay_counts)):
            raise DataError("replay switch: one draw per replay pool, at least as long as its rows per epoch")
        self.switch, self.after = (int(epoch), int(row)), [np.asarray(a, dtype=np.int64) for a in after]
        self._layouts.clear()
        self._blocks.clear()

    def epoch_items(self, epoch: int, block: int = 0) -> list[TokenizedExample]:
        """All rows of `epoch` in the global training order (same on every rank); with a lazy stream,
        the order of `rows` with steps of `block` rows (0: one step)."""
        if self.lazy:
            return self.rows(epoch, 0, len(self), block or len(self))
        items = self.dataset + self.generic + self.random
        for k, pool in enumerate(self.replay_pools):
            if self.replay_counts[k]:
                items = items + [pool[i] for i in self.replay_draw(epoch, k)]
        perm = np.random.default_rng(self.seed + self._key(epoch)).permutation(len(items))
        return [items[i] for i in perm]

    def layout(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(kind, index within the kind) of every row of `epoch` in training order: (rows,) int64 each.

        `block` is the optimizer step in rows (stratified steps). Pooled: the `epoch_items` order.
        """
        key = (epoch, block, self.switch)
        if key in self._layouts:
            return self._layouts[key]
        counts = [len(self.dataset), self.generic_count, self.random_count, *self.replay_counts]
        draws = [self.replay_draw(epoch, k).astype(np.int64) if c else np.zeros(0, np.int64)
                 for k, c in enumerate(self.replay_counts)]
        placement = "interleave" if self.placement == "interleave" else self.schedule
        out = epoch_layout(counts, draws, placement=placement, seed=self.seed, key=self._key(epoch), block=block,
                           every=self.every, epoch=epoch, switch=self.switch, after=self.after)
        if len(self._layouts) > 2:
            self._layouts.clear()
        self._layouts[key] = out
        return out

    def rows(self, epoch: int, lo: int, hi: int, block: int) -> list[TokenizedExample]:
        """Rows `[lo, hi)` of `epoch` in training order (steps of `block` rows), materialized a step
        at a time (redraw=step) or an epoch at a time (otherwise, at its first access)."""
        if hi <= lo:
            return []
        first, last = lo // block, (hi - 1) // block
        if self.redraw == "epoch" and (epoch, first) not in self._blocks:
            self._blocks.clear()
            for b in range(-(-len(self) // block)):
                self._blocks[(epoch, b)] = self._block_rows(epoch, b, block)
        out: list[TokenizedExample] = []
        for b in range(first, last + 1):
            if (epoch, b) not in self._blocks:
                if len(self._blocks) > 8:
                    self._blocks.pop(next(iter(self._blocks)))
                self._blocks[(epoch, b)] = self._block_rows(epoch, b, block)
            start = b * block
            out += self._blocks[(epoch, b)][max(lo, start) - start:min(hi, start + block) - start]
        return out

    def _block_rows(self, epoch: int, b: int, block: int) -> list[TokenizedExample]:
        kinds, idx = self.layout(epoch, block)
        kinds, idx = kinds[b * block:(b + 1) * block], idx[b * block:(b + 1) * block]
        generic = iter(self.generic_source.rows(epoch, b, idx[kinds == 1]))
        random = iter(self.random_source.rows(epoch, b, idx[kinds == 2]))
        out = []
        for k, i in zip(kinds.tolist(), idx.tolist()):
            if k == 0:
                out.append(self.dataset[i])
            elif k == 1:
                out.append(next(generic))
            elif k == 2:
                out.append(next(random))
            else:
                out.append(self.replay_pools[k - 3][i])
        return out


def build_stage_stream(cfg: DataConfig, tokenizer, seed: int) -> StageStream:
    """Load, tokenize and mix everything the stage trains on (deterministic in cfg and seed)."""
    examples = load_examples(cfg.source(), cfg.kvr, "train")
    dataset, dropped = tokenize_for(examples, cfg, tokenizer, cfg.loss_mode)
    if cfg.loss_mode == "surprise":
        if not cfg.surprise_mask:
            raise DataError("data.loss_mode=surprise needs data.surprise_mask (the entry point computes it before training)")
        dataset = surprise.apply_mask(dataset, cfg.surprise_mask)
    n = len(examples)
    generic = GenericRows(cfg, tokenizer, mix_count(cfg.mix.generic_ratio, n))
    random = RandomRows(cfg, tokenizer, mix_count(cfg.mix.random_ratio, n))
    pools, counts, probs, draws, p_drop = [], [], [], [], 0
    for i, rcfg in enumerate(cfg.replay):
        pool, d = replay_pool(cfg, rcfg, tokenizer, f"data.replay[{i}]")
        if (rcfg.loss_mode or cfg.loss_mode) == "surprise":
            if not rcfg.surprise_mask:
                raise DataError(f"data.replay[{i}] ({rcfg.dataset}): loss_mode surprise needs data.replay[{i}].surprise_mask "
                                "(the entry point computes it before training)")
            pool = surprise.apply_mask(pool, rcfg.surprise_mask)
        pools.append(pool)
        probs.append(replay_probabilities(pool, rcfg))
        if rcfg.draw == "once":
            counts.append(published_count(len(dataset), rcfg.ratio) if pool else 0)
            draws.append(run_draw(len(pool), counts[-1], probs[-1], seed, i))
        else:
            counts.append(mix_count(rcfg.ratio, n))
            draws.append(None)
        p_drop += d
    total = sum(r.ratio for r in cfg.replay)
    return StageStream(
        dataset=dataset, replay_pools=pools, replay_counts=counts, replay_probs=probs, seed=seed,
        reshuffle=not cfg.reference_compat, schedule=cfg.mix.schedule, redraw=cfg.mix.redraw,
        generic_source=generic, random_source=random, fixed_draws=draws, placement=cfg.replay_placement,
        every=max(1, int(round(1 / total))) if total > 0 else 1,
        dropped={"dataset": dropped, "generic": generic.dropped, "random": random.dropped, "replay": p_drop,
                 "bad_records": len(getattr(examples, "dropped", ()))},
    )
