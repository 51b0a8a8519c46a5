"""Fresh mixing rows (`data.mix.redraw: epoch | step`): generic rows drawn from the shards without
replacement, random-word rows generated anew, each a pure function of its place in the run.

Generic rows. The corpus's *units* are its documents (`completion` format; documents with fewer
than prompt_words + answer_words words are left out up front) or its whole windows of raw_tokens
(`raw`). Draws walk the units in passes: pass p is the permutation
`default_rng([mix.seed, 0x6E4E, 0x9A55, p])` of all units, and generic slot i of epoch e (i <
generic rows per epoch, the slot's index in the epoch's layout) takes draw number d = e * n + i,
i.e. unit `perm(d // U)[d % U]`. So no unit repeats within a pass, every unit is used once per
pass, and a resumed run (any epoch, any step) sees the same rows. A completion row that does not
fit data.max_seq_len is replaced by the unit at the same place in the next pass (counted in
`substituted`; the only case where a unit can repeat within a pass).

Random-word rows. The random rows of optimizer step b of epoch e are
`RandomWords.sample(default_rng([mix.seed, 0x7A4D, e, b]), k)` (the generator built once per
stage), so they are fresh every step and fixed by (seed, epoch, step).

The loader calls these from its preparation (the `BackgroundLoader` thread), a step at a time
(`redraw=step`) or a whole epoch at its first step (`redraw=epoch`); both give the same rows.
"""

from __future__ import annotations

import numpy as np

from remix_ds.data.config import DataConfig
from remix_ds.data.doc_words import WordCounter, fast_batch_decode
from remix_ds.data.mixing import _WHOLE_CORPUS_TOKENS, _tokenize, completion_examples, open_generic_corpus
from remix_ds.data.records import DataError
from remix_ds.data.tokenize import TokenizedExample, from_token_ids

_GENERIC_TAG, _PASS_TAG, _RANDOM_TAG = 0x6E4E, 0x9A55, 0x7A4D
_SUBSTITUTE_TRIES = 20


class MixDrawer:
    """Draws the generic and random-word rows of one stage on demand (see the module docstring)."""

    def __init__(self, cfg: DataConfig, tokenizer, *, generic_per_epoch: int, random_per_epoch: int):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.generic_per_epoch, self.random_per_epoch = generic_per_epoch, random_per_epoch
        self.substituted = 0
        """Completion rows replaced because their document did not fit data.max_seq_len."""
        self._passes: dict[int, np.ndarray] = {}
        self._reader = self._units = self._cut = self._gen = None
        if generic_per_epoch:
            self._open_generic()
        if random_per_epoch:
            self._open_random()

    # ---- generic -----------------------------------------------------------------------------
    def _open_generic(self) -> None:
        m = self.cfg.mix
        self._reader = reader = open_generic_corpus(self.cfg, self.tokenizer)
        if m.generic_format == "raw":
            self._units = np.arange(reader.num_windows(m.raw_tokens), dtype=np.int64)
        else:
            need = m.prompt_words + m.answer_words
            self._counter = WordCounter(self.tokenizer)
            if reader.num_tokens <= _WHOLE_CORPUS_TOKENS:
                counts, self._cut = self._counter.corpus_counts(reader, need)
                self._units = np.flatnonzero(counts >= need).astype(np.int64)
            else:  # too big to count up front: short documents are substituted when drawn
                self._units = np.arange(reader.num_documents, dtype=np.int64)
            self._bounds = np.concatenate([[0], np.cumsum(reader.doc_lengths)])
        if len(self._units) == 0:
            raise DataError(f"generic corpus {m.generic_corpus!r} has no usable unit for data.mix.redraw="
                            f"{m.redraw} (documents of >= prompt_words + answer_words words, or raw_tokens windows)")

    def _pass(self, p: int) -> np.ndarray:
        if p not in self._passes:
            if len(self._passes) > 4:
                self._passes.clear()
            rng = np.random.default_rng([self.cfg.mix.seed, _GENERIC_TAG, _PASS_TAG, p])
            self._passes[p] = self._units[rng.permutation(len(self._units))]
        return self._passes[p]

    def generic_units(self, epoch: int, slots: np.ndarray) -> np.ndarray:
        """Corpus units (document or window indices) of generic `slots` of `epoch`: (len(slots),) int64."""
        u = len(self._units)
        draws = epoch * self.generic_per_epoch + np.asarray(slots, dtype=np.int64)
        out = np.empty(len(draws), dtype=np.int64)
        for p in np.unique(draws // u).tolist():
            sel = draws // u == p
            out[sel] = self._pass(p)[draws[sel] % u]
        return out

    def generic(self, epoch: int, slots: np.ndarray) -> list[TokenizedExample]:
        """The generic rows of `slots` of `epoch` (ids `generic-e{epoch}-{slot}`)."""
        slots = np.asarray(slots, dtype=np.int64)
        ids = [f"generic-e{epoch}-{s}" for s in slots.tolist()]
        m = self.cfg.mix
        if m.generic_format == "raw":
            windows = self._reader.windows(self.generic_units(epoch, slots), m.raw_tokens)
            return [from_token_ids(w, i) for w, i in zip(windows, ids)]
        rows: list[TokenizedExample | None] = [None] * len(slots)
        todo = np.arange(len(slots))
        for attempt in range(_SUBSTITUTE_TRIES):
            # attempt k reads the unit at the same place k passes later (draw number + k * units)
            got = self._completion_rows(self.generic_units(epoch, slots[todo] + attempt * len(self._units)))
            left = []
            for j, row in zip(todo.tolist(), got):
                if row is None:
                    left.append(j)
                else:
                    rows[j] = TokenizedExample(ids[j], row.input_ids, row.labels)
            if not left:
                return rows
            self.substituted += len(left)
            todo = np.array(left, dtype=np.int64)
        raise DataError(f"generic corpus {m.generic_corpus!r}: no document of >= {m.prompt_words + m.answer_words} "
                        f"words that fits data.max_seq_len={self.cfg.max_seq_len} after {_SUBSTITUTE_TRIES} passes")

    def _completion_rows(self, docs: np.ndarray) -> list[TokenizedExample | None]:
        m, reader = self.cfg.mix, self._reader
        need = m.prompt_words + m.answer_words
        if self._cut is not None:
            cut = self._cut[docs]
        else:
            cut = self._counter.count_and_cut([reader.document(int(i)) for i in docs], need)[1]
        texts = fast_batch_decode(self.tokenizer, [reader.tokens(int(self._bounds[i]), int(self._bounds[i] + c))
                                                   for i, c in zip(docs.tolist(), cut)])
        words = [t.split() for t in texts]
        good = [j for j, w in enumerate(words) if len(w) >= need]
        # completion_examples numbers its rows generic-0, generic-1, ... in the order given
        toks, _ = _tokenize(completion_examples([words[j][:need] for j in good], self.cfg, "generic"), self.cfg,
                            self.tokenizer, "answer")
        by_slot = {good[int(t.id.rsplit("-", 1)[1])]: t for t in toks}
        return [by_slot.get(j) for j in range(len(docs))]

    # ---- random words ------------------------------------------------------------------------
    def _open_random(self) -> None:
        from remix_ds.data.random_words import RandomWords

        m = self.cfg.mix
        n = m.raw_words if m.random_format == "raw" else m.prompt_words + m.answer_words
        self._gen = RandomWords.from_source(self.tokenizer, m.random_word_source, m.random_vocab_size,
                                            min_words=n, max_words=n)

    def random(self, epoch: int, step: int, count: int) -> list[TokenizedExample]:
        """`count` fresh random-word rows of optimizer step `step` of `epoch` (ids `random-e{epoch}-s{step}-{i}`)."""
        if count == 0:
            return []
        m, gen = self.cfg.mix, self._gen
        batch = gen.sample(np.random.default_rng([m.seed, _RANDOM_TAG, epoch, step]), count)
        ids = [f"random-e{epoch}-s{step}-{i}" for i in range(count)]
        if m.random_format == "raw":
            rows = [from_token_ids(x, i) for x, i in zip(batch.split(), ids)]
        else:
            rows, _ = _tokenize(completion_examples([gen.text(batch, i).split() for i in range(count)], self.cfg,
                                                    "random"), self.cfg, self.tokenizer, "answer")
            rows = [TokenizedExample(i, r.input_ids, r.labels) for r, i in zip(rows, ids)]
        if len(rows) != count or any(len(r) > self.cfg.max_seq_len or len(r) < 2 for r in rows):
            raise DataError(f"random-word rows of {m.raw_words if m.random_format == 'raw' else m.prompt_words + m.answer_words}"
                            f" words do not fit data.max_seq_len={self.cfg.max_seq_len} (data.mix.redraw={m.redraw})")
        return rows


def attach_drawer(stream, cfg: DataConfig, tokenizer) -> None:
    """Give a `StageStream` built with data.mix.redraw != stage its `MixDrawer`."""
    if cfg.mix.redraw != "stage":
        stream.drawer = MixDrawer(cfg, tokenizer, generic_per_epoch=stream.generic_count,
                                  random_per_epoch=stream.random_count)
