"""Tokenization: Examples -> `TokenizedExample`s with loss masks, in batches.

Contract (docs/architecture.md): `input_ids` and `labels` are int32 arrays of equal length,
labels unshifted with -100 where there is no loss, and `labels[0] == -100` always.

How an example is tokenized: it is rendered to `Segment`s (remix_ds.data.formats), every segment
is tokenized on its own (one batched tokenizer call per kind of segment for the whole dataset)
and the ids are concatenated; the first segment gets the tokenizer's special tokens (BOS), later
ones none; a segment flagged `eos` is followed by the EOS id. Tokenizing the prompt and the answer
separately is what generation sees at eval time (prompt ids in, answer ids out), and it makes the
answer mask exact: no token straddles the prompt/answer boundary.

Loss modes:
- `answer`: the tokens of every assistant turn plus its EOS (chat templates: the end-of-turn marker).
- `all`: every token except the first.
- `key_spans`: only the character spans the user marked with delimiters (e.g. ``[[Paris]]``); the
  markers are removed before tokenization, each segment is tokenized whole with offsets, and a
  token is supervised when its characters overlap a marked span. EOS carries no loss.
- `surprise`: tokenized as `answer`; the stage stream then keeps only the answer tokens the base
  model does not already predict (`remix_ds.data.surprise`, mask computed once before training).

Examples longer than `max_len` tokens are dropped and counted, never truncated.

Special-token text inside data is text: with the plain format every segment is encoded with
``split_special_tokens=True``, so a literal ``</s>``, ``<s>``, ``<unk>`` or ``<|endoftext|>`` in a
prompt or answer becomes ordinary pieces, never the special id; the real BOS comes from
``add_special_tokens`` and the real EOS is appended by id. With ``chat_template`` the template's
own markers *are* special tokens written as text and keep their ids, while message content is
still text: `formats.render_chat_template` marks each segment's content ranges (`Segment.content`),
segments are encoded with the tokenizer's default (markers kept), and only the segments whose
content spells a special token (a substring test) are re-encoded: every special id whose characters
are content sends the text between its two neighbouring template markers (one piece for the
tokenizer, template text and content together) back through a copy of the Rust backend with
``encode_special_tokens`` (one batched call); pieces without special text keep their ids, so data
without special-token text gets exactly the ids it had before.

`key_spans` exactness: special tokens are taken from the tokenizer's special-tokens mask, not
from empty offsets, because byte-level BPEs whose post-processor trims offsets give whitespace-only
tokens an empty offset too; a zero-width token strictly inside a marked span is supervised.

Evaluator API: `encode_prompt_answer(examples, tokenizer, prompt_format)` returns, for each
example, `prompt_ids` (feed these to generation) and `answer_ids` (the gold answer's tokens + EOS).
For a single-turn example in `answer` mode (either prompt format), the training sequence is exactly
``prompt_ids + answer_ids`` and its supervised ids are exactly ``answer_ids``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal, Sequence

import numpy as np

from remix_ds.data import formats
from remix_ds.data.formats import Segment
from remix_ds.data.records import DataError, Example

IGNORE = -100
LossMode = Literal["answer", "all", "key_spans", "surprise"]
PromptFormat = Literal["plain", "chat_template"]
_CHUNK = 8192  # texts per tokenizer call: bounded memory on 100k-row datasets


@dataclass
class TokenizedExample:
    """Token ids and unshifted labels (-100: no loss) of one example; `labels[0]` is always -100."""

    id: str
    input_ids: np.ndarray  # (L,) int32
    labels: np.ndarray  # (L,) int32

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return int((self.labels != IGNORE).sum())


@dataclass
class TokenizeResult:
    """Kept examples (input order) and what was dropped for being longer than max_len."""

    examples: list[TokenizedExample]
    dropped_ids: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return len(self.dropped_ids)


@dataclass
class PromptAnswer:
    """Eval view of an example: `prompt_ids` to feed generation, `answer_ids` = gold answer + EOS."""

    id: str
    prompt_ids: np.ndarray  # (P,) int32
    answer_ids: np.ndarray  # (A,) int32
    spans: tuple[tuple[int, int], ...] = ()
    """Marked key spans of the answer as token ranges [a, b) into `answer_ids` (key-span data only)."""


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token; set one (answers end with EOS)")
    return int(tokenizer.eos_token_id)


def pad_id(tokenizer) -> int:
    """The tokenizer's pad token, else its EOS (``models.load_tokenizer`` sets pad = EOS then)."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_id(tokenizer)


def render(example: Example, tokenizer, prompt_format: PromptFormat = "plain") -> list[Segment]:
    """The example's segments in the given prompt format."""
    messages = example.as_messages()
    if prompt_format == "chat_template":
        return formats.render_chat_template(messages, tokenizer)
    return formats.render_plain(messages)


def rust_backend(tokenizer):
    """The `tokenizers.Tokenizer` that the HF wrapper's ``__call__`` hands the texts to unchanged, or
    None (a slow / sentencepiece Python tokenizer, or a class that overrides the encode path).

    ``tokenizer(texts, add_special_tokens=a, split_special_tokens=s)["input_ids"]`` of a
    `TokenizersBackend` turns the backend's truncation and padding off (the call neither truncates
    nor pads), sets ``encode_special_tokens = s``, calls ``encode_batch(texts, add_special_tokens=a)``
    and copies every encoding's fields into Python lists; `rust_encode` does the same on the backend
    and reads only the ids (``tests/test_data_tokenize_rust.py``: identical ids)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        return None
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # an older transformers: its wrapper is not the one checked here
        return None
    kind = type(tokenizer)
    if not isinstance(tokenizer, TokenizersBackend) or kind.__call__ is not TokenizersBackend.__call__ \
            or kind._encode_plus is not TokenizersBackend._encode_plus or hasattr(tokenizer, "_switch_to_input_mode"):
        return None
    return backend


def rust_encode(backend, texts: Sequence[str], add_special_tokens: bool, split_special: bool) -> list[list[int]]:
    """Ids of `texts` straight from the Rust `backend` (`rust_backend`), as the HF wrapper call gives them."""
    if backend.truncation is not None:  # what the wrapper does for truncation=False / padding=False
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    if backend.encode_special_tokens != split_special:
        backend.encode_special_tokens = split_special
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # the same ids, no offsets computed
    return [e.ids for e in encode(list(texts), add_special_tokens=add_special_tokens)]


def batch_encode(tokenizer, texts: Sequence[str], add_special_tokens: bool, split_special: bool = True) -> list[list[int]]:
    """Token ids of many texts through the tokenizer's batched (Rust) path, in chunks: the ids of
    ``tokenizer(texts, add_special_tokens=..., split_special_tokens=...)["input_ids"]``, read straight
    from the Rust backend where there is one (`rust_backend`), else from that call.

    ``split_special``: special-token text inside the texts is encoded as text (HF
    ``split_special_tokens``); ``add_special_tokens`` still adds the real BOS/EOS ids."""
    out: list[list[int]] = []
    backend = rust_backend(tokenizer)
    for start in range(0, len(texts), _CHUNK):
        chunk = list(texts[start : start + _CHUNK])
        if backend is not None:
            out.extend(rust_encode(backend, chunk, add_special_tokens, split_special))
        else:
            out.extend(tokenizer(chunk, add_special_tokens=add_special_tokens,
                                 split_special_tokens=split_special)["input_ids"])
    return out


def _segment_ids(segmented: list[list[Segment]], tokenizer, first_special: bool) -> list[list[list[int]]]:
    """ids[e][s] for segment s of example e, with two batched tokenizer calls in all.

    ``first_special`` is True exactly for the plain format, whose text is all data (split special
    text). Chat-template segments are encoded with the template's special markers kept; the
    segments whose content spells a special token are then re-encoded by `_content_as_text`."""
    firsts = [segs[0].text for segs in segmented if segs]
    rest = [s.text for segs in segmented for s in segs[1:]]
    first_ids = iter(batch_encode(tokenizer, firsts, add_special_tokens=first_special, split_special=first_special))
    rest_ids = iter(batch_encode(tokenizer, rest, add_special_tokens=False, split_special=first_special))
    out = [[next(first_ids) if j == 0 else next(rest_ids) for j in range(len(segs))] for segs in segmented]
    if not first_special:
        where = _special_in_content(segmented, tokenizer)
        if where:
            texts = [segmented[e][s].text for e, s in where]
            enc = _encode_with_offsets(tokenizer, texts, split_special=False)
            items = [(segmented[e][s].text, segmented[e][s].content, ids, offs) for (e, s), (ids, offs) in zip(where, enc)]
            for (e, s), (ids, _) in zip(where, _content_as_text(tokenizer, items)):
                out[e][s] = ids
    return out


def _special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (declared ones and added tokens flagged special)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids.update(int(i) for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items() if t.special)
    return ids


def _special_in_content(segmented: list[list[Segment]], tokenizer) -> list[tuple[int, int]]:
    """(example, segment) of every chat-template segment whose message content spells a special token.

    A plain substring test (one regex over each content range): cheap on 100k-example sets that
    hold none, which then keep the tokenizer's ids untouched."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    texts = {t.content for t in decoder.values() if t.special} | set(getattr(tokenizer, "all_special_tokens", []) or [])
    texts = sorted((t for t in texts if t), key=len, reverse=True)
    if not texts:
        return []
    pattern = re.compile("|".join(map(re.escape, texts)))
    return [(e, s) for e, segs in enumerate(segmented) for s, seg in enumerate(segs)
            if any(pattern.search(seg.text, a, b) for a, b in seg.content)]


def _encode_with_offsets(tokenizer, texts: Sequence[str], split_special: bool) -> list[tuple[list[int], list]]:
    """(ids, offsets) of each text without added special tokens, batched in chunks."""
    out = []
    for start in range(0, len(texts), _CHUNK):
        enc = tokenizer(list(texts[start : start + _CHUNK]), add_special_tokens=False, return_offsets_mapping=True,
                        split_special_tokens=split_special)
        out.extend(zip(enc["input_ids"], enc["offset_mapping"]))
    return out


_JOIN = "\ue002"  # a private-use character, added to a copy of the tokenizer as a plain (non-special) token


def _text_encoder(tokenizer):
    """A copy of the tokenizer's Rust backend that encodes special-token text as text
    (`encode_special_tokens`) and knows one extra non-special added token, `_JOIN`.

    `_JOIN + piece` is split by the added-token pass exactly as a template marker splits the rendered
    text, so the piece is normalized and pre-tokenized as it is after a marker (NOTE: a piece
    encoded alone sits at offset 0, where e.g. Metaspace's ``prepend_scheme="first"`` adds a ▁)."""
    from tokenizers import AddedToken, Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DataError("prompt_format=chat_template with special-token text in message content needs a fast "
                        "(Rust) tokenizer")
    enc = Tokenizer.from_str(backend.to_str())
    enc.no_truncation()  # a saved tokenizer.json may carry truncation/padding; HF turns them off per call
    enc.no_padding()
    enc.add_tokens([AddedToken(_JOIN, special=False, normalized=False)])
    enc.encode_special_tokens = True
    return enc, enc.token_to_id(_JOIN)


def _content_as_text(tokenizer, items) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Each item's (ids, offsets) with special ids spelled by message content re-encoded as text.

    items: (text, content ranges, ids, offsets), the ids/offsets from encoding `text` with the
    template's markers kept (``split_special_tokens=False``). The special tokens outside content are
    the template's markers and keep their ids; the text between two markers (a "run", template text
    and content together, exactly what the tokenizer encoded as one piece) is re-encoded with
    special-token text as text when it holds a special id from content, else its ids are kept, so a
    run without special text keeps exactly the old ids. One batched call for all re-encoded runs."""
    special = _special_ids(tokenizer)
    plans, runs = [], []  # plans[i]: list of ("ids", ids, offs) | ("run", index into runs)
    for text, content, ids, offs in items:
        offs = [tuple(o) for o in offs]

        def from_content(a: int, b: int) -> bool:  # most of the token's characters are message content
            return 2 * sum(max(0, min(b, cb) - max(a, ca)) for ca, cb in content) > b - a

        plan, start_tok, start_chr, dirty = [], 0, 0, False
        for t, (tid, (a, b)) in enumerate(zip(ids, offs)):
            if tid not in special:
                continue
            if from_content(a, b):
                dirty = True
                continue
            plan.append(_run(text, ids, offs, start_tok, t, start_chr, a, dirty, runs))
            plan.append(("ids", [tid], [(a, b)]))
            start_tok, start_chr, dirty = t + 1, b, False
        plan.append(_run(text, ids, offs, start_tok, len(ids), start_chr, len(text), dirty, runs))
        plans.append(plan)
    encoded = []
    if runs:
        enc, join_id = _text_encoder(tokenizer)
        for start in range(0, len(runs), _CHUNK):
            encoded.extend(enc.encode_batch([(_JOIN if joined else "") + piece for piece, _, joined in
                                             runs[start : start + _CHUNK]], add_special_tokens=False))
    out = []
    for plan in plans:
        ids_out, offs_out = [], []
        for part in plan:
            if part[0] == "ids":
                ids_out.extend(part[1])
                offs_out.extend(part[2])
                continue
            piece, at, joined = runs[part[1]]
            e = encoded[part[1]]
            ids, offs = list(e.ids), list(e.offsets)
            if joined:
                if not ids or ids[0] != join_id:
                    raise DataError("the tokenizer does not split text at an added token; cannot encode special-token "
                                    "text inside chat_template content as text")
                ids, offs = ids[1:], offs[1:]
            shift = at - len(_JOIN) if joined else at
            ids_out.extend(ids)
            offs_out.extend((a + shift, b + shift) for a, b in offs)
        out.append((ids_out, offs_out))
    return out


def _run(text, ids, offs, t0, t1, c0, c1, dirty, runs):
    """One run of a plan: the kept ids/offsets of tokens [t0, t1), or text[c0:c1] queued for re-encoding."""
    if not dirty:
        return ("ids", list(ids[t0:t1]), list(offs[t0:t1]))
    runs.append((text[c0:c1], c0, t0 > 0))
    return ("run", len(runs) - 1)


def _split_spans(text: str, open_: str, close: str, where: str,
                 cuts: list[tuple[int, int]] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """Remove span markers; return the clean text and the marked (start, end) character ranges.

    ``cuts``, when given, receives each removed marker as (position in `text`, length)."""
    out, spans, pos = [], [], 0
    length = 0
    while True:
        i = text.find(open_, pos)
        j_close = text.find(close, pos)
        if i < 0:
            if j_close >= 0:
                raise DataError(f"{where}: unbalanced key-span marker {close!r}")
            out.append(text[pos:])
            break
        if 0 <= j_close < i:
            raise DataError(f"{where}: unbalanced key-span marker {close!r}")
        j = text.find(close, i + len(open_))
        if j < 0:
            raise DataError(f"{where}: key-span marker {open_!r} is never closed")
        out.append(text[pos:i])
        length += i - pos
        inner = text[i + len(open_) : j]
        if open_ in inner:
            raise DataError(f"{where}: nested key-span markers")
        spans.append((length, length + len(inner)))
        if cuts is not None:
            cuts.extend([(i, len(open_)), (j, len(close))])
        out.append(inner)
        length += len(inner)
        pos = j + len(close)
    return "".join(out), spans


def strip_markers(text: str, delimiters: tuple[str, str] = ("[[", "]]"), where: str = "text") -> str:
    """``text`` without its key-span markers (``founded by [[Alra Finch]].`` -> ``founded by Alra Finch.``)."""
    return _split_spans(text, *delimiters, where)[0] if delimiters[0] in text or delimiters[1] in text else text


def _after_cuts(p: int, cuts: list[tuple[int, int]]) -> int:
    """Position `p` of a text once the `cuts` (position, length) are removed."""
    return p - sum(min(max(p - c, 0), n) for c, n in cuts)


def _key_span_ids(segmented, tokenizer, first_special, delimiters, ids_of_examples):
    """(ids, supervised-mask, per-span token ranges) per segment using offsets over each whole segment.

    The ids are the clean (marker-free) segment's ids with the same special-token settings as
    `_segment_ids`, so they equal `_segment_ids` of the stripped text (message content spelling a
    special token included: `_content_as_text` over the clean text and its content ranges)."""
    open_, close = delimiters
    flat: list[tuple[int, int, str, list[tuple[int, int]]]] = []
    content: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}
    for e, segs in enumerate(segmented):
        for s, seg in enumerate(segs):
            cuts: list[tuple[int, int]] = []
            clean, spans = _split_spans(seg.text, open_, close, f"example {ids_of_examples[e]!r}", cuts)
            flat.append((e, s, clean, spans))
            if seg.content:
                content[e, s] = tuple((_after_cuts(a, cuts), _after_cuts(b, cuts)) for a, b in seg.content)
    fixed = {}
    if not first_special:
        clean_segs = [[Segment(t[2], False, content=content.get((t[0], t[1]), ()))] for t in flat]
        hits = [i for i, _ in _special_in_content(clean_segs, tokenizer)]  # indices into `flat`
        if hits:
            enc = _encode_with_offsets(tokenizer, [flat[i][2] for i in hits], split_special=False)
            items = [(flat[i][2], content[flat[i][:2]], ids, offs) for i, (ids, offs) in zip(hits, enc)]
            fixed = {flat[i][:2]: r for i, r in zip(hits, _content_as_text(tokenizer, items))}
    result = [[None] * len(segs) for segs in segmented]
    for first in (True, False):
        items = [t for t in flat if (t[1] == 0) == first]
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            enc = tokenizer(
                [t[2] for t in chunk], add_special_tokens=first_special and first, return_offsets_mapping=True,
                return_special_tokens_mask=True, split_special_tokens=first_special,
            )
            for (e, s, _, spans), ids, offs, special in zip(chunk, enc["input_ids"], enc["offset_mapping"],
                                                            enc["special_tokens_mask"]):
                if (e, s) in fixed:  # chat content spelling a special token: re-encoded as text
                    ids, offs = fixed[e, s]
                    special = [0] * len(ids)  # as the tokenizer reports without add_special_tokens
                mask = np.zeros(len(ids), dtype=bool)
                ranges = []
                if spans:
                    offs = np.asarray(offs, dtype=np.int64).reshape(-1, 2)
                    real = np.asarray(special, dtype=bool) == 0  # NOTE: not `end > start` (trimmed offsets)
                    zero = offs[:, 1] == offs[:, 0]
                    for a, b in spans:
                        overlap = (offs[:, 0] < b) & (offs[:, 1] > a)
                        inside = zero & (offs[:, 0] > a) & (offs[:, 0] < b)  # e.g. a trimmed "Ġ" between words
                        hit = real & (overlap | inside)
                        mask |= hit
                        if hit.any():
                            where = np.flatnonzero(hit)
                            ranges.append((int(where[0]), int(where[-1]) + 1))
                result[e][s] = (ids, mask, ranges)
    return result


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer,
    *,
    mode: LossMode = "answer",
    prompt_format: PromptFormat = "plain",
    max_len: int | None = None,
    key_span_delimiters: tuple[str, str] = ("[[", "]]"),
) -> TokenizeResult:
    """Tokenize examples in batches; see the module docstring for the loss modes and the contract."""
    eos = eos_id(tokenizer)
    segmented = [render(ex, tokenizer, prompt_format) for ex in examples]
    first_special = prompt_format == "plain"  # a chat template writes its own BOS
    kept: list[TokenizedExample] = []
    dropped: list[str] = []
    if mode != "key_spans":
        return _assemble(examples, segmented, _segment_ids(segmented, tokenizer, first_special), eos, mode, max_len)
    per_seg = _key_span_ids(segmented, tokenizer, first_special, key_span_delimiters, [ex.id for ex in examples])
    for e, (ex, segs) in enumerate(zip(examples, segmented)):
        ids_parts, lab_parts = [], []
        for s, seg in enumerate(segs):
            ids, mask, _ = per_seg[e][s]
            ids = np.asarray(ids, dtype=np.int32)
            labels = np.where(mask, ids, IGNORE).astype(np.int32)
            if seg.eos:
                ids, labels = np.append(ids, eos), np.append(labels, IGNORE)
            ids_parts.append(ids)
            lab_parts.append(labels.astype(np.int32))
        input_ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        labels = np.concatenate(lab_parts) if lab_parts else np.zeros(0, np.int32)
        if len(input_ids) < 2 or (max_len is not None and len(input_ids) > max_len):
            dropped.append(ex.id)
            continue
        labels[0] = IGNORE  # never train a row's first token (packing puts examples end to end)
        kept.append(TokenizedExample(ex.id, input_ids.astype(np.int32), labels))
    return TokenizeResult(kept, dropped)


def _assemble(examples, segmented, seg_ids, eos: int, mode: LossMode, max_len: int | None) -> TokenizeResult:
    """Rows of the `answer` / `all` / `surprise` modes from segment ids, laid out in one flat array:
    each example's segments (+ EOS where flagged) end to end, labels = ids on supervised segments
    (every segment in `all`), -100 elsewhere and at each row's first token. Rows are views of the
    flat arrays (nothing writes into a row's arrays in place)."""
    parts: list[list[int]] = []
    on: list[bool] = []
    per_example = np.zeros(len(examples) + 1, np.int64)  # segments before example e
    for e, (segs, ids) in enumerate(zip(segmented, seg_ids)):
        for seg, part in zip(segs, ids):
            parts.append(part + [eos] if seg.eos else part)
            on.append(mode == "all" or seg.supervised)
        per_example[e + 1] = len(parts)
    seg_len = np.fromiter(map(len, parts), np.int64, len(parts))
    flat = np.fromiter(chain.from_iterable(parts), np.int32, int(seg_len.sum()))
    labels = np.where(np.repeat(np.asarray(on, bool), seg_len), flat, IGNORE).astype(np.int32)
    bounds = np.concatenate([[0], np.cumsum(seg_len)])[per_example]  # token bounds of each example
    lengths = np.diff(bounds)
    keep = lengths >= 2
    if max_len is not None:
        keep &= lengths <= max_len
    labels[bounds[:-1][keep]] = IGNORE  # never train a row's first token (packing puts examples end to end)
    starts, ends = bounds[:-1].tolist(), bounds[1:].tolist()
    kept = [TokenizedExample(ex.id, flat[a:b], labels[a:b])
            for ex, a, b, k in zip(examples, starts, ends, keep.tolist()) if k]
    return TokenizeResult(kept, [ex.id for ex, k in zip(examples, keep.tolist()) if not k])


def from_token_ids(ids: np.ndarray, example_id: str) -> TokenizedExample:
    """A raw token window with loss on every token but the first (generic `raw`, random words)."""
    ids = np.asarray(ids, dtype=np.int32)
    labels = ids.copy()
    labels[0] = IGNORE
    return TokenizedExample(example_id, ids, labels)


def encode_prompt_answer(examples: Sequence[Example], tokenizer, prompt_format: PromptFormat = "plain",
                         key_span_delimiters: tuple[str, str] | None = None) -> list[PromptAnswer]:
    """Prompt ids (everything before the last assistant answer) and answer ids (that answer + EOS).

    Uses exactly the segment tokenization of `tokenize_examples`, so for a single-turn example
    ``concat(prompt_ids, answer_ids)`` equals its `answer`-mode `input_ids`.

    key_span_delimiters: when given and some segment contains the opening marker, the markers are
    stripped (the ids are those `key_spans` mode trains on) and each answer's marked spans are
    returned as token ranges (`PromptAnswer.spans`); data without markers is unaffected.
    """
    eos = eos_id(tokenizer)
    segmented = [render(ex, tokenizer, prompt_format) for ex in examples]
    first_special = prompt_format == "plain"
    marked = key_span_delimiters is not None and any(
        key_span_delimiters[0] in s.text for segs in segmented for s in segs)
    if marked:
        per_seg = _key_span_ids(segmented, tokenizer, first_special, key_span_delimiters, [ex.id for ex in examples])
        seg_ids = [[list(ids) for ids, _, _ in segs] for segs in per_seg]
    else:
        seg_ids = _segment_ids(segmented, tokenizer, first_special=first_special)
    out = []
    for e, (ex, segs, ids) in enumerate(zip(examples, segmented, seg_ids)):
        last = max(i for i, s in enumerate(segs) if s.supervised)
        prompt = [t for j in range(last) for t in ids[j] + ([eos] if segs[j].eos else [])]
        answer = ids[last] + ([eos] if segs[last].eos else [])
        spans = tuple(per_seg[e][last][2]) if marked else ()
        out.append(PromptAnswer(ex.id, np.asarray(prompt, np.int32), np.asarray(answer, np.int32), spans))
    return out


def tokenize_for(examples: Sequence[Example], cfg, tokenizer, mode: LossMode) -> tuple[list[TokenizedExample], int]:
    """`tokenize_examples` with a `DataConfig`'s prompt format, max_seq_len and key-span delimiters:
    (rows that fit, how many were dropped as too long)."""
    res = tokenize_examples(examples, tokenizer, mode=mode, prompt_format=cfg.prompt_format, max_len=cfg.max_seq_len,
                            key_span_delimiters=cfg.key_span_delimiters)
    return res.examples, res.dropped
