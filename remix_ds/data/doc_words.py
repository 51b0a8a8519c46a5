"""Words per document straight from token ids, and a fast batch decode.

Generic completion rows need documents of at least ``prompt_words + answer_words`` words, where
a word is an item of ``tokenizer.decode(doc, skip_special_tokens=True).split()``. Decoding every
drawn document to count its words was 87% of a stage build (about 1 document in 5 of the built-in
corpus is long enough). :class:`WordCounter` counts the same words from the ids with per-token
tables, vectorized over many documents; only the documents it keeps are decoded.

Why a table is exact: with the decoders of sentencepiece-style (``Replace("▁", " ")``,
``ByteFallback``, ``Fuse``, ``Strip``) and byte-level BPE tokenizers, the decoded text is the
concatenation of each token's *piece* (its text after some other token), except for leading
whitespace, which ``split()`` ignores. A word starts wherever a non-space character follows a
space or the document start, so per token we store: words starting inside the piece after its
first character, whether the piece starts with a non-space, whether it ends with a space, and
whether it is empty (special tokens: transparent). Tokens whose piece is not a whole string (a
byte of a multi-byte UTF-8 character decodes to U+FFFD alone) are *unsafe*: documents holding one
are counted by decoding them. Tokenizers that post-process decoded text
(``clean_up_tokenization_spaces``) or have no fast backend get ``exact = False`` and callers use
the decode path. The same pieces give the words themselves (:meth:`WordCounter.words`: join and
split, no decoder call), with unsafe documents decoded. ``tests/test_data_mixing.py`` checks
table == decode (counts and words) on every document of the built-in corpus for three tokenizers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def fast_batch_decode(tokenizer, docs: Sequence[np.ndarray]) -> list[str]:
    """``tokenizer.batch_decode(docs, skip_special_tokens=True)``, the same strings, without
    transformers' per-element Python conversion of numpy arrays (the backend decodes in Rust)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return tokenizer.batch_decode([np.asarray(d).tolist() for d in docs], skip_special_tokens=True)
    return backend.decode_batch([np.asarray(d).tolist() for d in docs], skip_special_tokens=True)


class WordCounter:
    """``len(tokenizer.decode(doc, skip_special_tokens=True).split())`` for many documents at once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        vocab = len(tokenizer)
        self.exact = getattr(tokenizer, "backend_tokenizer", None) is not None and not getattr(
            tokenizer, "clean_up_tokenization_spaces", False)
        anchor = tokenizer.encode("a", add_special_tokens=False)
        self.exact &= len(anchor) == 1
        self._cache: dict = {}
        if not self.exact:
            return
        head = fast_batch_decode(tokenizer, [np.array(anchor)])[0]
        pairs = fast_batch_decode(tokenizer, [np.array([anchor[0], t]) for t in range(vocab)])
        self.inner = np.zeros(vocab, np.int64)  # word starts after the piece's first character
        self.starts = np.zeros(vocab, bool)  # piece starts with a non-space
        self.ends_space = np.zeros(vocab, bool)  # piece ends with a space
        self.empty = np.zeros(vocab, bool)
        self.unsafe = np.zeros(vocab, bool)
        self.pieces = [""] * vocab  # each token's text after another token (unsafe ones: unused)
        for t, text in enumerate(pairs):
            if not text.startswith(head) or "\ufffd" in text:
                self.unsafe[t] = True
                continue
            piece = self.pieces[t] = text[len(head):]
            if not piece:
                self.empty[t] = True
                continue
            space = [c.isspace() for c in piece]
            self.starts[t] = not space[0]
            self.ends_space[t] = space[-1]
            self.inner[t] = sum(1 for k in range(1, len(piece)) if space[k - 1] and not space[k])

    def words(self, docs: Sequence[np.ndarray]) -> list[list[str]]:
        """``decode(doc, skip_special_tokens=True).split()`` per document: the concatenated pieces
        (same text up to leading whitespace, module docstring); documents holding an unsafe token,
        or all of them when not ``exact``, go through the Rust batch decoder."""
        if not docs:
            return []
        if not self.exact:
            return [t.split() for t in fast_batch_decode(self.tokenizer, docs)]
        lens = np.array([len(d) for d in docs], np.int64)
        flat = np.concatenate(docs).astype(np.int64)
        bad = np.bincount(np.repeat(np.arange(len(docs)), lens), weights=self.unsafe[flat], minlength=len(docs)) > 0
        pieces, ids = self.pieces, flat.tolist()
        ends = np.cumsum(lens).tolist()
        out = [("".join(map(pieces.__getitem__, ids[e - n:e]))).split() for e, n in zip(ends, lens.tolist())]
        if bad.any():
            at = np.flatnonzero(bad)
            for i, text in zip(at.tolist(), fast_batch_decode(self.tokenizer, [docs[i] for i in at])):
                out[i] = text.split()
        return out

    def count(self, docs: Sequence[np.ndarray]) -> np.ndarray:
        """Words per document: (len(docs),) int64 (decodes the documents when not ``exact``)."""
        return self.count_and_cut(docs, None)[0]

    def count_and_cut(self, docs: Sequence[np.ndarray], words: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(words per document, tokens to decode per document so that its first ``words`` words
        come out whole): the cut keeps every token up to the one where word ``words + 1`` starts
        (all of a document with fewer words, or with an unsafe token)."""
        lens = np.array([len(d) for d in docs], np.int64)
        if not docs:
            return np.zeros(0, np.int64), lens
        if not self.exact:
            return np.array([len(t.split()) for t in fast_batch_decode(self.tokenizer, docs)], np.int64), lens
        counts, cut, bad = self._count_flat(np.concatenate(docs), lens, words)
        if len(bad):  # multi-byte characters split over tokens: decode those documents whole
            texts = fast_batch_decode(self.tokenizer, [docs[i] for i in bad])
            counts[bad] = [len(t.split()) for t in texts]
            cut[bad] = lens[bad]
        return counts, cut

    def corpus_counts(self, reader, words: int, chunk_tokens: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`count_and_cut` for every document of a shard ``reader``, in one vectorized pass
        over its token stream (``chunk_tokens`` at a time, whole documents); cached per reader."""
        key = (str(reader.path), reader.num_documents, reader.num_tokens, words, self.exact)
        if key in self._cache:
            return self._cache[key]
        lens = np.asarray(reader.doc_lengths, np.int64)
        bounds = np.concatenate([[0], np.cumsum(lens)])
        counts, cut = np.zeros(len(lens), np.int64), lens.copy()
        if not self.exact:
            for i in range(len(lens)):
                counts[i] = len(fast_batch_decode(self.tokenizer, [reader.document(i)])[0].split())
        else:
            a = 0
            while a < len(lens):
                b = max(a + 1, int(np.searchsorted(bounds, bounds[a] + chunk_tokens, side="right")) - 1)
                b = min(b, len(lens))
                c, k, bad = self._count_flat(reader.tokens(int(bounds[a]), int(bounds[b])), lens[a:b], words)
                for i in bad.tolist():
                    c[i] = len(fast_batch_decode(self.tokenizer, [reader.document(a + i)])[0].split())
                    k[i] = lens[a + i]
                counts[a:b], cut[a:b] = c, k
                a = b
        self._cache[key] = counts, cut
        return counts, cut

    def _count_flat(self, flat: np.ndarray, lens: np.ndarray, words: int | None):
        """(counts, cut, documents holding an unsafe token) of documents laid end to end in ``flat``."""
        ndocs = len(lens)
        ids = np.asarray(flat).astype(np.int64)
        doc_of = np.repeat(np.arange(ndocs), lens)
        at = np.flatnonzero(~self.empty[ids])  # special tokens and empty pieces are transparent
        ids, doc_of = ids[at], doc_of[at]
        # a word starts at a token's first character if it is a non-space and the previous
        # (non-empty) token of the same document ended with a space, or there is none
        prev_space = np.ones(len(ids), bool)
        prev_space[1:] = self.ends_space[ids[:-1]] | (doc_of[1:] != doc_of[:-1])
        per_token = self.inner[ids] + (self.starts[ids] & prev_space)
        counts = np.bincount(doc_of, weights=per_token, minlength=ndocs).astype(np.int64)
        cut = np.asarray(lens, np.int64).copy()
        if words is not None:
            start = np.concatenate([[0], np.cumsum(lens)[:-1]])
            total = np.cumsum(per_token)
            before = np.concatenate([[0], total])[np.searchsorted(doc_of, np.arange(ndocs))]
            past = np.flatnonzero(total - before[doc_of] > words)  # tokens at/after word words + 1 starts
            first = np.full(ndocs, -1)
            first[doc_of[past[::-1]]] = past[::-1]  # the earliest such token of each document
            has = first >= 0
            cut[has] = at[first[has]] - start[has] + 1
        return counts, cut, np.unique(doc_of[self.unsafe[ids]])
