"""Generic-text rows (REMIX's generic mixing): every generic row of a stage comes from `GenericRows`.

`GenericRows(cfg, tokenizer, count).rows(epoch, step, slots)` is the one way to ask: the rows of
generic `slots` (indices 0 .. per_epoch - 1 within the epoch's generic rows) of `epoch`, whatever
data.mix.redraw is.

- `redraw=stage` (the reference): `count` rows drawn once from `default_rng([mix.seed, 0x6E4E])`
  (`generic_rows`), fixed across epochs like a dataset; slot i is row i (ids `generic-{i}`). Rows
  that do not fit data.max_seq_len are dropped and counted, so `per_epoch` may be below `count`.
- `redraw=epoch | step`: fresh rows without replacement over the corpus. The corpus's *units* are
  its documents (`completion`; documents with fewer than prompt_words + answer_words words are left
  out up front) or its whole windows of raw_tokens (`raw`). Draws walk the units in passes: pass p
  is the permutation `default_rng([mix.seed, 0x6E4E, 0x9A55, p])` of all units, and slot i of epoch
  e takes draw number d = e * count + i, i.e. unit `perm(d // U)[d % U]`. So no unit repeats within
  a pass, every unit is used once per pass, and a resumed run (any epoch, any step) sees the same
  rows (ids `generic-e{epoch}-{slot}`). A completion row that does not fit data.max_seq_len is
  replaced by the unit at the same place in the next pass (counted in `substituted`; the only case
  where a unit can repeat within a pass).
"""

from __future__ import annotations

import numpy as np

from remix_ds.data import formats
from remix_ds.data.config import DataConfig
from remix_ds.data.doc_words import WordCounter, fast_batch_decode
from remix_ds.data.records import DataError, Example
from remix_ds.data.tokenize import TokenizedExample, from_token_ids
from remix_ds.data.word_cache import CompletionRows

WHOLE_CORPUS_TOKENS = 256_000_000
"""Generic corpora up to this many tokens get their words per document counted in one pass (cached
in-process); larger ones only for the documents drawn."""

_GENERIC_TAG, _PASS_TAG = 0x6E4E, 0x9A55
_SUBSTITUTE_TRIES = 20


def open_generic_corpus(cfg: DataConfig, tokenizer):
    """The shard reader of data.mix.generic_corpus (`builtin`: the cached built-in corpus)."""
    if cfg.mix.generic_corpus == "builtin":
        from remix_ds.data import corpus

        return corpus.generic_corpus(tokenizer)
    from remix_ds.data.shards import ShardReader

    return ShardReader(cfg.mix.generic_corpus, tokenizer)


def completion_examples(word_rows: list[list[str]], cfg: DataConfig, kind: str) -> list[Example]:
    """Rows of >= prompt_words + answer_words words -> `Complete the following partial passage` examples."""
    p, a = cfg.mix.prompt_words, cfg.mix.answer_words
    return [
        Example(id=f"{kind}-{i}", source=kind, prompt=formats.completion_prompt(w[:p], cfg.mix.instruction),
                answer=" ".join(w[p : p + a]))
        for i, w in enumerate(word_rows)
    ]


def generic_rows(cfg: DataConfig, tokenizer, count: int) -> tuple[list[TokenizedExample], int]:
    """`count` generic rows from the shard corpus (fixed by data.mix.seed), and how many were too long."""
    if count == 0:
        return [], 0
    reader = open_generic_corpus(cfg, tokenizer)
    rng = np.random.default_rng([cfg.mix.seed, _GENERIC_TAG])
    if cfg.mix.generic_format == "raw":
        windows = reader.sample_windows(rng, count, cfg.mix.raw_tokens)
        return [from_token_ids(w, f"generic-{i}") for i, w in enumerate(windows)], 0
    need = cfg.mix.prompt_words + cfg.mix.answer_words
    counter = WordCounter(tokenizer)
    completion = CompletionRows(tokenizer, cfg.mix.instruction, cfg.prompt_format)
    bounds = np.concatenate([[0], np.cumsum(reader.doc_lengths)])

    def words_and_cut(drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # one pass over a corpus of moderate size (cached); a huge one: only the drawn documents
        if reader.num_tokens <= WHOLE_CORPUS_TOKENS:
            counts, cut = counter.corpus_counts(reader, need)
            return counts[drawn], cut[drawn]
        return counter.count_and_cut([reader.document(int(i)) for i in drawn], need)

    kept: list[TokenizedExample] = []
    too_long = 0
    for _ in range(20):  # draw documents in bulk; keep long-enough ones that fit (reference skips short docs)
        want = count - len(kept)
        # NOTE: the same draws as decoding every document (`sample_documents`), but words are
        # counted from the ids once per corpus, and only the documents with enough of them are
        # read and decoded, each only as far as its first `need` words.
        drawn = reader.sample_document_indices(rng, 2 * want + 8)
        n_words, cut = words_and_cut(drawn)
        ok = n_words >= need
        # a row depends only on its document: each distinct document is read and tokenized once
        # (draws repeat documents: the built-in corpus has 2,930), duplicates share its arrays
        uniq, first, inv = np.unique(drawn[ok], return_index=True, return_inverse=True)
        words = counter.words(reader.ranges(bounds[uniq], bounds[uniq] + cut[ok][first]))
        if any(len(w) < need for w in words):  # the table overcounted: decode whole documents from here on
            counter.exact = False
            words = [w for w in (t.split() for t in fast_batch_decode(tokenizer, [reader.document(int(i)) for i in drawn]))
                     if len(w) >= need]
            inv = np.arange(len(words))
        # NOTE: rows from per-word ids, identical to tokenizing each formatted row (word_cache.py)
        toks, _ = completion.rows([w[:need] for w in words], cfg.mix.prompt_words, cfg.mix.answer_words,
                                  "generic", cfg.max_seq_len)
        by_doc: list[TokenizedExample | None] = [None] * len(words)
        for t in toks:
            by_doc[int(t.id.rsplit("-", 1)[1])] = t
        rows = [by_doc[j] for j in inv.tolist()]
        too_long += sum(r is None for r in rows)  # every drawn row that does not fit, as each were tokenized
        kept += [r for r in rows if r is not None][:want]
        if len(kept) == count:
            # ids are positions in the mixed set, so they stay unique across refills
            return [TokenizedExample(f"generic-{i}", t.input_ids, t.labels) for i, t in enumerate(kept)], too_long
    raise DataError(
        f"generic corpus {cfg.mix.generic_corpus!r}: could not draw {count} documents of >= {need} words that fit "
        f"data.max_seq_len={cfg.max_seq_len} ({len(kept)} found)"
    )


class GenericRows:
    """The generic rows of one stage, asked for by (epoch, step, slots) (module docstring)."""

    def __init__(self, cfg: DataConfig, tokenizer, count: int, fixed: list[TokenizedExample] | None = None):
        """`count` rows per epoch; `fixed` gives redraw=stage rows already drawn (None: draw them here)."""
        self.cfg, self.tokenizer = cfg, tokenizer
        self.fresh = cfg.mix.redraw != "stage"
        self.dropped = 0
        """Rows dropped for exceeding data.max_seq_len (redraw=stage)."""
        self.substituted = 0
        """Completion rows replaced because their document did not fit data.max_seq_len (redraw=epoch|step)."""
        self.fixed: list[TokenizedExample] = []
        """The stage's rows (redraw=stage)."""
        if not self.fresh:
            if fixed is None:
                fixed, self.dropped = generic_rows(cfg, tokenizer, count)
            self.fixed = list(fixed)
            count = len(self.fixed)
        self.per_epoch = count
        """Generic rows per epoch."""
        self._passes: dict[int, np.ndarray] = {}
        self._reader = self._units = self._cut = self._rows = None
        if self.fresh and count:
            self._open()

    @classmethod
    def of(cls, rows: list[TokenizedExample]) -> "GenericRows":
        """Fixed rows given as a list (a stream built by hand)."""
        out = cls.__new__(cls)
        out.cfg = out.tokenizer = None
        out.fresh, out.dropped, out.substituted, out.fixed, out.per_epoch = False, 0, 0, list(rows), len(rows)
        return out

    def rows(self, epoch: int, step: int, slots) -> list[TokenizedExample]:
        """The rows of generic `slots` of `epoch` (`step`, the optimizer step, does not change them)."""
        slots = np.asarray(slots, dtype=np.int64)
        if not self.fresh:
            return [self.fixed[i] for i in slots.tolist()]
        if len(slots) == 0:
            return []
        return self._fresh(epoch, slots)

    # ---- redraw = epoch | step ---------------------------------------------------------------
    def _open(self) -> None:
        m = self.cfg.mix
        self._reader = reader = open_generic_corpus(self.cfg, self.tokenizer)
        if m.generic_format == "raw":
            self._units = np.arange(reader.num_windows(m.raw_tokens), dtype=np.int64)
        else:
            need = m.prompt_words + m.answer_words
            self._counter = WordCounter(self.tokenizer)
            if reader.num_tokens <= WHOLE_CORPUS_TOKENS:
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

    def units(self, epoch: int, slots: np.ndarray) -> np.ndarray:
        """Corpus units (document or window indices) of generic `slots` of `epoch`: (len(slots),) int64."""
        u = len(self._units)
        draws = epoch * self.per_epoch + np.asarray(slots, dtype=np.int64)
        out = np.empty(len(draws), dtype=np.int64)
        for p in np.unique(draws // u).tolist():
            sel = draws // u == p
            out[sel] = self._pass(p)[draws[sel] % u]
        return out

    def _fresh(self, epoch: int, slots: np.ndarray) -> list[TokenizedExample]:
        ids = [f"generic-e{epoch}-{s}" for s in slots.tolist()]
        m = self.cfg.mix
        if m.generic_format == "raw":
            windows = self._reader.windows(self.units(epoch, slots), m.raw_tokens)
            return [from_token_ids(w, i) for w, i in zip(windows, ids)]
        rows: list[TokenizedExample | None] = [None] * len(slots)
        todo = np.arange(len(slots))
        for attempt in range(_SUBSTITUTE_TRIES):
            # attempt k reads the unit at the same place k passes later (draw number + k * units)
            got = self._completion_rows(self.units(epoch, slots[todo] + attempt * len(self._units)))
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
        """Each document's completion row (None: fewer than need words, or too long); each distinct
        document is decoded and tokenized once, rows from per-word ids as in `generic_rows`."""
        m, reader = self.cfg.mix, self._reader
        need = m.prompt_words + m.answer_words
        docs, inv = np.unique(docs, return_inverse=True)
        if self._cut is not None:
            cut = self._cut[docs]
        else:
            cut = self._counter.count_and_cut([reader.document(int(i)) for i in docs], need)[1]
        # decode(...).split() of each cut document, from per-token pieces (doc_words.py)
        words = self._counter.words(reader.ranges(self._bounds[docs], self._bounds[docs] + cut))
        good = [j for j, w in enumerate(words) if len(w) >= need]
        if self._rows is None:  # its unit cache grows over the epochs
            self._rows = CompletionRows(self.tokenizer, m.instruction, self.cfg.prompt_format)
        # NOTE: identical to tokenize_for(completion_examples(...), "answer") (word_cache.py); ids generic-{k}
        toks, _ = self._rows.rows([words[j][:need] for j in good], m.prompt_words, m.answer_words, "generic",
                                  self.cfg.max_seq_len)
        by_doc = {good[int(t.id.rsplit("-", 1)[1])]: t for t in toks}
        return [by_doc.get(j) for j in inv.tolist()]
