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
"""

from __future__ import annotations

import logging

from remix_ds.data.config import DataConfig
from remix_ds.data.mixing import StageStream, build_stage_stream
from remix_ds.data.packing import pack, pad_reference
from remix_ds.data.tokenize import TokenizedExample, eos_id, pad_id

STATE_VERSION = 1
log = logging.getLogger(__name__)


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
    ):
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
        self.per_step = micro_batch_size * world_size
        self.batches_per_epoch = -(-self.rows_per_epoch // self.per_step)
        """Micro-batches per rank per epoch (the same on every rank)."""
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

    def rows_for(self, epoch: int, step: int) -> list[TokenizedExample]:
        """This rank's rows of micro-step `step` of `epoch` (possibly empty in the last step)."""
        if self._order_epoch != epoch:
            self._order, self._order_epoch = self.stream.epoch_items(epoch), epoch
        start = step * self.per_step
        n = min(self.per_step, self.rows_per_epoch - start)
        lo = start + (self.rank * n) // self.world_size  # even split of a (possibly short) step
        hi = start + ((self.rank + 1) * n) // self.world_size
        return self._order[lo:hi]

    def __next__(self) -> dict:
        rows = self.rows_for(self.epoch, self.step_in_epoch)
        if self.reference_compat:
            batch = pad_reference(rows, self.reference_len, self.eos_id)
        else:
            batch = pack(rows, self.max_seq_len, self.pad_id, self.pad_to_multiple_of)
        self.step_in_epoch += 1
        if self.step_in_epoch == self.batches_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        return batch

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


def build_train_loader(data_cfg: DataConfig, tokenizer, *, micro_batch_size: int, rank: int, world_size: int, seed: int) -> TrainLoader:
    """The stage's train loader for `rank` (every rank builds the same stream deterministically).

    Loads and validates all data before returning, so bad input fails before training starts.
    """
    stream = build_stage_stream(data_cfg, tokenizer, seed)
    if any(stream.dropped.values()):
        log.warning("dropped examples longer than data.max_seq_len=%d (never truncated): %s",
                    data_cfg.max_seq_len, stream.dropped)
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
    )
