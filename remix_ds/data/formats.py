"""Prompt formats: dataset rows -> prompt/answer text, and chats -> segments to tokenize.

The plain format is the one the REMIX reference trains base models with (open-instruct's tulu
markers): ``<|user|>\\n{prompt}\\n<|assistant|>\\n{answer}<eos>``, turn contents stripped, and
``\\n`` between an assistant's EOS and the next turn. With ``prompt_format="chat_template"`` the
tokenizer's own chat template renders the same turns.

A rendered chat is a list of `Segment`s. Each segment is tokenized on its own and the ids are
concatenated (see `remix_ds.data.tokenize`), so supervision boundaries are exact and a prompt's
ids are exactly what generation is fed at eval time.
"""

from __future__ import annotations

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


def render_chat_template(messages: list[dict], tokenizer) -> list[Segment]:
    """Segments from the tokenizer's chat template.

    For the k-th assistant turn, the unsupervised part is what the template adds up to the
    generation prompt and the supervised part is the rest of that turn (content plus the template's
    end-of-turn marker, trailing whitespace excluded). No extra EOS is appended: the end-of-turn
    marker plays its role. Raises ValueError if the template is not prefix-stable.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.prompt_format=chat_template but the tokenizer has no chat template")
    segments: list[Segment] = []
    done = ""  # text rendered so far
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ValueError("the tokenizer's chat template is not prefix-stable; use data.prompt_format=plain")
        turn = full[len(prefix) :]
        body = turn.rstrip()
        segments.append(Segment(prefix[len(done) :], supervised=False))
        segments.append(Segment(body, supervised=True))
        done = prefix + body
    return segments
