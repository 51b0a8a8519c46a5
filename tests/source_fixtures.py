"""Fixtures shaped exactly like each real source (same columns, nesting, string encodings).

`fake_load_dataset` replaces only the transport: it stands in for `datasets.load_dataset(...,
streaming=True)` and returns an iterable over tests/fixtures/hub_rows.json rows, keyed by
(path, config or data_files, split). Release archives are written as published: EntityQuestions'
dataset.zip (dataset/train/P*.train.json) and LAMA's data.zip (data/relations.jsonl,
data/TREx/P*.jsonl).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HUB_ROWS = json.loads((FIXTURES / "hub_rows.json").read_text(encoding="utf-8"))


class FakeStream:
    """An IterableDataset stand-in that records how many rows were pulled."""

    def __init__(self, rows):
        self.rows, self.pulled = rows, 0

    def __iter__(self):
        for r in self.rows:
            self.pulled += 1
            yield json.loads(json.dumps(r))


def install_fake_hub(monkeypatch, rows=None, calls=None):
    """Monkeypatch datasets.load_dataset; `calls` collects (path, config, kwargs) of each call."""
    import datasets

    table = HUB_ROWS if rows is None else rows

    def fake_load_dataset(path, name=None, *, split=None, streaming=False, data_files=None, revision=None, **kw):
        assert streaming, "sources must stream"
        key = f"{path}|{data_files if data_files is not None else name}|{split}"
        if calls is not None:
            calls.append((path, name, {"split": split, "data_files": data_files, "revision": revision}))
        if key not in table:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed ({key})")
        return FakeStream(table[key])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)


ENTITYQA = {
    "P17": [{"question": "Which country is Kotajärvi located in?", "answers": ["Finland"]},
            {"question": "Which country is Bernardów located in?", "answers": ["Poland"]}],
    "P106": [{"question": "What kind of work does Angela Merkel do?", "answers": ["politician", "chemist"]}],
}
LAMA_RELATIONS = [
    {"relation": "P19", "template": "[X] was born in [Y] .", "label": "place of birth", "description": "", "type": "N-1"},
    {"relation": "P1376", "template": "[X] is the capital of [Y] .", "label": "capital of", "description": "", "type": "1-1"},
]
LAMA_TREX = {
    "P19": [{"uuid": "a1", "obj_uri": "Q90", "obj_label": "Paris", "sub_uri": "Q1", "sub_label": "Jean Dupont", "predicate_id": "P19",
             "evidences": [{"sub_surface": "Jean Dupont", "obj_surface": "Paris", "masked_sentence": "Jean Dupont was born in [MASK]."}]}],
    "P1376": [{"uuid": "b1", "obj_uri": "Q142", "obj_label": "France", "sub_uri": "Q90", "sub_label": "Paris", "predicate_id": "P1376",
               "evidences": []},
              {"uuid": "b2", "obj_uri": "Q183", "obj_label": "Germany", "sub_uri": "Q64", "sub_label": "Berlin", "predicate_id": "P1376",
               "evidences": []}],
}


def write_entityqa_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for pid, rows in ENTITYQA.items():
            z.writestr(f"dataset/train/{pid}.train.json", json.dumps(rows, ensure_ascii=False))
            z.writestr(f"dataset/dev/{pid}.dev.json", json.dumps(rows[:1]))
            z.writestr(f"dataset/test/{pid}.test.json", json.dumps(rows[:1]))
    return path


def write_lama_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data/relations.jsonl", "".join(json.dumps(r) + "\n" for r in LAMA_RELATIONS))
        for pid, rows in LAMA_TREX.items():
            z.writestr(f"data/TREx/{pid}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        z.writestr("data/Google_RE/place_of_birth_test.jsonl", "{}\n")
    return path


# ---- local copies of the hub repositories, laid out as `huggingface-cli download --repo-type dataset
# HUB_ID --local-dir DIR` leaves them (files per the dataset cards / repository trees)

def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _popqa_tsv(path: Path, rows: list[dict]) -> None:
    """akariasai/PopQA's test.tsv as pandas `to_csv(sep="\\t", index=False)` writes it: a header, one row per line,
    list columns (s_aliases, o_aliases, possible_answers) as JSON strings, quoted because they hold `"`."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_hub_copy(root: Path, name: str) -> Path:
    """DIR for `--from NAME=DIR`: the hub repository's files for `name`, filled with the fixture rows
    (plus the README.md and huggingface-cli's .cache folder, which the reader must ignore)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    (root / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
    (root / ".cache" / "huggingface" / "download.lock").write_text("")
    if name == "popqa":
        _popqa_tsv(root / "test.tsv", HUB_ROWS["akariasai/PopQA|None|test"])
    elif name == "triviaqa":
        rows = HUB_ROWS["mandarjoshi/trivia_qa|rc.nocontext|train"]
        _parquet(root / "rc.nocontext" / "train-00000-of-00001.parquet", rows)
        _parquet(root / "rc.nocontext" / "validation-00000-of-00001.parquet", rows[:1])
        _parquet(root / "rc" / "train-00000-of-00026.parquet", rows[:1])  # another config: not read
    elif name == "webqa":
        rows = HUB_ROWS["stanfordnlp/web_questions|None|train"]
        _parquet(root / "data" / "train-00000-of-00001.parquet", rows)
        _parquet(root / "data" / "test-00000-of-00001.parquet", rows[:1])
    elif name == "ultrachat":
        rows = HUB_ROWS["stingning/ultrachat|None|train"]
        _jsonl(root / "train_0.jsonl", rows[:1])
        _jsonl(root / "train_1.jsonl", rows[1:])
    elif name == "evolcode":
        rows = HUB_ROWS["nickrosh/Evol-Instruct-Code-80k-v1|None|train"]
        (root / "EvolInstruct-Code-80k.json").write_text(json.dumps(rows, indent=4), encoding="utf-8")
    elif name == "apps":
        for split in ("train", "test"):
            _jsonl(root / f"{split}.jsonl", HUB_ROWS[f"json|hf://datasets/codeparrot/apps@main/{split}.jsonl|train"])
        (root / "apps.py").write_text("# the dataset script (not run)\n")
    elif name == "gsm8k":
        rows = HUB_ROWS["openai/gsm8k|main|train"]
        _parquet(root / "main" / "train-00000-of-00001.parquet", rows)
        _parquet(root / "main" / "test-00000-of-00001.parquet", rows)
        _parquet(root / "socratic" / "train-00000-of-00001.parquet", rows)
    elif name == "math":
        for key, rows in HUB_ROWS.items():
            if key.startswith("EleutherAI/hendrycks_math|"):
                subject = key.split("|")[1]
                _parquet(root / subject / "train-00000-of-00001.parquet", rows)
                _parquet(root / subject / "test-00000-of-00001.parquet", rows)
        (root / "hendrycks_math.py").write_text("# the dataset script (not run)\n")
    else:
        raise KeyError(name)
    return root


HUB_SETS = ("popqa", "triviaqa", "webqa", "ultrachat", "evolcode", "apps", "gsm8k", "math")


def hub_rows_of(name: str) -> list[dict]:
    """The fixture rows of `name` in source order (what streaming the hub yields)."""
    from remix_ds.data import sources

    src = sources.SOURCES[name]
    out = []
    for part in src.parts:
        out += HUB_ROWS[f"{part.path}|{part.data_files if part.data_files is not None else part.config}|{part.split}"]
    return out
