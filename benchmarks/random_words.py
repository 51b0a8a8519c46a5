"""Random-word samplers a competent user would write, the rivals of `remix_ds.data.random_words`."""

from __future__ import annotations

import random

import numpy as np


def naive_random_words(tokenizer, words: list[str], n: int, min_words: int, max_words: int, seed: int) -> list[list[int]]:
    """The naive baseline: per sample, pick words with random.choice, join, call the tokenizer."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        k = rnd.randint(min_words, max_words)
        text = " ".join(rnd.choice(words) for _ in range(k))
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def word_table(gen) -> tuple[list, list]:
    """Every word of ``gen`` (a RandomWords) pre-tokenized once: (initial forms, continuation forms)."""
    return ([gen.word_ids(w, initial=True).copy() for w in range(gen.vocab_size)],
            [gen.word_ids(w).copy() for w in range(gen.vocab_size)])


def numpy_choice_random_words(gen, table: tuple[list, list], rng: np.random.Generator, n: int) -> int:
    """Words pre-tokenized once (``table``), ``Generator.choice`` for the words, one ``np.concatenate``
    of the drawn words' ids (a Python list of W arrays). Returns the number of tokens."""
    initial, cont = table
    lengths = rng.integers(gen.min_words, gen.max_words + 1, size=n)
    widx = rng.choice(len(cont), size=int(lengths.sum()))
    parts = [cont[w] for w in widx.tolist()]
    for s in (np.cumsum(lengths) - lengths).tolist():
        parts[s] = initial[widx[s]]
    return len(np.concatenate(parts))


class PaddedTable:
    """The fully vectorized numpy sampler: every word form in a (2V, L_max) padded id table with a
    (2V, L_max) validity mask; a batch is one fancy-index of the drawn rows and one boolean gather.
    Same draws as `RandomWords.sample` (lengths, then words, uniform weighting), so the same ids."""

    def __init__(self, gen):
        initial, cont = word_table(gen)
        forms = initial + cont
        width = max(len(f) for f in forms)
        self.v, self.min_words, self.max_words = gen.vocab_size, gen.min_words, gen.max_words
        self.ids = np.zeros((len(forms), width), dtype=np.int32)
        self.valid = np.zeros((len(forms), width), dtype=bool)
        self.lens = np.array([len(f) for f in forms], dtype=np.int64)
        for i, f in enumerate(forms):
            self.ids[i, : len(f)] = f
            self.valid[i, : len(f)] = True

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (T,) int32, offsets (n + 1,) int64), as `RandomWordBatch.ids` / `.offsets`."""
        lengths = rng.integers(self.min_words, self.max_words + 1, size=n, dtype=np.int64)
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        widx = rng.integers(0, self.v, size=int(starts[-1]), dtype=np.int32)
        rows = widx + np.int32(self.v)
        rows[starts[:-1]] -= np.int32(self.v)
        ids = self.ids[rows][self.valid[rows]]
        offsets = np.zeros(n + 1, dtype=np.int64)
        if n:
            np.cumsum(np.add.reduceat(self.lens[rows], starts[:-1]), out=offsets[1:])
        return ids, offsets
