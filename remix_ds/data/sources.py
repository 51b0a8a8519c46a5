"""Where each registered dataset's rows come from today, and which of their fields the loaders read.

Every stage-2 / factoid source is either a hub dataset that loads with the pinned `datasets`
without a dataset script (streamed: `datasets.load_dataset(..., streaming=True)`, so nothing is
materialized), or an original release read exactly as published (`--from NAME=PATH`, a zip or
its unpacked folder). `docs/data.md` lists each source with its status and licence.

`rows(name, release=None)` yields the source's raw rows in source order; `project(name, row)`
keeps exactly the fields `remix_ds.data.datasets.REGISTRY[name].convert` reads, so a prepared
file is small and loads through the same converter as the hub rows.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from remix_ds.data.records import DataError


class SourceMissing(DataError):
    """A source with no loadable hub copy was not given with `--from NAME=PATH` (or the path is wrong)."""


@dataclass(frozen=True)
class HubSplit:
    """One `datasets.load_dataset` call: a hub repo (or a builder such as `json` with data_files)."""

    path: str
    config: str | None = None
    split: str = "train"
    data_files: str | None = None
    """For repos that also hold a loading script: read their data file directly with the `json` builder."""


@dataclass(frozen=True)
class Source:
    name: str
    hub_id: str | None
    parts: tuple[HubSplit, ...]
    fields: tuple[str, ...]
    """Top-level fields the registry converter reads (what a prepared file keeps)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); None: the default branch."""
    release: str = ""
    """For sources without a hub copy: what to download and where to point --from."""
    licence: str = ""
    reshape: Callable[[dict], dict] | None = field(default=None, compare=False)
    """Shrinks a kept field to the part the converter reads (APPS `input_output` -> its fn_name)."""


def _apps_reshape(row: dict) -> dict:
    try:
        fn_name = (json.loads(row.get("input_output") or "{}") or {}).get("fn_name")
    except (json.JSONDecodeError, AttributeError):
        fn_name = None
    return {**row, "input_output": json.dumps({"fn_name": fn_name} if fn_name else {})}


def _triviaqa_reshape(row: dict) -> dict:
    ans = row.get("answer")
    if isinstance(ans, dict):
        ans = {"value": ans.get("value"), "aliases": list(ans.get("aliases") or [])}
    return {**row, "answer": ans}


_MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                  "prealgebra", "precalculus")
_APPS_FILES = "hf://datasets/codeparrot/apps@{rev}/{split}.jsonl"

LAMA_RELEASE = ("the LAMA release data.zip (https://dl.fbaipublicfiles.com/LAMA/data.zip: TREx/P*.jsonl and "
                "relations.jsonl); pass --from lama=PATH/data.zip (or its unpacked folder)")
ENTITYQA_RELEASE = ("EntityQuestions' dataset.zip (https://nlp.cs.princeton.edu/projects/entity-questions/dataset.zip, "
                    "linked from github.com/princeton-nlp/EntityQuestions: train/P*.train.json); "
                    "pass --from entityqa=PATH/dataset.zip (or its unpacked folder)")

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("popqa", "akariasai/PopQA", (HubSplit("akariasai/PopQA", None, "test"),),
               ("id", "question", "possible_answers"), licence="MIT"),
        Source("triviaqa", "mandarjoshi/trivia_qa", (HubSplit("mandarjoshi/trivia_qa", "rc.nocontext", "train"),),
               ("question_id", "question", "answer"), licence="Apache-2.0 (questions); see the dataset card",
               reshape=_triviaqa_reshape),
        Source("webqa", "stanfordnlp/web_questions", (HubSplit("stanfordnlp/web_questions", None, "train"),),
               ("question", "answers"), licence="CC-BY-4.0"),
        Source("ultrachat", "stingning/ultrachat", (HubSplit("stingning/ultrachat", None, "train"),),
               ("id", "data"), licence="MIT"),
        Source("evolcode", "nickrosh/Evol-Instruct-Code-80k-v1", (HubSplit("nickrosh/Evol-Instruct-Code-80k-v1", None, "train"),),
               ("instruction", "output"), licence="CC-BY-NC-SA-4.0 (per the card); generated with OpenAI models"),
        Source("apps", "codeparrot/apps",
               tuple(HubSplit("json", None, "train", _APPS_FILES.format(rev="main", split=s)) for s in ("train", "test")),
               ("problem_id", "question", "solutions", "input_output", "starter_code", "difficulty"),
               licence="MIT", reshape=_apps_reshape),
        Source("gsm8k", "openai/gsm8k", (HubSplit("openai/gsm8k", "main", "train"),), ("question", "answer"), licence="MIT"),
        Source("math", "EleutherAI/hendrycks_math", tuple(HubSplit("EleutherAI/hendrycks_math", s, "train") for s in _MATH_SUBJECTS),
               ("problem", "solution"), licence="MIT"),
        Source("lama", None, (), ("uuid", "sub_label", "obj_label", "template"), release=LAMA_RELEASE, licence="CC-BY-NC-4.0"),
        Source("entityqa", None, (), ("id", "question", "answers"), release=ENTITYQA_RELEASE, licence="MIT"),
    ]
}

# Generic pretraining text the reference mixes in (`get_add_mixing_datapoints`): hub id, text field.
GENERIC: dict[str, tuple[str, str]] = {
    "knowledge-pile": ("Query-of-CC/Knowledge_Pile", "content"),
    "arxiv-pile": ("haritzpuerto/the_pile_arxiv_50k_sample", "text"),
    "fineweb": ("kh4dien/fineweb-100m-sample", "text"),
}


def describe(name: str, release: str | None = None) -> dict:
    """The manifest's `source` record: hub id/config/split/revision, or the release path."""
    src = SOURCES[name]
    if release is not None:
        return {"kind": "release", "path": str(release)}
    return {"kind": "hub", "hub_id": src.hub_id, "revision": src.revision or "main",
            "parts": [{"path": p.path, "config": p.config, "split": p.split, "data_files": p.data_files} for p in src.parts]}


def project(name: str, row: dict) -> dict:
    """`row` cut down to the fields the loader reads (missing ones stay missing: the converter names them)."""
    src = SOURCES[name]
    if src.reshape is not None:
        row = src.reshape(row)
    return {k: row[k] for k in src.fields if k in row}


def _load_dataset(part: HubSplit, revision: str | None):
    import datasets

    if part.data_files is not None:
        return datasets.load_dataset(part.path, data_files=part.data_files, split=part.split, streaming=True)
    return datasets.load_dataset(part.path, part.config, split=part.split, revision=revision, streaming=True)


def hub_rows(name: str) -> Iterator[dict]:
    """The hub rows of `name`, streamed part by part (stop iterating to stop downloading)."""
    src = SOURCES[name]
    for part in src.parts:
        try:
            ds = _load_dataset(part, src.revision)
            it = iter(ds)
        except Exception as e:  # network, gated, removed: say what it was and what to do
            raise DataError(f"{name}: cannot load {part.path}{':' + part.config if part.config else ''} "
                            f"({part.split}) from the hub: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                            f" (offline? set data_files to a local copy with the same fields)") from None
        yield from it


# ----------------------------------------------------------------------------- original releases


class _Tree:
    """A zip file or a folder, read as relative POSIX paths."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        if path.is_dir():
            self.zip = None
            self.files = sorted(str(p.relative_to(path)).replace("\\", "/") for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile:
                raise SourceMissing(f"{name}: {path} is not a readable zip file (corrupt or truncated download?)") from None
            self.files = sorted(n for n in self.zip.namelist() if not n.endswith("/"))
        else:
            raise SourceMissing(f"{name}: --from path {path} does not exist")

    def read(self, rel: str) -> str:
        try:
            data = self.zip.read(rel) if self.zip is not None else (self.path / rel).read_bytes()
            return data.decode("utf-8")
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError, EOFError) as e:
            raise SourceMissing(f"{self.name}: cannot read {rel} in {self.path} ({type(e).__name__}: {e})") from None


def _relation_id(rel: str) -> str:
    return rel.rsplit("/", 1)[-1].split(".", 1)[0]


def _pid_key(rel: str):
    m = re.match(r"P(\d+)", _relation_id(rel))
    return (int(m.group(1)) if m else 1 << 30, rel)


def _round_robin(streams: list[Iterator[dict]]) -> Iterator[dict]:
    """One row of each relation in turn, so the first N rows mix all relations (not N rows of P17)."""
    live = list(streams)
    while live:
        nxt = []
        for it in live:
            row = next(it, None)
            if row is not None:
                yield row
                nxt.append(it)
        live = nxt


def entityqa_release_rows(path: str | Path) -> Iterator[dict]:
    """EntityQuestions as published: `train/P*.train.json` (JSON lists of {question, answers});
    relations (id order) interleaved row by row, so a first-N selection covers every relation."""
    tree = _Tree(Path(path), "entityqa")
    files = sorted((f for f in tree.files if re.search(r"(^|/)train/P\d+\.train\.json$", f)), key=_pid_key)
    if not files:
        raise SourceMissing(f"entityqa: {path} holds no train/P*.train.json; expected {ENTITYQA_RELEASE}")

    def one(rel: str) -> Iterator[dict]:
        try:
            data = json.loads(tree.read(rel))
        except json.JSONDecodeError as e:
            raise SourceMissing(f"entityqa: {path}:{rel}: malformed JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise SourceMissing(f"entityqa: {path}:{rel}: expected a JSON list of {{question, answers}}")
        pid = _relation_id(rel)
        for i, row in enumerate(data):
            yield {"id": f"{pid}-{i}", **row}

    yield from _round_robin([one(rel) for rel in files])


def lama_release_rows(path: str | Path) -> Iterator[dict]:
    """LAMA T-REx as published: `TREx/P*.jsonl` facts, templates from `relations.jsonl` (by `relation`);
    relations (id order) interleaved row by row."""
    tree = _Tree(Path(path), "lama")
    rel_files = [f for f in tree.files if f.rsplit("/", 1)[-1] == "relations.jsonl"]
    facts = sorted((f for f in tree.files if re.search(r"(^|/)TREx/P\d+\.jsonl$", f)), key=_pid_key)
    if not rel_files or not facts:
        raise SourceMissing(f"lama: {path} needs relations.jsonl and TREx/P*.jsonl; expected {LAMA_RELEASE}")
    templates = {}
    for lineno, line in enumerate(io.StringIO(tree.read(rel_files[0])), 1):
        if line.strip():
            try:
                r = json.loads(line)
                templates[r["relation"]] = r["template"]
            except (json.JSONDecodeError, KeyError) as e:
                raise SourceMissing(f"lama: {path}:{rel_files[0]}:{lineno}: bad relation line ({e})") from None

    def one(rel: str) -> Iterator[dict]:
        pid = _relation_id(rel)
        if pid not in templates:
            raise SourceMissing(f"lama: {path}:{rel}: relation {pid} has no template in {rel_files[0]}")
        for lineno, line in enumerate(io.StringIO(tree.read(rel)), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceMissing(f"lama: {path}:{rel}:{lineno}: malformed JSON ({e.msg})") from None
            yield {**r, "template": templates[pid]}

    yield from _round_robin([one(rel) for rel in facts])


RELEASE_READERS: dict[str, Callable[[str | Path], Iterator[dict]]] = {
    "entityqa": entityqa_release_rows,
    "lama": lama_release_rows,
}


def rows(name: str, release: str | Path | None = None) -> Iterator[dict]:
    """Raw rows of `name`: from the release at `release` (zip or folder), else streamed from the hub."""
    if name not in SOURCES:
        raise DataError(f"no source is known for {name!r}; known: {', '.join(sorted(SOURCES))}")
    src = SOURCES[name]
    if release is not None:
        if name not in RELEASE_READERS:
            raise DataError(f"{name}: --from is for sources without a hub copy ({', '.join(sorted(RELEASE_READERS))}); "
                            f"{name} streams from {src.hub_id}")
        return RELEASE_READERS[name](release)
    if src.hub_id is None:
        raise SourceMissing(f"{name}: no loadable hub copy exists; download {src.release}")
    return hub_rows(name)
