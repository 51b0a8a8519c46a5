"""Where each registered dataset's rows come from today, and which of their fields the loaders read.

Every stage-2 / factoid source is either a hub dataset that loads with the pinned `datasets`
without a dataset script (streamed: `datasets.load_dataset(..., streaming=True)`, so nothing is
materialized), or an original release read exactly as published (`--from NAME=PATH`, a zip or
its unpacked folder). A hub dataset is also read offline from a local copy (`--from NAME=PATH`):
the folder `huggingface-cli download --repo-type dataset HUB_ID --local-dir PATH` leaves (the
files `Source.local` names, e.g. PopQA's `test.tsv`), or one of its data files. `docs/data.md`
lists each source with its status and licence.

Rows read from files carry their location under `WHERE` (`file:line`, `archive:member:line`,
`file row N`); `project` drops it, and `remix-ds prepare-data` names it in errors.

`rows(name, release=None)` yields the source's raw rows in source order; `project(name, row)`
keeps exactly the fields `remix_ds.data.datasets.REGISTRY[name].convert` reads, so a prepared
file is small and loads through the same converter as the hub rows.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import re
import sys
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
    local: tuple[tuple[str, ...], ...] = ()
    """The data files of a local copy of the hub repository, one entry per part (in `parts` order): glob
    patterns relative to the copy's root, the first that matches any file wins (alternative layouts)."""


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


WHERE = "__where__"
"""Key of a row's location (`file:line`, `archive:member:line`) in rows read from files; `project` drops it."""

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
               ("id", "question", "possible_answers"), licence="MIT", local=(("test.tsv",),)),
        Source("triviaqa", "mandarjoshi/trivia_qa", (HubSplit("mandarjoshi/trivia_qa", "rc.nocontext", "train"),),
               ("question_id", "question", "answer"), licence="Apache-2.0 (questions); see the dataset card",
               reshape=_triviaqa_reshape, local=(("rc.nocontext/train-*.parquet",),)),
        Source("webqa", "stanfordnlp/web_questions", (HubSplit("stanfordnlp/web_questions", None, "train"),),
               ("question", "answers"), licence="CC-BY-4.0", local=(("data/train-*.parquet", "train-*.parquet"),)),
        Source("ultrachat", "stingning/ultrachat", (HubSplit("stingning/ultrachat", None, "train"),),
               ("id", "data"), licence="MIT", local=(("train_*.jsonl",),)),
        Source("evolcode", "nickrosh/Evol-Instruct-Code-80k-v1", (HubSplit("nickrosh/Evol-Instruct-Code-80k-v1", None, "train"),),
               ("instruction", "output"), licence="CC-BY-NC-SA-4.0 (per the card); generated with OpenAI models",
               local=(("EvolInstruct-Code-80k.json", "*.json"),)),
        Source("apps", "codeparrot/apps",
               tuple(HubSplit("json", None, "train", _APPS_FILES.format(rev="main", split=s)) for s in ("train", "test")),
               ("problem_id", "question", "solutions", "input_output", "starter_code", "difficulty"),
               licence="MIT", reshape=_apps_reshape, local=(("train.jsonl",), ("test.jsonl",))),
        Source("gsm8k", "openai/gsm8k", (HubSplit("openai/gsm8k", "main", "train"),), ("question", "answer"), licence="MIT",
               local=(("main/train-*.parquet",),)),
        Source("math", "EleutherAI/hendrycks_math", tuple(HubSplit("EleutherAI/hendrycks_math", s, "train") for s in _MATH_SUBJECTS),
               ("problem", "solution"), licence="MIT",
               # the hub copy (SUBJECT/train-*.parquet), or the original MATH release (train/SUBJECT/N.json)
               local=tuple((f"{s}/train-*.parquet", f"train/{s}/*.json") for s in _MATH_SUBJECTS)),
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
    """The manifest's `source` record: hub id/config/split/revision, or the release / local copy's path."""
    src = SOURCES[name]
    if release is not None:
        return {"kind": "release" if name in RELEASE_READERS else "local", "path": str(release)}
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
                            f"({part.split}) from the hub: {type(e).__name__}: {_first_line(e)}; {offline_hint(name)}") from None
        while True:
            try:
                row = next(it)
            except StopIteration:
                break
            except Exception as e:  # the connection dropped mid-stream
                raise DataError(f"{name}: reading {src.hub_id} from the hub failed: {type(e).__name__}: {_first_line(e)}; "
                                f"{offline_hint(name)}") from None
            yield row


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def offline_hint(name: str) -> str:
    """What to download for `name` and where to point --from (one clause of a one-line error)."""
    src = SOURCES[name]
    if src.hub_id is None:
        return f"download {src.release}"
    return (f"to build it offline: huggingface-cli download --repo-type dataset {src.hub_id} --local-dir DIR, "
            f"then --from {name}=DIR")


# ----------------------------------------------------------------------------- local copies of hub datasets


def _natural(rel: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", rel)]


def local_files(name: str, path: str | Path) -> list[Path]:
    """The data files of `name` in a local copy of its hub repository (in part order), or [path] for one file."""
    src, path = SOURCES[name], Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SourceMissing(f"{name}: --from path {path} does not exist; {offline_hint(name)}")
    rels = sorted((p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()), key=_natural)
    rels = [r for r in rels if not r.startswith(".cache/")]  # huggingface-cli's own bookkeeping
    files: list[Path] = []
    for alternatives in src.local:
        for pattern in alternatives:
            found = [r for r in rels if fnmatch.fnmatchcase(r, pattern) or fnmatch.fnmatchcase(r, "*/" + pattern)]
            if found:
                files += [path / r for r in found]
                break
        else:
            wanted = " or ".join(alternatives)
            raise SourceMissing(f"{name}: {path} holds no {wanted} (expected a local copy of {src.hub_id}); "
                                f"{offline_hint(name)}")
    return files


def _decode_line(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        "re-encode the file as UTF-8") from None


def _decode_text(data: bytes, where: str) -> str:
    """UTF-8 text of a whole file, or a DataError naming `where`:LINE of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{where}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); "
                        "re-encode the file as UTF-8") from None


def _jsonl_rows(lines: Iterator[bytes], where: str) -> Iterator[dict]:
    for lineno, raw in enumerate(lines, 1):
        at = f"{where}:{lineno}"
        line = _decode_line(raw, at)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{at}: malformed JSON line ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{at}: expected a JSON object, got {type(row).__name__}")
        yield {**row, WHERE: at}


def _json_rows(text: str, where: str) -> Iterator[dict]:
    """A JSON list of objects (rows at their lines), {"data": [...]}, or one object (one row: MATH's release)."""
    from remix_ds.data.records import _json_list_lines

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    elif isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{where}: expected a JSON list of objects, got {type(data).__name__}")
    lines = _json_list_lines(text) or []
    for i, row in enumerate(data):
        at = f"{where}:{lines[i]}" if len(lines) == len(data) else f"{where} [{i}]"
        if not isinstance(row, dict):
            raise DataError(f"{at}: expected a JSON object, got {type(row).__name__}")
        yield {**row, WHERE: at}


def _tsv_rows(path: Path) -> Iterator[dict]:
    """A tab-separated file with a header row (PopQA's test.tsv: list fields are JSON strings)."""
    csv.field_size_limit(sys.maxsize)
    with path.open("rb") as f:
        raw_lines = iter(f)
        header_raw = next(raw_lines, b"")
        header = next(csv.reader([_decode_line(header_raw, f"{path}:1")], delimiter="\t"))
        for lineno, raw in enumerate(raw_lines, 2):
            at = f"{path}:{lineno}"
            line = _decode_line(raw, at)
            if not line.strip():
                continue
            values = next(csv.reader([line], delimiter="\t"))
            if len(values) != len(header):
                raise DataError(f"{at}: {len(values)} tab-separated fields, the header has {len(header)}")
            yield {**dict(zip(header, values)), WHERE: at}


def _parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        i = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield {**row, WHERE: f"{path} row {i}"}
                i += 1
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {_first_line(e)})") from None


def file_rows(path: Path) -> Iterator[dict]:
    """Rows of one local data file (.jsonl, .json, .tsv, .parquet), streamed where the format allows."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as f:
            yield from _jsonl_rows(iter(f), str(path))
    elif suffix == ".json":
        yield from _json_rows(_decode_text(path.read_bytes(), str(path)), str(path))
    elif suffix == ".tsv":
        yield from _tsv_rows(path)
    elif suffix == ".parquet":
        yield from _parquet_rows(path)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .tsv or .parquet")


def local_rows(name: str, path: str | Path) -> Iterator[dict]:
    """The rows of hub dataset `name` from a local copy of its repository (or one of its data files)."""
    for f in local_files(name, path):
        yield from file_rows(f)


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
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise SourceMissing(f"{self.name}: cannot read {rel} in {self.path} ({type(e).__name__}: {e})") from None
        return _decode_text(data, f"{self.name}: {self.path}:{rel}")


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
        from remix_ds.data.records import _json_list_lines

        text = tree.read(rel)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SourceMissing(f"entityqa: {path}:{rel}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise SourceMissing(f"entityqa: {path}:{rel}: expected a JSON list of {{question, answers}}")
        lines = _json_list_lines(text) or []
        pid = _relation_id(rel)
        for i, row in enumerate(data):
            at = f"{path}:{rel}:{lines[i]}" if len(lines) == len(data) else f"{path}:{rel} [{i}]"
            if not isinstance(row, dict):
                raise SourceMissing(f"entityqa: {at}: expected a JSON object {{question, answers}}")
            yield {"id": f"{pid}-{i}", **row, WHERE: at}

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
            if not isinstance(r, dict):
                raise SourceMissing(f"lama: {path}:{rel}:{lineno}: expected a JSON object")
            yield {**r, "template": templates[pid], WHERE: f"{path}:{rel}:{lineno}"}

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
        if name in RELEASE_READERS:
            return RELEASE_READERS[name](release)
        return local_rows(name, release)
    if src.hub_id is None:
        raise SourceMissing(f"{name}: no loadable hub copy exists; download {src.release}")
    return hub_rows(name)
