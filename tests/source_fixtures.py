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
