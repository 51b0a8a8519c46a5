"""Records: the `Example` every dataset is converted to, and strict readers for local files.

An `Example` is either a single prompt/answer pair (`prompt` and `answer` set) or a chat
(`messages` set, a list of ``{"role", "content"}`` dicts where every assistant turn is trained).
Readers fail loudly before training, with one line naming ``file:line`` (file lines, blank lines
counted) and the cause: malformed JSON, bytes that are not UTF-8, a missing field, an empty,
whitespace-only or non-string prompt/answer (never stringified). `read_rows` returns `Rows`, a
list whose ``where[i]`` is row i's location (``file:line`` for .jsonl/.json lists, ``file row i``
for parquet), which the converters put in their messages.
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
        for name in ("prompt", "answer"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise DataError(f"example {self.id!r} ({self.source}): {name} must be a string, got {type(value).__name__}")
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
            raise DataError(f"{where}: messages[{i}].content must be a string, got {type(m['content']).__name__}")
        if m["role"] != "system" and not m["content"].strip():
            raise DataError(f"{where}: messages[{i}] ({m['role']}) content is empty or whitespace-only")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: messages has no assistant turn to train on")


class Rows(list):
    """A list of row dicts plus ``where``: each row's location for error messages."""

    def __init__(self, rows: Iterable[dict] = (), where: Iterable[str] = ()):
        super().__init__(rows)
        self.where = list(where)


def locations(rows: list[dict], default: str) -> list[str]:
    """``rows.where`` when the rows came from `read_rows`, else ``"DEFAULT row i"``."""
    where = getattr(rows, "where", None)
    if where is not None and len(where) == len(rows):
        return where
    return [f"{default} row {i}" for i in range(len(rows))]


def _decode(raw: bytes, path: Path, line_offset: int = 0) -> str:
    """UTF-8 text, or a DataError naming the file line and column of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = line_offset + raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col}); "
                        f"re-encode the file as UTF-8") from None


def _json_list_lines(text: str) -> list[int] | None:
    """File line of each element of a top-level JSON list (None when the text is not a plain list)."""
    dec = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text.startswith("[", i):
        return None
    i += 1
    lines, n = [], len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            break
        lines.append(text.count("\n", 0, i) + 1)
        _, i = dec.raw_decode(text, i)
    return lines


def read_rows(path: str | Path) -> Rows:
    """Rows of a local .jsonl / .json (a list of objects, or {"data": [...]}) / .parquet file.

    Raises DataError naming the file (and the line for jsonl/json) on anything malformed,
    including bytes that are not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows, where = [], []
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                line = _decode(raw, path, lineno - 1)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
                where.append(f"{path}:{lineno}")
        return Rows(rows, where)
    if suffix == ".json":
        text = _decode(path.read_bytes(), path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        lines = _json_list_lines(text) if isinstance(data, list) else None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
        if lines is None or len(lines) != len(data):
            return Rows(data, [f"{path} data[{i}]" for i in range(len(data))])
        return Rows(data, [f"{path}:{n}" for n in lines])
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            data = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: cannot read parquet ({e})") from None
        return Rows(data, [f"{path} row {i}" for i in range(len(data))])
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")


def require(row: dict, name: str, where: str) -> Any:
    """row[name], or a DataError naming the missing field and the available ones."""
    if name not in row or row[name] is None:
        raise DataError(f"{where}: missing field {name!r} (row has: {', '.join(sorted(row)) or 'no fields'})")
    return row[name]


def check_text(value: Any, name: str, where: str) -> str:
    """A prompt/answer must be a non-blank string: never stringified (a dict answer would train on
    its repr), never empty (an empty answer trains on EOS alone)."""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__} {_short(value)}")
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is {'empty' if not value else 'whitespace-only'}")
    return value


def required_text(row: dict, name: str, where: str) -> str:
    """`require` + `check_text`."""
    return check_text(require(row, name, where), name, where)


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def convert_rows(rows: list[dict], where: list[str], convert, on_bad_record: str = "error") -> "Loaded":
    """``convert(row, i, where[i])`` for every row (None: skipped by design). A DataError stops the
    load (``on_bad_record="error"``) or drops the row and is counted in ``Loaded.dropped``.

    An example id seen before in the same file is such an error (both ``file:line`` positions named):
    a repeated id would be trained twice, or scored twice and break per-example statistics."""
    out, dropped = [], []
    first_at: dict[str, str] = {}
    for i, (row, at) in enumerate(zip(rows, where)):
        try:
            ex = convert(row, i, at)
            if ex is not None:
                if ex.id in first_at:
                    raise DataError(f"{at}: duplicate example id {ex.id!r} (first at {first_at[ex.id]}); "
                                    "ids must be unique (or set data.on_bad_record=drop to drop the repeats)")
                first_at[ex.id] = at
        except DataError as e:
            if not str(e).startswith(at):  # e.g. raised by Example itself: say where the row is
                e = DataError(f"{at}: {e}")
            if on_bad_record != "drop":
                raise e from None
            dropped.append(str(e))
            continue
        if ex is not None:
            out.append(ex)
    return Loaded(out, dropped)


class Loaded(list):
    """Examples plus ``dropped``: the one-line reasons of rows dropped under ``on_bad_record=drop``."""

    def __init__(self, examples: Iterable[Example] = (), dropped: Iterable[str] = ()):
        super().__init__(examples)
        self.dropped = list(dropped)


def generic_row(row: dict, i: int, at: str, source: str) -> Example:
    """One row of the generic local schema (see `generic_examples`)."""
    rid = str(row.get("id", i))
    if "messages" in row:
        msgs = row["messages"]
        check_messages(msgs, at)
        return Example(id=rid, source=source, messages=list(msgs))
    name = "prompt" if "prompt" in row else "question"
    prompt = row.get(name)
    if prompt is None:
        raise DataError(f"{at}: missing field 'prompt' (or 'messages'); row has: {', '.join(sorted(row)) or 'no fields'}")
    prompt = check_text(prompt, name, at)
    answer = required_text(row, "answer", at)
    aliases = tuple(check_text(a, "aliases", at) for a in row.get("aliases") or ())
    return Example(id=rid, source=source, prompt=prompt, answer=answer, aliases=aliases)


def generic_examples(rows: list[dict], source: str, where: str, on_bad_record: str = "error") -> Loaded:
    """The generic local schema: {"prompt", "answer"} or {"messages"}, optional "id" and "aliases".

    `question` is accepted for `prompt`, so eval-style files load too. Errors name ``file:line``.
    """
    return convert_rows(rows, locations(rows, where), lambda r, i, at: generic_row(r, i, at, source), on_bad_record)
