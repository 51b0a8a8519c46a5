"""The train loader: an endless iterator of packed micro-batches for one data-parallel rank.

Order (docs/architecture.md, "Loaders and resumption"): epoch e's rows are the stage stream's
global permutation from `default_rng(seed + e)`. Micro-step s of an epoch covers the rows
``[s * M * W, (s + 1) * M * W)`` of that order (M = micro_batch_size, W = world_size), split
between ranks as evenly as possible. Hence:
- every row is seen exactly once per epoch across ranks, none dropped by rounding;
- every rank runs the same `batches_per_epoch = ceil(rows / (M * W))` micro-batches (a rank whose
  share of the last step is empty gets a one-token batch with num_supervised == 0, so collectives
  never deadlock; loss is normalized by the global supervised count, so it adds nothing);
- within an epoch, an optimizer step of G examples covers the same rows whatever W and M are
  (G = M * W * accum); at an epoch's end a short last micro-step can shift this when the rows per
  epoch do not divide by M * W.

`state_dict()` is the position of the next micro-batch (epoch, micro-step); loading it replays
the exact same batches. A checkpoint can be resumed with another world size or micro-batch size
when the number of rows consumed in the epoch divides into the new M * W.

Token-budget mode (`micro_batch_tokens` > 0, docs/token_budget.md): the loader's unit is one
optimizer step of G = `step_examples` rows, split evenly across ranks as above; each rank's share
is planned over all its examples at once (`packing.plan_micro_batches`: the fewest micro-batches
whose padded area is at most `micro_batch_tokens`, then the fewest padding cells). Every rank
computes every rank's plan from the global order (no communication) and pads with empty
micro-batches up to the largest count, so all ranks run the same number of forward/backward passes (ZeRO-3 gathers are collectives).

`next_step(n)` returns a `StepBatches` (a list of micro-batches) whose `info` holds the step's
*global* counts (all ranks), known on the host from the same order, so the trainer needs no
device all-reduce to normalize the loss. `BackgroundLoader` prepares the next steps in a thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np
import torch

from remix_ds.data.config import DataConfig
from remix_ds.data.mixing import StageStream, build_stage_stream
from remix_ds.data.packing import empty_batch, pack, pack_rows, pad_reference, plan_micro_batches
from remix_ds.data.tokenize import IGNORE, TokenizedExample, eos_id, pad_id

STATE_VERSION = 1
log = logging.getLogger(__name__)


class StepBatches(list):
    """One optimizer step's micro-batches for this rank; `info` holds host-side global counts:
    num_supervised / num_tokens / num_examples over all ranks, and in token-budget mode
    `micro_batches` (passes every rank runs), `real_micro_batches` (all ranks, without padding),
    `fill` (tokens / (real micro-batches x budget)) and `fill_full` (the same without each rank's
    last, partly filled micro-batch; 0 when every rank has one)."""

    def __init__(self, batches=(), info: dict | None = None):
        super().__init__(batches)
        self.info = dict(info or {})


class TrainLoader:
    """Endless packed micro-batches for `rank`; see the module docstring for the order contract."""

    def __init__(
        self,
        stream: StageStream,
        *,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        max_seq_len: int,
        pad_id: int,
        eos_id: int,
        pad_to_multiple_of: int = 1,
        reference_compat: bool = False,
        micro_batch_tokens: int = 0,
        step_examples: int = 0,
    ):
        if micro_batch_tokens and (micro_batch_tokens < max_seq_len or step_examples < 1):
            raise ValueError(f"micro_batch_tokens={micro_batch_tokens} needs >= one row ({max_seq_len}) and "
                             f"step_examples >= 1 (got {step_examples})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.stream = stream
        self.micro_batch_size = micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.max_seq_len, self.pad_id, self.eos_id = max_seq_len, pad_id, eos_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.reference_compat = reference_compat
        self.rows_per_epoch = len(stream)
        self.micro_batch_tokens = micro_batch_tokens
        self.per_step = step_examples if micro_batch_tokens else micro_batch_size * world_size
        self.batches_per_epoch = -(-self.rows_per_epoch // self.per_step)
        self.step_rows = step_examples or self.per_step
        """Rows of one optimizer step (data.mix.schedule=stratified steps, redraw=step draws)."""
        """Loader units per epoch (the same on every rank): micro-batches, or optimizer steps in token-budget mode."""
        self.epoch = 0
        """Completed epochs: the next micro-batch belongs to this epoch."""
        self.step_in_epoch = 0
        """Index of the next micro-batch within the epoch."""
        # The reference pads every example to one length: the longest row of the stage.
        self.reference_len = max(len(x) for x in self._all_rows()) if reference_compat else 0
        self.stats = {"rows_per_epoch": self.rows_per_epoch, **stream.counts(),
                      **{f"dropped_{k}": v for k, v in stream.dropped.items()}}
        """Rows per epoch by kind, and examples dropped for exceeding max_seq_len (for logs)."""
        self._order: list[TokenizedExample] | None = None
        self._order_epoch = -1

    def _all_rows(self):
        yield from self.stream.dataset
        yield from self.stream.generic
        yield from self.stream.random
        for pool in self.stream.replay_pools:
            yield from pool

    def __iter__(self):
        return self

    def rows_for(self, epoch: int, step: int, rank: int | None = None) -> list[TokenizedExample]:
        """`rank`'s (default: this rank's) rows of loader unit `step` of `epoch` (possibly empty in the last step)."""
        rank = self.rank if rank is None else rank
        start = step * self.per_step
        n = min(self.per_step, self.rows_per_epoch - start)
        lo = start + (rank * n) // self.world_size  # even split of a (possibly short) step
        hi = start + ((rank + 1) * n) // self.world_size
        if self.stream.lazy:  # stratified steps / fresh mixing rows, drawn here (in the loader's thread)
            return self.stream.rows(epoch, lo, hi, self.step_rows)
        if self._order_epoch != epoch:
            self._order, self._order_epoch = self.stream.epoch_items(epoch), epoch
        return self._order[lo:hi]

    def _collate(self, rows: list[TokenizedExample]) -> dict:
        if self.reference_compat:
            return pad_reference(rows, self.reference_len, self.eos_id)
        return pack(rows, self.max_seq_len, self.pad_id, self.pad_to_multiple_of)

    def _supervised(self, rows: list[TokenizedExample]) -> int:
        """num_supervised of `rows` collated (reference pads are trained to EOS, so they count)."""
        n = sum(int(np.count_nonzero(ex.labels != IGNORE)) for ex in rows)
        return n + sum(self.reference_len - len(ex) for ex in rows) if self.reference_compat else n

    def _advance(self) -> None:
        self.step_in_epoch += 1
        if self.step_in_epoch == self.batches_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def _global_counts(self, epoch: int, step: int) -> dict:
        rows = [ex for r in range(self.world_size) for ex in self.rows_for(epoch, step, r)]
        return {"num_supervised": self._supervised(rows), "num_tokens": sum(len(ex) for ex in rows),
                "num_examples": len(rows)}

    def plan(self, rows: list[TokenizedExample]) -> list[list[list[int]]]:
        """Token-budget split of one rank's share: micro-batches of rows of row indices, whole
        examples, each micro-batch's padded area <= micro_batch_tokens (`packing.plan_micro_batches`:
        fewest micro-batches, then fewest padded cells, over the share's examples)."""
        return plan_micro_batches([len(ex) for ex in rows], self.max_seq_len, self.micro_batch_tokens,
                                  self.pad_to_multiple_of)

    def _collate_plan(self, rows: list[TokenizedExample], group: list[list[int]]) -> dict:
        items = [i for row in group for i in row]
        if self.reference_compat:
            return pad_reference([rows[i] for i in items], self.reference_len, self.eos_id)
        local = {i: n for n, i in enumerate(items)}
        return pack_rows([rows[i] for i in items], [[local[i] for i in row] for row in group], self.max_seq_len,
                         self.pad_id, self.pad_to_multiple_of)

    def _token_step(self) -> StepBatches:
        epoch, step = self.epoch, self.step_in_epoch
        shares = [self.rows_for(epoch, step, r) for r in range(self.world_size)]
        plans = [(rows, self.plan(rows)) for rows in shares]
        passes = max(1, max(len(p) for _, p in plans))
        rows, mine = plans[self.rank]
        batches = [self._collate_plan(rows, group) for group in mine]
        batches += [empty_batch(self.pad_id) for _ in range(passes - len(batches))]  # same pass count on every rank
        tokens = [sum(len(rows_r[i]) for row in g for i in row) for rows_r, p in plans for g in p]
        full = [sum(len(rows_r[i]) for row in g for i in row) for rows_r, p in plans for g in p[:-1]]
        budget = self.micro_batch_tokens
        info = {**self._global_counts(epoch, step), "micro_batches": passes, "real_micro_batches": len(tokens),
                "fill": sum(tokens) / (budget * len(tokens)) if tokens else 0.0,
                "fill_full": sum(full) / (budget * len(full)) if full else 0.0,
                "full_micro_batches": len(full)}
        self._advance()
        return StepBatches(batches, info)

    def __next__(self):
        """The next loader unit: one micro-batch (dict), or in token-budget mode one step's `StepBatches`."""
        if self.micro_batch_tokens:
            return self._token_step()
        batch = self._collate(self.rows_for(self.epoch, self.step_in_epoch))
        self._advance()
        return batch

    def next_step(self, units: int) -> StepBatches:
        """One optimizer step: `units` micro-batches (example mode) or one planned step (units must be 1)."""
        if self.micro_batch_tokens:
            if units != 1:
                raise ValueError(f"token-budget mode plans one optimizer step per unit, got units={units}")
            return self._token_step()
        counts, batches = [], []
        for _ in range(units):
            counts.append(self._global_counts(self.epoch, self.step_in_epoch))
            batches.append(next(self))
        info = {k: sum(c[k] for c in counts) for k in ("num_supervised", "num_tokens", "num_examples")}
        return StepBatches(batches, info)

    def state_dict(self) -> dict:
        """Plain ints: where the next micro-batch is (plus what is needed to check a resume)."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "rows_consumed": self.step_in_epoch * self.per_step,
            "rows_per_epoch": self.rows_per_epoch,
            "seed": self.stream.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position; raises ValueError if the data or the seed changed."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        if state["rows_per_epoch"] != self.rows_per_epoch or state["seed"] != self.stream.seed:
            raise ValueError(
                f"cannot resume: the checkpoint's data stream had {state['rows_per_epoch']} rows per epoch with seed "
                f"{state['seed']}, this one has {self.rows_per_epoch} with seed {self.stream.seed} (data config changed?)"
            )
        consumed = state["rows_consumed"]
        if consumed % self.per_step:
            raise ValueError(
                f"cannot resume: {consumed} rows of the epoch were consumed, not a multiple of "
                f"micro_batch_size x world_size = {self.per_step}"
            )
        self.epoch, self.step_in_epoch = state["epoch"], consumed // self.per_step
        if self.step_in_epoch >= self.batches_per_epoch:  # a checkpoint at an epoch's very end
            self.epoch, self.step_in_epoch = self.epoch + 1, 0


class BackgroundLoader:
    """`next_step(units)` of a `TrainLoader`, prepared `depth` steps ahead in a worker thread.

    A thread (not a process): numpy packing and torch collation release the GIL for most of
    their time, and the worker shares the loader object, so resumption stays trivially exact.
    `state_dict()` and `epoch` describe the steps *consumed* (handed to the caller), never the
    ones prefetched: each queued step carries the loader state right after it was produced.
    With `pin_memory` (CUDA) tensors are copied to page-locked memory in the worker, so the
    trainer's `.to(device, non_blocking=True)` is truly asynchronous. `wait_s` accumulates the
    time the caller spent blocked waiting for a step.

    The worker starts on the first `next_step`; `load_state_dict` stops it, repositions the
    loader and lets the next call restart it. Other attributes are the wrapped loader's.
    """

    def __init__(self, loader: TrainLoader, depth: int = 2, pin_memory: bool = False):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.loader, self.depth, self.pin_memory = loader, depth, pin_memory
        self.wait_s = 0.0
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._units = None
        self._state, self._epoch = loader.state_dict(), loader.epoch

    def __getattr__(self, name):  # stream, stats, batches_per_epoch, per_step, ...
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    @property
    def epoch(self) -> int:
        return self._epoch

    def _pin(self, batch: dict) -> dict:
        return {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}

    def _work(self, units: int, q: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> None:
            while not stop.is_set():
                try:
                    return q.put(item, timeout=0.1)
                except queue.Full:
                    continue

        try:
            while not stop.is_set():
                step = self.loader.next_step(units)
                if self.pin_memory:
                    step = StepBatches([self._pin(b) for b in step], step.info)
                put((step, self.loader.state_dict(), self.loader.epoch))
        except BaseException as e:  # re-raised in the consumer
            put(e)

    def _start(self, units: int) -> None:
        self._units, self._stop = units, threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._work, args=(units, self._queue, self._stop),
                                        name="remix-ds-loader", daemon=True)
        self._thread.start()

    def next_step(self, units: int) -> StepBatches:
        if self._thread is None:
            self._start(units)
        elif units != self._units:
            raise ValueError(f"BackgroundLoader: units per step changed from {self._units} to {units}")
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - t0
        if isinstance(item, BaseException):
            self.close()
            raise item
        step, self._state, self._epoch = item
        return step

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.loader.load_state_dict(state)
        self._state, self._epoch = self.loader.state_dict(), self.loader.epoch

    def close(self) -> None:
        """Stop the worker (prefetched steps are dropped) and put the loader back at the consumed position."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = self._queue = None
        state = self._state
        if self.loader.state_dict() != state:
            self.loader.load_state_dict(state)
        self._epoch = self.loader.epoch


def build_train_loader(data_cfg: DataConfig, tokenizer, *, micro_batch_size: int, rank: int, world_size: int, seed: int,
                       micro_batch_tokens: int = 0, step_examples: int = 0) -> TrainLoader:
    """The stage's train loader for `rank` (every rank builds the same stream deterministically).

    Loads and validates all data before returning, so bad input fails before training starts.
    """
    stream = build_stage_stream(data_cfg, tokenizer, seed)
    if any(stream.dropped.values()):
        log.warning("dropped examples (by kind: longer than data.max_seq_len=%d, never truncated; "
                    "bad_records: data.on_bad_record=drop): %s", data_cfg.max_seq_len, stream.dropped)
    eos = eos_id(tokenizer)
    pad = pad_id(tokenizer)
    return TrainLoader(
        stream,
        micro_batch_size=micro_batch_size,
        rank=rank,
        world_size=world_size,
        max_seq_len=data_cfg.max_seq_len,
        pad_id=pad,
        eos_id=eos,
        pad_to_multiple_of=data_cfg.pad_to_multiple_of,
        reference_compat=data_cfg.reference_compat,
        micro_batch_tokens=micro_batch_tokens,
        step_examples=step_examples,
    )
