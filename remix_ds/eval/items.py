"""Eval items: an `Example` tokenized once, split into the prompt the model sees and the gold
answer tokens (+ EOS) it must produce.

Both evaluator paths read the *same* token ids: the fused path scores ``prompt_ids + answer_ids``
in one forward pass; the generation path feeds ``prompt_ids`` to greedy decoding. So any
difference between their verdicts comes from the model and the string matcher, never from
tokenizing the prompt twice.

Tokens come from the data pipeline (`remix_ds.data.tokenize.encode_prompt_answer`), so eval
prompts are formatted exactly as in training. A chat is scored on its last assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from remix_ds.data.records import Example
from remix_ds.data.tokenize import encode_prompt_answer, strip_markers


@dataclass
class EvalItem:
    """One scored example. ``answer_ids`` ends with EOS; ``index`` is its place in the eval set."""

    index: int
    id: str
    source: str
    prompt: str
    gold: str
    aliases: tuple[str, ...]
    prompt_ids: np.ndarray  # (P,) int64, what generation is fed (BOS + formatted prompt)
    answer_ids: np.ndarray  # (A,) int64, gold answer tokens then EOS
    spans: tuple[tuple[int, int], ...] = ()
    """Marked key spans of the gold as token ranges [a, b) into ``answer_ids`` (key-span data only)."""

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)


def dummy_item(token_id: int) -> EvalItem:
    """A two-token placeholder: a rank with no work of its own runs it to stay in step."""
    one = np.array([token_id], dtype=np.int64)
    return EvalItem(index=-1, id="", source="", prompt="", gold="", aliases=(), prompt_ids=one, answer_ids=one)


def prompt_and_gold(example: Example, key_span_delimiters: tuple[str, str] | None = None) -> tuple[str, str]:
    """The prompt text and gold answer: a pair as is; a chat's last assistant turn is the gold.
    With ``key_span_delimiters``, key-span markers are removed from both (what is shown and matched)."""
    if example.messages is None:
        prompt, gold = example.prompt, example.answer
    else:
        last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        prompt = "\n".join(m["content"] for m in example.messages[:last] if m["role"] != "system")
        gold = example.messages[last]["content"]
    if key_span_delimiters is not None:
        where = f"example {example.id!r}"
        prompt, gold = (strip_markers(prompt, key_span_delimiters, where),
                        strip_markers(gold, key_span_delimiters, where))
    return prompt, gold


def make_items(examples: Sequence[Example], tokenizer, prompt_format: str = "plain",
               start_index: int = 0, key_span_delimiters: tuple[str, str] | None = None) -> list[EvalItem]:
    """Tokenize examples for evaluation with the data pipeline's segment tokenization, so prompts
    are formatted and tokenized exactly as in training (``prompt_ids + answer_ids`` is the
    answer-mode training sequence of a single-turn example).

    key_span_delimiters: strip key-span markers from prompts, golds and aliases (the ids are the
    ones `key_spans` mode trains on) and record the gold's marked spans (``EvalItem.spans``)."""
    encoded = encode_prompt_answer(examples, tokenizer, prompt_format, key_span_delimiters)
    items = []
    for i, (ex, enc) in enumerate(zip(examples, encoded)):
        prompt, gold = prompt_and_gold(ex, key_span_delimiters)
        aliases = tuple(ex.aliases)
        if key_span_delimiters is not None:
            aliases = tuple(strip_markers(a, key_span_delimiters, f"example {ex.id!r}") for a in aliases)
        items.append(EvalItem(index=start_index + i, id=ex.id, source=ex.source, prompt=prompt, gold=gold,
                              aliases=aliases, prompt_ids=enc.prompt_ids.astype(np.int64),
                              answer_ids=enc.answer_ids.astype(np.int64), spans=enc.spans))
    return items


def stop_token_ids(items: Sequence[EvalItem], tokenizer) -> list[int]:
    """Tokens that end an answer: EOS (plain format), plus each answer's final token (a chat
    template's end-of-turn marker)."""
    ids = {int(tokenizer.eos_token_id)} | {int(it.answer_ids[-1]) for it in items}
    return sorted(ids)
