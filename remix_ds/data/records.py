"""Records: the `Example` every dataset is converted to, and strict readers for local files.

An `Example` is either a single prompt/answer pair (`prompt` and `answer` set) or a chat
(`messages` set, a list of ``{"role", "content"}`` dicts where every assistant turn is trained).
Readers fail loudly before training: a malformed jsonl line names the file and line number, a
missing field names the field and the row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from remix_ds.data.config import LOCAL_SUFFIXES
from remix_ds.errors import RemixError

ROLES = ("system", "user", "assistant")


class DataError(RemixError):
    """Bad input data (file, row, field); raised before any training step."""


@dataclass(frozen=True)
class Example:
    """One training/eval record, independent of tokenizer and prompt format."""

    id: str
    source: str
    prompt: str | None = None
    answer: str | None = None
    messages: list[dict] | None = None
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self):
        has_pair = self.prompt is not None and self.answer is not None
        if has_pair == (self.messages is not None):
            raise DataError(f"example {self.id!r} ({self.source}): set either prompt+answer or messages, not both/neither")
        if self.messages is not None:
            check_messages(self.messages, f"example {self.id!r} ({self.source})")

    def as_messages(self) -> list[dict]:
        """The record as a chat: a pair becomes one user turn and one assistant turn."""
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]


def check_messages(messages: Any, where: str) -> None:
    """A chat must be a non-empty list of {role, content} with at least one assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: messages[{i}] must have 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: messages[{i}] has role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: messages[{i}].content must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: messages has no assistant turn to train on")


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local .jsonl / .json (a list of objects, or {"data": [...]}) / .parquet file.

    Raises DataError naming the file (and the line for jsonl) on anything malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: cannot read parquet ({e})") from None
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")


def require(row: dict, name: str, where: str) -> Any:
    """row[name], or a DataError naming the missing field and the available ones."""
    if name not in row or row[name] is None:
        raise DataError(f"{where}: missing field {name!r} (row has: {', '.join(sorted(row)) or 'no fields'})")
    return row[name]


def generic_examples(rows: Iterable[dict], source: str, where: str) -> list[Example]:
    """The generic local schema: {"prompt", "answer"} or {"messages"}, optional "id" and "aliases".

    `question` is accepted for `prompt`, so eval-style files load too.
    """
    out = []
    for i, row in enumerate(rows):
        at = f"{where} row {i}"
        rid = str(row.get("id", i))
        if "messages" in row:
            out.append(Example(id=rid, source=source, messages=list(row["messages"])))
            continue
        prompt = row.get("prompt", row.get("question"))
        if prompt is None:
            raise DataError(f"{at}: missing field 'prompt' (or 'messages'); row has: {', '.join(sorted(row))}")
        answer = require(row, "answer", at)
        aliases = tuple(str(a) for a in row.get("aliases") or ())
        out.append(Example(id=rid, source=source, prompt=str(prompt), answer=str(answer), aliases=aliases))
    return out
