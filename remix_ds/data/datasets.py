"""Dataset registry: name -> where the data comes from and how a row becomes an `Example`.

Each registered dataset keeps its real public source (a Hugging Face hub id loaded with
`datasets.load_dataset`) and accepts a local .jsonl/.json/.parquet file with the *same fields*
(`data.data_files`), which is what runs offline and in the tests. A `data.dataset` that is itself
a file path uses the generic schema (`prompt`+`answer` or `messages`).

Splits: rows are shuffled with `subsample_seed` (or kept in file order when it is null), the first
`heldout_size` rows are the held-out split, the next `num_examples` (0: all the rest) are train.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from remix_ds.data import formats, sources
from remix_ds.data.config import KVRConfig, SourceConfig
from remix_ds.data.records import (LOCAL_SUFFIXES, DataError, Example, Loaded, check_messages, check_text, convert_rows, generic_examples,
                                   locations, read_rows, require, required_text)

Split = Literal["train", "heldout"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    """How to get one dataset: its hub source and a row converter (row, index, where) -> Example or None.

    ``where`` is the row's location for error messages (``file:line`` for local files)."""

    name: str
    kind: Literal["factoid", "non-factoid"]
    hub_id: str | None
    hub_config: str | None
    hub_splits: tuple[str, ...]
    convert: Callable[[dict, int, str], Example | None]
    note: str = ""


def _qa_answers(row: dict, field: str, at: str) -> tuple[str, tuple[str, ...]]:
    answers = require(row, field, at)
    if isinstance(answers, str):  # PopQA stores its list as a JSON string
        try:
            answers = json.loads(answers)
        except json.JSONDecodeError:
            answers = [answers]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list):
        raise DataError(f"{at}: field {field!r} must be a list of strings, got {type(answers).__name__}")
    answers = [check_text(a, field, at) for a in answers if not (isinstance(a, str) and not a.strip())]
    if not answers:
        raise DataError(f"{at}: field {field!r} has no non-empty answer")
    return answers[0], tuple(answers)


def _popqa(row: dict, i: int, at: str) -> Example:
    answer, aliases = _qa_answers(row, "possible_answers", at)
    q = required_text(row, "question", at)
    return Example(id=f"popqa-{row.get('id', i)}", source="popqa", prompt=formats.qa_prompt(q), answer=answer, aliases=aliases)


def _triviaqa(row: dict, i: int, at: str) -> Example:
    ans = require(row, "answer", at)
    if not isinstance(ans, dict) or "value" not in ans:
        raise DataError(f"{at}: field 'answer' must be an object with 'value' (and 'aliases')")
    value = check_text(ans["value"], "answer.value", at)
    aliases = tuple(dict.fromkeys([value, *(check_text(a, "answer.aliases", at) for a in ans.get("aliases") or [])]))
    q = required_text(row, "question", at)
    return Example(
        id=f"triviaqa-{row.get('question_id', i)}", source="triviaqa", prompt=formats.qa_prompt(q), answer=value, aliases=aliases
    )


def _lama(row: dict, i: int, at: str) -> Example | None:
    """LAMA T-REx: the relation template with the subject filled in, the object label as answer."""
    template, sub, obj = required_text(row, "template", at), required_text(row, "sub_label", at), required_text(row, "obj_label", at)
    text = template.replace("[X]", sub).strip()
    if text.endswith("[Y] .") or text.endswith("[Y]."):
        prompt = text[: text.rindex("[Y]")].strip()  # cloze at the end: a plain continuation
    else:
        prompt = "Fill in the blank: " + text.replace("[Y]", "___")
    return Example(id=f"lama-{row.get('uuid', i)}", source="lama", prompt=prompt, answer=obj)


def _answers_list(name: str, field: str = "answers") -> Callable[[dict, int, str], Example]:
    def convert(row: dict, i: int, at: str) -> Example:
        answer, aliases = _qa_answers(row, field, at)
        q = required_text(row, "question", at)
        return Example(id=f"{name}-{row.get('id', i)}", source=name, prompt=q.strip(), answer=answer, aliases=aliases)

    return convert


def _ultrachat(row: dict, i: int, at: str) -> Example:
    """stingning/ultrachat rows hold alternating user/assistant strings in `data`; `messages` also accepted."""
    if "messages" in row:
        check_messages(row["messages"], at)
        msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    else:
        turns = require(row, "data", at)
        if not isinstance(turns, list):
            raise DataError(f"{at}: field 'data' must be a list of strings, got {type(turns).__name__}")
        msgs = [{"role": "user" if t % 2 == 0 else "assistant", "content": c} for t, c in enumerate(turns)]
        check_messages(msgs, at)
    return Example(id=f"ultrachat-{row.get('id', i)}", source="ultrachat", messages=msgs)


def _evolcode(row: dict, i: int, at: str) -> Example:
    return Example(id=f"evolcode-{i}", source="evolcode", prompt=required_text(row, "instruction", at), answer=required_text(row, "output", at))


def _apps(row: dict, i: int, at: str) -> Example | None:
    """APPS: first reference solution; introductory/interview only, rows without a solution skipped."""
    if row.get("difficulty") not in (None, "introductory", "interview"):
        return None
    try:
        solutions = json.loads(require(row, "solutions", at) or "[]")
    except (json.JSONDecodeError, TypeError):
        return None
    if not solutions:
        return None
    try:
        fn_name = (json.loads(row.get("input_output") or "{}") or {}).get("fn_name")
    except (json.JSONDecodeError, AttributeError):
        fn_name = None
    if not isinstance(solutions, list) or not isinstance(solutions[0], str) or not solutions[0].strip():
        raise DataError(f"{at}: field 'solutions' must be a JSON list of non-empty strings")
    prompt = formats.apps_prompt(required_text(row, "question", at), row.get("starter_code") or None, bool(fn_name))
    return Example(id=f"apps-{row.get('problem_id', i)}", source="apps", prompt=prompt, answer=solutions[0])


def _gsm8k(row: dict, i: int, at: str) -> Example:
    answer = required_text(row, "answer", at)  # the full worked solution ending in '#### N'
    final = answer.split("####")[-1].strip()
    return Example(id=f"gsm8k-{i}", source="gsm8k", prompt=required_text(row, "question", at), answer=answer, aliases=(final,))


def _math(row: dict, i: int, at: str) -> Example:
    return Example(id=f"math-{i}", source="math", prompt=required_text(row, "problem", at), answer=required_text(row, "solution", at))


REGISTRY: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo("kvr", "factoid", None, None, (), lambda r, i, at: None, "synthetic key-value recall, generated from data.kvr"),
        DatasetInfo("popqa", "factoid", "akariasai/PopQA", None, ("test",), _popqa),
        DatasetInfo("triviaqa", "factoid", "mandarjoshi/trivia_qa", "rc.nocontext", ("train",), _triviaqa),
        DatasetInfo("lama", "factoid", None, None, (), _lama,
                    "facebook/lama is a loading script (refused by datasets>=4): `remix-ds prepare-data --from lama=data.zip`"),
        DatasetInfo("entityqa", "factoid", None, None, (), _answers_list("entityqa"),
                    "no hub copy: `remix-ds prepare-data --from entityqa=dataset.zip` (princeton-nlp/EntityQuestions)"),
        DatasetInfo("webqa", "factoid", "stanfordnlp/web_questions", None, ("train",), _answers_list("webqa")),
        DatasetInfo("ultrachat", "non-factoid", "stingning/ultrachat", None, ("train",), _ultrachat),
        DatasetInfo("evolcode", "non-factoid", "nickrosh/Evol-Instruct-Code-80k-v1", None, ("train",), _evolcode),
        DatasetInfo("apps", "non-factoid", "codeparrot/apps", None, ("train", "test"), _apps,
                    "read as its train.jsonl/test.jsonl (the repo's apps.py script is refused by datasets>=4)"),
        DatasetInfo("gsm8k", "non-factoid", "openai/gsm8k", "main", ("train",), _gsm8k),
        DatasetInfo("math", "non-factoid", "EleutherAI/hendrycks_math", None, ("train",), _math,
                    "lighteval/MATH was removed in Jan 2025; the 7 subject configs of EleutherAI/hendrycks_math"),
    ]
}


def known_datasets() -> list[str]:
    return sorted(REGISTRY)


def _join_rows(chars: np.ndarray) -> list[str]:
    """``[''.join(row) for row in chars]`` of a (n, L) array of one-character strings, by viewing each
    row as one L-character numpy string (numpy strips trailing NULs: rows that can hold one are joined)."""
    n, length = chars.shape
    if length == 0 or chars.dtype != np.dtype("<U1") or (chars == "\x00").any():
        return list(map("".join, chars))
    return np.ascontiguousarray(chars).view(f"<U{length}").reshape(n).tolist()


def generate_kvr(cfg: KVRConfig) -> list[Example]:
    """`cfg.num_pairs` distinct keys with random values, deterministic from `cfg.seed` (vectorized)."""
    rng = np.random.default_rng(cfg.seed)
    alphabet = np.array(list(dict.fromkeys(cfg.alphabet)))
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < cfg.num_pairs:  # draw in bulk, keep first occurrences (collisions are rare)
        need = cfg.num_pairs - len(keys)
        draw = alphabet[rng.integers(0, len(alphabet), size=(2 * need, cfg.key_len))]
        for k in _join_rows(draw):
            if k not in seen:
                seen.add(k)
                keys.append(k)
                if len(keys) == cfg.num_pairs:
                    break
    values = _join_rows(alphabet[rng.integers(0, len(alphabet), size=(cfg.num_pairs, cfg.value_len))])
    return [
        Example(id=f"kvr-{i}", source="kvr", prompt=formats.kvr_prompt(k), answer=v)
        for i, (k, v) in enumerate(zip(keys, values))
    ]


HUB_PREFIX_ROWS = 20000
"""A seeded subsample of a streamed hub source is drawn from its first max(this, 10 x needed) rows."""


def _hub_examples(info: DatasetInfo, source: SourceConfig) -> Loaded:
    """Examples streamed from the hub, stopping as soon as the split has what it needs.

    File order (`subsample_seed: null`, the reference's first N): the first heldout_size +
    num_examples convertible rows. Seeded: every convertible row of a bounded prefix (see
    HUB_PREFIX_ROWS), so e.g. UltraChat never becomes 1.47M Python dicts. num_examples 0: all rows.
    """
    if info.hub_id is None:
        raise DataError(f"dataset {info.name!r} has no loadable hub copy ({info.note}); or set data.data_files to a local file")
    need = source.heldout_size + source.num_examples if source.num_examples else 0
    max_rows = 0 if not need or source.subsample_seed is None else max(HUB_PREFIX_ROWS, 10 * need)
    examples: list[Example] = []
    dropped: list[str] = []
    for i, row in enumerate(sources.rows(info.name)):
        if max_rows and i >= max_rows:
            break
        at = f"{info.name} (hub {info.hub_id}) row {i}"
        try:
            ex = info.convert(row, i, at)
        except DataError as e:
            if source.on_bad_record != "drop":
                raise
            dropped.append(str(e))
            continue
        if ex is not None:
            examples.append(ex)
            if need and source.subsample_seed is None and len(examples) == need:
                break
    return Loaded(examples, dropped)


def _kvr_row(row: dict, i: int, at: str) -> Example:
    return Example(id=f"kvr-{row.get('id', i)}", source="kvr", prompt=formats.kvr_prompt(required_text(row, "key", at)),
                   answer=required_text(row, "value", at))


def load_all(source: SourceConfig, kvr: KVRConfig | None = None) -> Loaded:
    """Every example of a dataset, in source order, before any split.

    Bad rows raise DataError naming ``file:line``, or are dropped and listed in ``.dropped``
    (``source.on_bad_record="drop"``; a warning gives the count and the first reason).
    """
    name = source.dataset
    bad = source.on_bad_record
    if Path(name).suffix.lower() in LOCAL_SUFFIXES:
        examples = generic_examples(read_rows(name), source=Path(name).stem, where=name, on_bad_record=bad)
    elif name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(known_datasets())} (or a local .jsonl/.json/.parquet file)")
    elif name == "kvr":
        if source.data_files:  # a saved key/value file: {"key", "value"} rows
            rows = read_rows(source.data_files)
            examples = convert_rows(rows, locations(rows, source.data_files), _kvr_row, bad)
        else:
            examples = Loaded(generate_kvr(kvr or KVRConfig()))
    else:
        info = REGISTRY[name]
        if source.data_files:
            rows = read_rows(source.data_files)
            examples = convert_rows(rows, locations(rows, source.data_files), info.convert, bad)
        else:
            examples = _hub_examples(info, source)
    if examples.dropped:
        log.warning("dataset %r: dropped %d bad record(s) (data.on_bad_record=drop); first: %s",
                    name, len(examples.dropped), examples.dropped[0])
    if not examples:
        raise DataError(f"dataset {name!r}{' (' + source.data_files + ')' if source.data_files else ''} is empty")
    return examples


def split_examples(examples: list[Example], source: SourceConfig, split: Split = "train") -> list[Example]:
    """Held-out / train split: seeded shuffle (or file order), held-out first, then `num_examples` train rows."""
    order = np.arange(len(examples))
    if source.subsample_seed is not None:
        order = np.random.default_rng(source.subsample_seed).permutation(len(examples))
    held = order[: source.heldout_size]
    rest = order[source.heldout_size :]
    if source.num_examples:
        if source.num_examples > len(rest):
            raise DataError(
                f"dataset {source.dataset!r} has {len(examples)} examples; cannot take num_examples={source.num_examples}"
                f" after heldout_size={source.heldout_size}"
            )
        rest = rest[: source.num_examples]
    picked = held if split == "heldout" else rest
    if len(picked) == 0:
        raise DataError(f"dataset {source.dataset!r}: the {split} split is empty")
    return Loaded([examples[i] for i in picked], getattr(examples, "dropped", ()))


def load_examples(source: SourceConfig, kvr: KVRConfig | None = None, split: Split = "train") -> list[Example]:
    """The `split` of a dataset as Examples. Errors (unknown name, bad file, empty) raise DataError."""
    return split_examples(load_all(source, kvr), source, split)
