"""Random-word sequences as token ids, sampled with numpy and no tokenizer call per sample.

REMIX mixes sequences of random words into training. Every word of the vocabulary is tokenized
once, up front, in two forms:

* *initial* form: ``tokenizer(word)``, used for the first word of a sequence;
* *continuation* form: the ids ``word`` gets after a space inside a sentence, i.e.
  ``tokenizer("a " + word)`` minus the ids of ``tokenizer("a")``.

A sequence is the concatenation of its words' forms, gathered from one flat table with offset
arithmetic, so a batch of sequences is a handful of vectorized numpy calls.

Contract: for tokenizers that never merge tokens across a space (sentencepiece with its default
``split_by_whitespace``, byte-level BPE with the GPT-2 pre-tokenizer, Llama/Mistral/Qwen/GPT-2
style tokenizers) the ids of a sequence equal ``tokenizer(" ".join(words),
add_special_tokens=False, split_special_tokens=True)`` exactly (special-token text is text), and
decoding them gives ``" ".join(words)``. No special tokens (BOS/EOS) are added; the consumer
adds what its example format needs. :meth:`RandomWords.agreement` measures the contract on a given tokenizer.

Sampling takes an explicit ``np.random.Generator`` and is deterministic given its state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

log = logging.getLogger(__name__)

Weighting = Literal["uniform", "frequency"]
WORDFREQ_PREFIX = "wordfreq:"
# The word a continuation form is measured after; any short word that is its own token works.
_ANCHOR = "a"


def load_words(source: str = "wordfreq:en", n: int = 10_000, *, alpha_only: bool = True) -> tuple[list[str], np.ndarray]:
    """A word list and its relative frequencies: (words, weights (len(words),) float64 summing to 1).

    ``source``: ``wordfreq:LANG`` (the ``n`` most frequent words of that language from the
    ``wordfreq`` package) or a text file with one word per line and an optional whitespace-separated
    count or frequency (lines starting with ``#`` are comments; no counts -> uniform weights).
    ``alpha_only`` drops entries that are not purely alphabetic ASCII (``don't``, ``2024``, ``é``).
    Order is kept (most frequent first for wordfreq); the first ``n`` kept words are returned.
    """
    if source.startswith(WORDFREQ_PREFIX):
        import wordfreq

        lang = source[len(WORDFREQ_PREFIX):] or "en"
        # Over-fetch so that n words survive the alphabetic filter.
        candidates = wordfreq.top_n_list(lang, n * 2 if alpha_only else n)
        freq = wordfreq.get_frequency_dict(lang)
        pairs = [(w, freq.get(w, 0.0)) for w in candidates]
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"word list {path} not found (or use {WORDFREQ_PREFIX}en)")
        pairs = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                weight = float(parts[1]) if len(parts) > 1 else 1.0
            except ValueError:
                raise ValueError(f"{path}:{lineno}: second column must be a count, got {parts[1]!r}") from None
            pairs.append((parts[0], weight))
    if alpha_only:
        pairs = [(w, f) for w, f in pairs if w.isascii() and w.isalpha()]
    seen: set[str] = set()
    words, weights = [], []
    for w, f in pairs:
        if w not in seen:
            seen.add(w)
            words.append(w)
            weights.append(f)
        if len(words) == n:
            break
    if not words:
        raise ValueError(f"word list {source} is empty after filtering")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones(len(words))
    return words, weights / weights.sum()


@dataclass
class RandomWordBatch:
    """``n`` sampled sequences.

    ids:          (T,) int32, every sequence's token ids concatenated
    offsets:      (n + 1,) int64, sequence i is ``ids[offsets[i]:offsets[i + 1]]``
    word_indices: (W,) int32, the words drawn (indices into ``RandomWords.words``)
    word_offsets: (n + 1,) int64, sequence i's words are ``word_indices[word_offsets[i]:word_offsets[i + 1]]``
    """

    ids: np.ndarray
    offsets: np.ndarray
    word_indices: np.ndarray
    word_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        """Token ids of sequence ``i`` (a view into ``ids``)."""
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        """Tokens per sequence: (n,) int64."""
        return np.diff(self.offsets)

    def split(self) -> list[np.ndarray]:
        """Every sequence as its own array."""
        return np.split(self.ids, self.offsets[1:-1])


class RandomWords:
    """Samples random-word sequences as token ids (see the module docstring for the contract).

    tokenizer:  a Hugging Face tokenizer (used only here, to pre-tokenize the words)
    words:      the vocabulary; weights: its relative frequencies (needed for ``weighting="frequency"``)
    min_words, max_words: words per sequence, drawn uniformly from ``[min_words, max_words]``
    weighting:  ``uniform`` over words, or proportional to ``weights``
    max_tokens: if set, each sequence keeps only its longest word prefix of at most this many tokens
    """

    def __init__(
        self,
        tokenizer,
        words: Sequence[str],
        weights: np.ndarray | None = None,
        *,
        min_words: int = 8,
        max_words: int = 32,
        weighting: Weighting = "uniform",
        max_tokens: int | None = None,
    ):
        if not 1 <= min_words <= max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        if weighting not in ("uniform", "frequency"):
            raise ValueError(f"weighting must be 'uniform' or 'frequency', got {weighting!r}")
        if weighting == "frequency" and weights is None:
            raise ValueError("weighting='frequency' needs word weights")
        self.min_words, self.max_words = min_words, max_words
        self.weighting = weighting
        self.max_tokens = max_tokens

        initial, cont = _pretokenize(tokenizer, list(words))
        keep = [i for i in range(len(words)) if initial[i] and cont[i]]
        if len(keep) < len(words):
            log.warning("dropped %d words that tokenize to nothing", len(words) - len(keep))
        self.words = [words[i] for i in keep]
        v = len(self.words)
        if v == 0:
            raise ValueError("no usable words")
        forms = [initial[i] for i in keep] + [cont[i] for i in keep]  # table rows [0, V) and [V, 2V)
        # (2V,) token counts and (2V + 1,) offsets into the flat (sum,) id table.
        # int32 throughout: the per-sample arrays are gathered from these, and every byte of them is
        # fresh memory on each call (page faults dominate the cost on VMs).
        self._form_len = np.fromiter((len(f) for f in forms), dtype=np.int32, count=2 * v)
        self._form_off = np.zeros(2 * v + 1, dtype=np.int32)
        np.cumsum(self._form_len, out=self._form_off[1:])
        self._table = np.fromiter((t for f in forms for t in f), dtype=np.int32, count=int(self._form_off[-1]))
        if max_tokens is not None and max_tokens < int(self._form_len.max()):
            raise ValueError(f"max_tokens={max_tokens} is shorter than the longest word "
                             f"({int(self._form_len.max())} tokens)")
        self._cdf = None
        if weighting == "frequency":
            w = np.asarray(weights, dtype=np.float64)[keep]
            self._cdf = np.cumsum(w / w.sum())
            self._cdf[-1] = 1.0  # guard searchsorted against rounding

    @classmethod
    def from_source(cls, tokenizer, source: str = "wordfreq:en", vocab_size: int = 10_000, **kwargs) -> "RandomWords":
        """Build from :func:`load_words` (``source``, ``vocab_size`` words); kwargs as in ``__init__``."""
        words, weights = load_words(source, vocab_size)
        return cls(tokenizer, words, weights, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def word_ids(self, word: int, initial: bool = False) -> np.ndarray:
        """Token ids of word ``word`` in its continuation (or initial) form."""
        row = word if initial else word + self.vocab_size
        return self._table[self._form_off[row] : self._form_off[row + 1]]

    def sample(self, rng: np.random.Generator, n: int) -> RandomWordBatch:
        """``n`` sequences. Draw order: lengths, then words (then nothing else), all from ``rng``."""
        v = self.vocab_size
        lengths = rng.integers(self.min_words, self.max_words + 1, size=n, dtype=np.int64)  # (n,)
        word_starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=word_starts[1:])
        total_words = int(word_starts[-1])
        # int32 word/row indices: half the memory traffic of int64 in the gathers below.
        if self._cdf is None:
            widx = rng.integers(0, v, size=total_words, dtype=np.int32)  # (W,)
        else:
            widx = np.searchsorted(self._cdf, rng.random(total_words), side="right").astype(np.int32)
            np.minimum(widx, v - 1, out=widx)
        # Table row per drawn word: continuation form except for each sequence's first word.
        rows = widx + np.int32(v)
        rows[word_starts[:-1]] -= np.int32(v)
        tok_len = self._form_len[rows]  # (W,) int32

        if self.max_tokens is not None:
            # Keep each sequence's longest word prefix within max_tokens. Word token counts are
            # positive, so the kept words of a sequence are a prefix and the first always fits.
            cum = np.cumsum(tok_len)
            before_seq = (cum - tok_len)[word_starts[:-1]]  # tokens before each sequence
            keep = cum - np.repeat(before_seq, lengths) <= self.max_tokens
            lengths = np.add.reduceat(keep, word_starts[:-1], dtype=np.int64) if n else lengths
            widx, rows, tok_len = widx[keep], rows[keep], tok_len[keep]
            np.cumsum(lengths, out=word_starts[1:])

        ids = self._gather(rows, tok_len)  # (T,) int32
        offsets = np.zeros(n + 1, dtype=np.int64)
        if n:  # every sequence has >= 1 word, so reduceat's segments are all non-empty
            np.cumsum(np.add.reduceat(tok_len, word_starts[:-1], dtype=np.int64), out=offsets[1:])
        return RandomWordBatch(ids=ids, offsets=offsets, word_indices=widx, word_offsets=word_starts)

    def _gather(self, rows: np.ndarray, tok_len: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
        """Concatenate table rows ``rows`` (each ``tok_len`` ids long): (sum(tok_len),) int32.

        The source index of every output token is a cumulative sum of steps: +1 inside a word, and
        at each word start a jump from the previous word's last table index to this word's first
        (one scatter and one in-place cumsum, leaner than ``np.repeat`` of bases plus an
        ``arange``). Done ``chunk`` words at a time so the temporaries stay small and their memory
        is reused across chunks: touching fresh pages, not arithmetic, is what dominates on VMs.
        """
        total = int(tok_len.sum(dtype=np.int64))
        ids = np.empty(total, dtype=np.int32)
        pos = 0
        for a in range(0, len(rows), chunk):
            r, tl = rows[a : a + chunk], tok_len[a : a + chunk]
            out_start = np.cumsum(tl, dtype=np.int32)  # chunk-local output offset of each word ...
            n_tok = int(out_start[-1])
            out_start -= tl  # ... (exclusive cumsum)
            start = self._form_off[r]  # table offset of each word
            jump = start[1:] - start[:-1]  # start[k] - (start[k-1] + tl[k-1] - 1)
            jump -= tl[:-1]
            jump += 1
            step = np.ones(n_tok, dtype=np.int32)
            step[out_start[1:]] = jump
            step[0] = start[0]
            np.cumsum(step, out=step)
            np.take(self._table, step, out=ids[pos : pos + n_tok])
            pos += n_tok
        return ids

    def sample_one(self, rng: np.random.Generator) -> np.ndarray:
        """One sequence's ids: (L,) int32."""
        return self.sample(rng, 1).ids

    def text(self, batch: RandomWordBatch, i: int) -> str:
        """Sequence ``i`` of ``batch`` as words joined by single spaces."""
        lo, hi = batch.word_offsets[i], batch.word_offsets[i + 1]
        return " ".join(self.words[j] for j in batch.word_indices[lo:hi])

    def agreement(self, tokenizer, rng: np.random.Generator, n: int = 64) -> float:
        """Fraction of ``n`` sampled sequences whose ids equal tokenizing their joined text."""
        batch = self.sample(rng, n)
        texts = [self.text(batch, i) for i in range(n)]
        ref = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return float(np.mean([list(batch[i]) == list(ref[i]) for i in range(n)]))


def _pretokenize(tokenizer, words: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Initial and continuation token ids of every word, in two batched tokenizer calls."""
    initial = tokenizer(words, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    anchor = tokenizer(_ANCHOR, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    joined = tokenizer([f"{_ANCHOR} {w}" for w in words], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    cont = []
    for w, ids in zip(words, joined):
        if ids[: len(anchor)] != anchor:
            raise ValueError(
                f"tokenizer merges across spaces ({_ANCHOR + ' ' + w!r} does not start with the ids of "
                f"{_ANCHOR!r}); random words cannot be pre-tokenized per word for it"
            )
        cont.append(ids[len(anchor):])
    return initial, cont
