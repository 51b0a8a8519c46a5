"""Prompt formats: dataset rows -> prompt/answer text, and chats -> segments to tokenize.

The plain format is the one the REMIX reference trains base models with (open-instruct's tulu
markers): ``<|user|>\\n{prompt}\\n<|assistant|>\\n{answer}<eos>``, turn contents stripped, and
``\\n`` between an assistant's EOS and the next turn. With ``prompt_format="chat_template"`` the
tokenizer's own chat template renders the same turns, and each segment records which of its
characters are message content (encoded as text, whatever special token it spells).

A rendered chat is a list of `Segment`s. Each segment is tokenized on its own and the ids are
concatenated (see `remix_ds.data.tokenize`), so supervision boundaries are exact and a prompt's
ids are exactly what generation is fed at eval time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KVR_PROMPT = "The value of key {key} is?"
QA_SUFFIX = "\nThe answer is: "  # PopQA / TriviaQA (the reference's load_qa_mem_dataset)
COMPLETION_INSTRUCTION = "Complete the following partial passage:"


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered example: `text` is tokenized on its own; `eos` appends the EOS id."""

    text: str
    supervised: bool
    eos: bool = False
    content: tuple[tuple[int, int], ...] = ()
    """Chat templates: [start, end) character ranges of `text` that are message content (data, encoded
    as text even where it spells a special token); the rest is the template's own text. Plain: ()."""


def kvr_prompt(key: str) -> str:
    return KVR_PROMPT.format(key=key)


def qa_prompt(question: str) -> str:
    """PopQA / TriviaQA prompt: the question, then `\\nThe answer is: `."""
    return question.strip() + QA_SUFFIX


def apps_prompt(question: str, starter_code: str | None, call_based: bool) -> str:
    """APPS prompt as in the reference: Question, optional starter code, the I/O instruction, Answer."""
    text = f"Question:\n {question}"
    if starter_code:
        text += f"\n\nSTARTER CODE:\n{starter_code}"
    text += "\nUse Call-Based format" if call_based else "\nUse Standard Input format"
    return text + "\nAnswer:\n"


def completion_prompt(words: list[str] | str, instruction: str = COMPLETION_INSTRUCTION) -> str:
    """Generic-text / random-word completion prompt: the instruction, a blank line, the words."""
    body = words if isinstance(words, str) else " ".join(words)
    return f"{instruction}\n\n{body}"


def render_plain(messages: list[dict]) -> list[Segment]:
    """Tulu-marker text segments; every assistant turn's content and EOS are supervised.

    Contents are stripped (as open-instruct does), so a trailing space in a prompt is dropped.
    Turns after the last assistant turn carry no loss and are left out.
    """
    segments: list[Segment] = []
    pending = ""
    for m in messages:
        content = m["content"].strip()
        if m["role"] == "assistant":
            segments.append(Segment(pending + "<|assistant|>\n", supervised=False))
            segments.append(Segment(content, supervised=True, eos=True))
            pending = "\n"
        else:
            pending += f"<|{m['role']}|>\n{content}\n"
    return segments


# A message's content is rendered as this sentinel first, so the template's own text (which may
# hold special-token markers) and the data are told apart by position, not by guessing.
# Private-use characters: no template alters them and no real data holds them (checked).
_SENTINEL_OPEN, _SENTINEL_CLOSE = "\ue000", "\ue001"
_SENTINEL = re.compile("\ue000([0-9]+)\ue001")


def _fill(marked: str, contents: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """`marked` with each sentinel replaced by its message's content; the content character ranges."""
    out, ranges, pos, length = [], [], 0, 0
    for m in _SENTINEL.finditer(marked):
        out.append(marked[pos : m.start()])
        length += m.start() - pos
        content = contents[int(m.group(1))]
        ranges.append((length, length + len(content)))
        out.append(content)
        length += len(content)
        pos = m.end()
    out.append(marked[pos:])
    return "".join(out), ranges


def _clip(ranges: list[tuple[int, int]], start: int, end: int) -> tuple[tuple[int, int], ...]:
    """`ranges` cut to [start, end) and shifted to start at 0 (empty ones left out)."""
    return tuple((max(a, start) - start, min(b, end) - start) for a, b in ranges if min(b, end) > max(a, start))


def render_chat_template(messages: list[dict], tokenizer) -> list[Segment]:
    """Segments from the tokenizer's chat template.

    For the k-th assistant turn, the unsupervised part is what the template adds up to the
    generation prompt and the supervised part is the rest of that turn (content plus the template's
    end-of-turn marker, trailing whitespace excluded). No extra EOS is appended: the end-of-turn
    marker plays its role. Every segment's `content` holds the character ranges of message content,
    which the tokenizer encodes as text (special-token text in data is never a special id).

    How content is located: the template is rendered with every content replaced by a sentinel,
    the sentinels are replaced by the contents (as the template renders them: verbatim, or
    stripped, e.g. Llama 3's ``| trim``), and the result must equal the template's real rendering.
    A template may leave a message out. Raises ValueError if the template is not prefix-stable,
    repeats, reorders or otherwise alters a message's content, or if the content holds the sentinel's private-use characters.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.prompt_format=chat_template but the tokenizer has no chat template")
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        return []
    messages = messages[: turns[-1] + 1]  # later turns carry no loss and are left out
    for m in messages:
        if _SENTINEL_OPEN in m["content"] or _SENTINEL_CLOSE in m["content"]:
            raise ValueError("a message's content holds U+E000/U+E001, the private-use characters the "
                             "chat_template renderer reserves; use data.prompt_format=plain")
    marked = [dict(m, content=f"{_SENTINEL_OPEN}{i}{_SENTINEL_CLOSE}") for i, m in enumerate(messages)]
    full_marked = tokenizer.apply_chat_template(marked, tokenize=False)
    found = [int(i) for i in _SENTINEL.findall(full_marked)]
    if found != sorted(set(found)):  # a template may leave a message out (e.g. a system turn), not more
        raise ValueError("the tokenizer's chat template repeats or reorders message contents "
                         f"(contents rendered in order {found} of 0..{len(messages) - 1}); "
                         "use data.prompt_format=plain")
    real = tokenizer.apply_chat_template(messages, tokenize=False)
    for contents in ([m["content"] for m in messages], [m["content"].strip() for m in messages]):
        if _fill(full_marked, contents)[0] == real:
            break
    else:
        raise ValueError("the tokenizer's chat template alters message content (neither verbatim nor "
                         "stripped); use data.prompt_format=plain")
    segments: list[Segment] = []
    done = ""  # text rendered so far
    for k in turns:
        prefix, _ = _fill(tokenizer.apply_chat_template(marked[:k], add_generation_prompt=True, tokenize=False), contents)
        full_k = full_marked if k == turns[-1] else tokenizer.apply_chat_template(marked[: k + 1], tokenize=False)
        full, ranges = _fill(full_k, contents)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ValueError("the tokenizer's chat template is not prefix-stable; use data.prompt_format=plain")
        turn = full[len(prefix) :]
        body = turn.rstrip()
        end = len(prefix) + len(body)
        segments.append(Segment(prefix[len(done) :], supervised=False, content=_clip(ranges, len(done), len(prefix))))
        segments.append(Segment(body, supervised=True, content=_clip(ranges, len(prefix), end)))
        done = prefix + body
    return segments
