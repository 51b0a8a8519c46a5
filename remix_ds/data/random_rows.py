"""Random-word rows (REMIX's random mixing): every random-word row of a stage comes from `RandomRows`.

`RandomRows(cfg, tokenizer, count).rows(epoch, step, slots)` is the one way to ask, whatever
data.mix.redraw is:

- `redraw=stage` (the reference): `count` rows drawn once from `default_rng([mix.seed, 0x7A4D])`
  (`random_rows`), raw (all trained) or completion format; slot i is row i (ids `random-{i}`).
- `redraw=epoch | step`: the random rows of optimizer step b of epoch e are
  `RandomWords.sample(default_rng([mix.seed, 0x7A4D, e, b]), len(slots))` (the generator built once
  per stage), so they are fresh every step and fixed by (seed, epoch, step) (ids
  `random-e{epoch}-s{step}-{i}`).
"""

from __future__ import annotations

import numpy as np

from remix_ds.data.config import DataConfig
from remix_ds.data.generic import completion_examples
from remix_ds.data.records import DataError
from remix_ds.data.tokenize import TokenizedExample, from_token_ids, tokenize_for
from remix_ds.data.word_cache import CompletionRows

_RANDOM_TAG = 0x7A4D


def _words_per_row(cfg: DataConfig) -> int:
    m = cfg.mix
    return m.raw_words if m.random_format == "raw" else m.prompt_words + m.answer_words


def _generator(cfg: DataConfig, tokenizer):
    from remix_ds.data.random_words import RandomWords

    m, n = cfg.mix, _words_per_row(cfg)
    return RandomWords.from_source(tokenizer, m.random_word_source, m.random_vocab_size, min_words=n, max_words=n)


def random_rows(cfg: DataConfig, tokenizer, count: int) -> tuple[list[TokenizedExample], int]:
    """`count` random-word rows (fixed by data.mix.seed): raw (all loss) or completion format; and how many
    were dropped as too long."""
    if count == 0:
        return [], 0
    m = cfg.mix
    gen = _generator(cfg, tokenizer)
    batch = gen.sample(np.random.default_rng([m.seed, _RANDOM_TAG]), count)
    if m.random_format == "raw":
        kept = [from_token_ids(x, f"random-{i}") for i, x in enumerate(batch.split()) if 2 <= len(x) <= cfg.max_seq_len]
        return kept, count - len(kept)
    words = [gen.text(batch, i).split() for i in range(count)]
    return CompletionRows(tokenizer, m.instruction, cfg.prompt_format).rows(words, m.prompt_words, m.answer_words,
                                                                            "random", cfg.max_seq_len)


class RandomRows:
    """The random-word rows of one stage, asked for by (epoch, step, slots) (module docstring)."""

    def __init__(self, cfg: DataConfig, tokenizer, count: int, fixed: list[TokenizedExample] | None = None):
        """`count` rows per epoch; `fixed` gives redraw=stage rows already drawn (None: draw them here)."""
        self.cfg, self.tokenizer = cfg, tokenizer
        self.fresh = cfg.mix.redraw != "stage"
        self.dropped = 0
        """Rows dropped for exceeding data.max_seq_len (redraw=stage)."""
        self.fixed: list[TokenizedExample] = []
        """The stage's rows (redraw=stage)."""
        if not self.fresh:
            if fixed is None:
                fixed, self.dropped = random_rows(cfg, tokenizer, count)
            self.fixed = list(fixed)
            count = len(self.fixed)
        self.per_epoch = count
        """Random-word rows per epoch."""
        self._gen = _generator(cfg, tokenizer) if self.fresh and count else None

    @classmethod
    def of(cls, rows: list[TokenizedExample]) -> "RandomRows":
        """Fixed rows given as a list (a stream built by hand)."""
        out = cls.__new__(cls)
        out.cfg = out.tokenizer = out._gen = None
        out.fresh, out.dropped, out.fixed, out.per_epoch = False, 0, list(rows), len(rows)
        return out

    def rows(self, epoch: int, step: int, slots) -> list[TokenizedExample]:
        """The rows of random-word `slots` of optimizer step `step` of `epoch` (fresh rows: only their count matters)."""
        slots = np.asarray(slots, dtype=np.int64)
        if not self.fresh:
            return [self.fixed[i] for i in slots.tolist()]
        count = len(slots)
        if count == 0:
            return []
        m, gen = self.cfg.mix, self._gen
        batch = gen.sample(np.random.default_rng([m.seed, _RANDOM_TAG, epoch, step]), count)
        ids = [f"random-e{epoch}-s{step}-{i}" for i in range(count)]
        if m.random_format == "raw":
            rows = [from_token_ids(x, i) for x, i in zip(batch.split(), ids)]
        else:
            rows, _ = tokenize_for(completion_examples([gen.text(batch, i).split() for i in range(count)], self.cfg,
                                                       "random"), self.cfg, self.tokenizer, "answer")
            rows = [TokenizedExample(i, r.input_ids, r.labels) for r, i in zip(rows, ids)]
        if len(rows) != count or any(len(r) > self.cfg.max_seq_len or len(r) < 2 for r in rows):
            raise DataError(f"random-word rows of {_words_per_row(self.cfg)} words do not fit data.max_seq_len="
                            f"{self.cfg.max_seq_len} (data.mix.redraw={m.redraw})")
        return rows
