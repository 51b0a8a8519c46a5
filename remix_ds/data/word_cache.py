"""Completion rows (instruction + prompt words -> answer words) from per-word token ids.

Generic-text and random-word rows are ``Complete the following partial passage:`` + 50 words,
answered by the next 50 (`mixing.completion_examples`). Tokenizing each formatted row whole was
most of a stage build once decoding was fast: the `tiny` tokenizer's pre-tokenizer is
``Metaspace(split=False)``, so BPE runs over each ~100-word row as one string. A row's ids are
instead assembled from *units* cut just before each space between two words::

    [<s> "<|user|>\\n{instruction}\\n\\n" w1] [" " w2] ... [" " wP "\\n<|assistant|>\\n"]   (prompt segment)
    [wP+1] [" " wP+2] ... [" " wP+A] </s>                                                  (answer segment)

each tokenized once per distinct unit (one batched call for the new ones) and looked up after.

When that is exact (checked from the tokenizer itself, :func:`unit_split_reason`): a tokenizer's
model runs on each pre-token separately, so the ids of a text are the concatenation of the ids of
its units when every unit boundary is a pre-token boundary and the model never merges across one:

- ``Metaspace`` (sentencepiece-style): a space becomes "▁". With ``split=True`` every "▁" starts a
  pre-token. With ``split=False`` the whole text is one pre-token, and BPE merges never cross a
  "▁" boundary iff no merge result (and no vocabulary piece) holds a "▁" after its first
  character: a merge (x, "▁...") would yield one. Then BPE of the row = BPE of its "▁" chunks.
- ``ByteLevel`` with the GPT-2 regex, or a ``Split`` with the Llama-3 / Qwen2 regex before a
  ``ByteLevel(use_regex=False)``: no alternative of those regexes that matches a non-space
  character goes on to match a following space (letters, digits, punctuation + [\\r\\n]*,
  contractions), so a pre-token always ends before the space in front of a word.

and: no normalizer (it could act across a boundary), a plain BPE model (no dropout, no
continuing-subword prefix or end-of-word suffix), no non-special added tokens (they would be
split out of the text; the plain format encodes special-token text as text), and the special
tokens that ``add_special_tokens`` adds are a constant prefix. Otherwise, for `chat_template`
rows, or for words that are not single non-whitespace strings, rows are tokenized whole
(`tokenize_examples`), as before. ``tests/test_word_cache.py`` checks rows == whole-row
tokenization for a sentencepiece, a byte-level and a Llama-3-style tokenizer over punctuation,
odd whitespace, unicode and special-token text.
"""

from __future__ import annotations

import json
from itertools import chain
from typing import Sequence

import numpy as np

from remix_ds.data import formats
from remix_ds.data.records import Example
from remix_ds.data.tokenize import IGNORE, TokenizedExample, batch_encode, eos_id, render, tokenize_examples

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_WORD_SPLIT_PATTERNS = {LLAMA3_PATTERN, QWEN2_PATTERN}
_SENTINEL = "\ue000"  # a private-use character standing for the words when the template is rendered


def _pre_tokenizer_ok(pre: dict | None, model: dict) -> str | None:
    """None when every space in front of a word is a boundary the model never merges across."""
    if pre is None:
        return "no pre-tokenizer"
    kind = pre.get("type")
    if kind == "Metaspace":
        if pre.get("replacement") != "\u2581":
            return f"Metaspace replacement {pre.get('replacement')!r}"
        if pre.get("split", True):
            return None
        inner = [p for p in model.get("vocab", {}) if "\u2581" in p[1:]]
        merges = model.get("merges") or []
        inner += ["".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges
                  if "\u2581" in ("".join(m) if isinstance(m, list) else m.replace(" ", ""))[1:]]
        return f"vocabulary pieces with an interior '\u2581' (e.g. {inner[0]!r})" if inner else None
    if kind == "ByteLevel":
        return None if pre.get("use_regex", True) else "ByteLevel without its regex"
    if kind == "Sequence":
        parts = pre.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel"
                and not parts[1].get("use_regex", True) and parts[0].get("behavior") == "Isolated"
                and not parts[0].get("invert", False)
                and parts[0].get("pattern", {}).get("Regex") in _WORD_SPLIT_PATTERNS):
            return None
    return f"pre-tokenizer {json.dumps(pre)[:80]} is not one whose word boundaries are known"


def unit_split_reason(tokenizer) -> str | None:
    """Why rows cannot be assembled from per-unit ids for this tokenizer (None: they can, exactly)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "no fast (Rust) tokenizer"
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if spec.get("normalizer") is not None:
        return "the tokenizer has a normalizer"
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        return "not a plain BPE model"
    if any(not t.get("special") for t in spec.get("added_tokens", [])):
        return "non-special added tokens"
    reason = _pre_tokenizer_ok(spec.get("pre_tokenizer"), model)
    if reason:
        return reason
    probe = "a b"
    with_special = batch_encode(tokenizer, [probe], add_special_tokens=True)[0]
    plain = batch_encode(tokenizer, [probe], add_special_tokens=False)[0]
    if len(with_special) < len(plain) or with_special[len(with_special) - len(plain):] != plain:
        return "add_special_tokens adds more than a prefix"
    return None


class CompletionRows:
    """Tokenized completion rows, identical to ``tokenize_examples(completion_examples(...), mode="answer")``.

    One instance per (tokenizer, instruction); its unit cache grows over calls. ``fast`` is False
    (with ``reason``) where the unit split is not exact: then every row is tokenized whole.
    """

    def __init__(self, tokenizer, instruction: str = formats.COMPLETION_INSTRUCTION, prompt_format: str = "plain"):
        self.tokenizer, self.instruction, self.prompt_format = tokenizer, instruction, prompt_format
        self.reason = "prompt_format is chat_template" if prompt_format != "plain" else unit_split_reason(tokenizer)
        if self.reason is None and _SENTINEL in instruction:
            self.reason = "the instruction holds the template sentinel"
        self.fast = self.reason is None
        self.eos = eos_id(tokenizer)
        # unit ids by word: first prompt word (with the template head and BOS), inner word (" " w), last
        # prompt word (" " w + the template tail), a one-word prompt, the first answer word (w)
        self._units: tuple[dict[str, list[int]], ...] = ({}, {}, {}, {}, {})
        if self.fast:
            ex = Example(id="t", source="t", prompt=formats.completion_prompt([_SENTINEL], instruction), answer="x")
            head = render(ex, tokenizer, "plain")[0].text
            self.prefix, self.suffix = head.split(_SENTINEL)

    def _encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        """``batch_encode(..., split_special=True)`` straight through the Rust backend (no per-row
        conversion in transformers); the same ids."""
        backend = self.tokenizer.backend_tokenizer
        if backend.truncation is not None or backend.padding is not None or not hasattr(backend, "encode_special_tokens"):
            return batch_encode(self.tokenizer, texts, add_special_tokens=add_special_tokens)
        before = backend.encode_special_tokens
        backend.encode_special_tokens = True  # special-token text is text (what split_special_tokens sets)
        try:
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            return [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]
        finally:
            backend.encode_special_tokens = before

    def _fill(self, kind: int, words: set[str]) -> None:
        table = self._units[kind]
        new = [w for w in words if w not in table]
        if not new:
            return
        texts = [(self.prefix + w, " " + w, " " + w + self.suffix, self.prefix + w + self.suffix, w)[kind] for w in new]
        table.update(zip(new, self._encode(texts, add_special_tokens=kind in (0, 3))))

    def rows(self, word_rows: Sequence[Sequence[str]], prompt_words: int, answer_words: int, kind: str,
             max_len: int | None) -> tuple[list[TokenizedExample], int]:
        """(kept rows with ids ``{kind}-{i}``, rows dropped for being longer than ``max_len``)."""
        need = prompt_words + answer_words
        rows = [list(w[:need]) for w in word_rows]
        # a row takes the unit path when its words are single non-whitespace strings (one split per row)
        fast = [self.fast and prompt_words >= 1 and len(w) > prompt_words and " ".join(w).split() == w
                and _SENTINEL not in " ".join(w) for w in rows]
        rows_fast = [w for w, ok in zip(rows, fast) if ok]
        if rows_fast:
            multi = prompt_words > 1
            self._fill(0 if multi else 3, {w[0] for w in rows_fast})
            self._fill(2, {w[prompt_words - 1] for w in rows_fast} if multi else set())
            self._fill(4, {w[prompt_words] for w in rows_fast})
            self._fill(1, {x for w in rows_fast for x in w[1:prompt_words - 1]}
                       | {x for w in rows_fast for x in w[prompt_words + 1:]})
        slow = [i for i, ok in enumerate(fast) if not ok]
        whole = {t.id: t for t in tokenize_examples(  # rows the unit split does not cover: tokenized whole
            [Example(id=f"{kind}-{i}", source=kind, answer=" ".join(word_rows[i][prompt_words:need]),
                     prompt=formats.completion_prompt(list(word_rows[i][:prompt_words]), self.instruction))
             for i in slow], self.tokenizer, mode="answer", prompt_format=self.prompt_format).examples}
        kept: list[TokenizedExample] = []
        dropped = 0
        first, inner, last, only, lead = self._units
        for i, (ok, w) in enumerate(zip(fast, rows)):
            if ok:
                if prompt_words > 1:
                    prompt = first[w[0]] + list(chain.from_iterable(map(inner.__getitem__, w[1:prompt_words - 1])))
                    prompt += last[w[prompt_words - 1]]
                else:
                    prompt = list(only[w[0]])
                answer = lead[w[prompt_words]] + list(chain.from_iterable(map(inner.__getitem__, w[prompt_words + 1:])))
                ids = np.asarray(prompt + answer + [self.eos], dtype=np.int32)
                labels = ids.copy()
                labels[: len(prompt)] = IGNORE
            elif f"{kind}-{i}" in whole:
                ids, labels = whole[f"{kind}-{i}"].input_ids, whole[f"{kind}-{i}"].labels
            else:  # fewer than 2 tokens
                dropped += 1
                continue
            if len(ids) < 2 or (max_len is not None and len(ids) > max_len):
                dropped += 1
                continue
            labels[0] = IGNORE
            kept.append(TokenizedExample(f"{kind}-{i}", ids, labels))
        return kept, dropped
