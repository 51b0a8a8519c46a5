"""One field-mapping test per source: fixture rows shaped like the real source -> projected row -> Example."""

import json
import zipfile

import pytest
from source_fixtures import (HUB_ROWS, HUB_SETS, LAMA_RELATIONS, hub_rows_of, install_fake_hub, write_entityqa_zip,
                             write_hub_copy, write_lama_zip)

from remix_ds.data import sources
from remix_ds.data.datasets import REGISTRY, load_all
from remix_ds.data.config import SourceConfig
from remix_ds.data.records import DataError


def _examples(name, release=None):
    out = []
    for i, row in enumerate(sources.rows(name, release)):
        kept = sources.project(name, row)
        assert set(kept) <= set(sources.SOURCES[name].fields)
        ex = REGISTRY[name].convert(kept, i, f"{name} row {i}")
        if ex is not None:
            out.append(ex)
    return out


def test_popqa_json_string_answers(monkeypatch):
    install_fake_hub(monkeypatch)
    ex = _examples("popqa")[0]
    assert ex.id == "popqa-4222362" and ex.answer == "politician"
    assert ex.aliases[:2] == ("politician", "political leader") and "George Rankin" in ex.prompt


def test_triviaqa_nested_answer(monkeypatch):
    install_fake_hub(monkeypatch)
    row = sources.project("triviaqa", HUB_ROWS["mandarjoshi/trivia_qa|rc.nocontext|train"][0])
    assert row["answer"] == {"value": "Sinclair Lewis", "aliases": ["(Harry) Sinclair Lewis", "Sinclair Lewis"]}
    ex = _examples("triviaqa")[1]
    assert (ex.id, ex.answer, ex.aliases) == ("triviaqa-tc_3", "York", ("York", "York, UK"))


def test_webqa_answers_list(monkeypatch):
    install_fake_hub(monkeypatch)
    ex = _examples("webqa")[0]
    assert ex.prompt == "what is the name of justin bieber brother?" and ex.answer == "Jazmyn Bieber"
    assert ex.aliases == ("Jazmyn Bieber", "Jaxon Bieber")


def test_ultrachat_turns(monkeypatch):
    install_fake_hub(monkeypatch)
    ex = _examples("ultrachat")[0]
    assert [m["role"] for m in ex.messages] == ["user", "assistant", "user", "assistant"]
    assert ex.messages[3]["content"] == "You are welcome."


def test_evolcode_fields(monkeypatch):
    install_fake_hub(monkeypatch)
    ex = _examples("evolcode")[1]
    assert ex.prompt == "Reverse a string in JavaScript." and ex.answer.startswith("const r")


def test_apps_reads_both_jsonl_files_without_the_script(monkeypatch):
    calls = []
    install_fake_hub(monkeypatch, calls=calls)
    exs = _examples("apps")
    assert [c[0] for c in calls] == ["json", "json"]  # the json builder, never codeparrot/apps' apps.py
    assert [c[2]["data_files"].rsplit("/", 1)[1] for c in calls] == ["train.jsonl", "test.jsonl"]
    assert [e.id for e in exs] == ["apps-0", "apps-2", "apps-4000"]  # competition and no-solution rows filtered
    assert "Use Call-Based format" in exs[1].prompt and "def add(a, b):" in exs[1].prompt
    assert "Use Standard Input format" in exs[0].prompt and exs[0].answer == "n=int(input())\nprint(n+1)"
    projected = sources.project("apps", HUB_ROWS["json|hf://datasets/codeparrot/apps@main/train.jsonl|train"][2])
    assert json.loads(projected["input_output"]) == {"fn_name": "add"}  # tests dropped: the file stays small


def test_gsm8k_full_solution(monkeypatch):
    install_fake_hub(monkeypatch)
    ex = _examples("gsm8k")[0]
    assert ex.answer.endswith("#### 72") and ex.aliases == ("72",)


def test_math_all_seven_subjects(monkeypatch):
    calls = []
    install_fake_hub(monkeypatch, calls=calls)
    exs = _examples("math")
    assert {c[0] for c in calls} == {"EleutherAI/hendrycks_math"} and len(calls) == 7
    assert len(exs) == 7 and exs[0].prompt.startswith("A algebra problem") and "\\boxed{2}" in exs[0].answer


def test_entityqa_release_zip(tmp_path):
    exs = _examples("entityqa", write_entityqa_zip(tmp_path / "dataset.zip"))
    # relations in id order, interleaved: a first-N selection covers every relation
    assert [e.id for e in exs] == ["entityqa-P17-0", "entityqa-P106-0", "entityqa-P17-1"]
    assert exs[1].answer == "politician" and exs[1].aliases == ("politician", "chemist")


def test_entityqa_release_folder(tmp_path):
    with zipfile.ZipFile(write_entityqa_zip(tmp_path / "dataset.zip")) as z:
        z.extractall(tmp_path / "unpacked")
    assert len(_examples("entityqa", tmp_path / "unpacked" / "dataset")) == 3


def test_lama_release_templates(tmp_path):
    exs = _examples("lama", write_lama_zip(tmp_path / "data.zip"))
    assert [(e.id, e.prompt, e.answer) for e in exs] == [
        ("lama-a1", "Jean Dupont was born in", "Paris"),
        ("lama-b1", "Paris is the capital of", "France"),
        ("lama-b2", "Berlin is the capital of", "Germany"),
    ]


def test_missing_release_names_what_to_download():
    with pytest.raises(sources.SourceMissing) as e:
        sources.rows("entityqa")
    msg = str(e.value)
    assert "\n" not in msg and "dataset.zip" in msg and "--from entityqa=" in msg


def test_corrupt_release_is_one_line(tmp_path):
    bad = tmp_path / "data.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(sources.SourceMissing) as e:
        list(sources.rows("lama", bad))
    assert "lama" in str(e.value) and "not a readable zip" in str(e.value) and "\n" not in str(e.value)


def test_hub_failure_names_the_source(monkeypatch):
    install_fake_hub(monkeypatch, rows={})
    with pytest.raises(DataError) as e:
        list(sources.rows("popqa"))
    assert "popqa" in str(e.value) and "akariasai/PopQA" in str(e.value)


def test_load_all_streams_and_stops(monkeypatch):
    """A first-N hub load pulls only what it needs (UltraChat is never materialized)."""
    import datasets

    pulled = []
    rows = [{"id": str(i), "data": [f"q{i}", f"a{i}"]} for i in range(5000)]

    def fake(path, name=None, *, split=None, streaming=False, **kw):
        assert streaming

        def gen():
            for r in rows:
                pulled.append(1)
                yield r
        return gen()

    monkeypatch.setattr(datasets, "load_dataset", fake)
    exs = load_all(SourceConfig(dataset="ultrachat", num_examples=10, subsample_seed=None))
    assert len(exs) == 10 and len(pulled) == 10
    pulled.clear()
    exs = load_all(SourceConfig(dataset="ultrachat", num_examples=10, subsample_seed=0))
    assert len(exs) == 5000 and len(pulled) == 5000  # bounded prefix (20,000) > the toy stream


# ---- offline: local copies of the hub repositories (`--from NAME=DIR`), and single data files


def _no_hub(monkeypatch):
    import datasets

    def refuse(*a, **k):
        raise AssertionError("a local copy must not touch the hub")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


def _projected(name, rows):
    return [sources.project(name, r) for r in rows]


@pytest.mark.parametrize("name", HUB_SETS)
def test_local_hub_copy_reads_the_same_rows_as_the_hub(tmp_path, monkeypatch, name):
    """The folder `huggingface-cli download --repo-type dataset HUB_ID --local-dir DIR` leaves: the same
    projected rows, in the same order, as streaming the hub (other configs, splits and scripts ignored)."""
    _no_hub(monkeypatch)
    folder = write_hub_copy(tmp_path / name, name)
    got = _projected(name, sources.rows(name, folder))
    want = _projected(name, hub_rows_of(name))
    if name == "popqa":  # a .tsv has no types: the id is the string of the hub's int
        want = [{**r, "id": str(r["id"])} for r in want]
    assert got == want and got
    exs = [REGISTRY[name].convert(r, i, "x") for i, r in enumerate(got)]
    hub = [REGISTRY[name].convert(r, i, "x") for i, r in enumerate(_projected(name, hub_rows_of(name)))]
    assert exs == hub  # the same Examples (ids, prompts, answers, aliases)


def test_popqa_tsv_single_file_keeps_json_string_answers(tmp_path, monkeypatch):
    _no_hub(monkeypatch)
    tsv = write_hub_copy(tmp_path / "popqa", "popqa") / "test.tsv"
    assert '"[""politician""' in tsv.read_text()  # quoted as pandas writes a field holding `"`
    ex = _examples("popqa", tsv)[0]
    assert ex.id == "popqa-4222362" and ex.aliases[:2] == ("politician", "political leader")


def test_math_original_release_subject_folders(tmp_path, monkeypatch):
    """MATH as released (MATH/train/SUBJECT/N.json, one problem per file) reads like the hub copy."""
    _no_hub(monkeypatch)
    for key, rows in HUB_ROWS.items():
        if key.startswith("EleutherAI/hendrycks_math|"):
            d = tmp_path / "MATH" / "train" / key.split("|")[1]
            d.mkdir(parents=True)
            for i, r in enumerate(rows):
                (d / f"{i + 10}.json").write_text(json.dumps(r, indent=4))
            (tmp_path / "MATH" / "test" / key.split("|")[1]).mkdir(parents=True)
    exs = _examples("math", tmp_path / "MATH")
    assert [e.prompt for e in exs] == [e.prompt for e in _examples_from_rows("math", hub_rows_of("math"))]


def _examples_from_rows(name, rows):
    return [REGISTRY[name].convert(sources.project(name, r), i, "x") for i, r in enumerate(rows)]


def test_local_copy_missing_files_is_one_line_naming_what_to_download(tmp_path, monkeypatch):
    _no_hub(monkeypatch)
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.SourceMissing) as e:
        list(sources.rows("triviaqa", tmp_path / "empty"))
    msg = str(e.value)
    assert "\n" not in msg and "rc.nocontext/train-*.parquet" in msg
    assert "huggingface-cli download --repo-type dataset mandarjoshi/trivia_qa" in msg and "--from triviaqa=" in msg


def test_bad_rows_in_local_files_name_file_and_line(tmp_path, monkeypatch):
    _no_hub(monkeypatch)
    folder = write_hub_copy(tmp_path / "apps", "apps")
    with (folder / "test.jsonl").open("a") as f:
        f.write('{"problem_id": 9, "question": "q"\n')
    with pytest.raises(DataError, match=r"test\.jsonl:2: malformed JSON line"):
        list(sources.rows("apps", folder))
    tsv = write_hub_copy(tmp_path / "popqa", "popqa") / "test.tsv"
    tsv.write_bytes(tsv.read_bytes() + b"1\tbad \xff byte\n")
    with pytest.raises(DataError, match=r"test\.tsv:5: not valid UTF-8"):
        list(sources.rows("popqa", tsv))


def test_hub_failure_says_what_to_download_and_where_to_point_from(monkeypatch):
    install_fake_hub(monkeypatch, rows={})
    with pytest.raises(DataError) as e:
        list(sources.rows("gsm8k"))
    msg = str(e.value)
    assert "\n" not in msg and "huggingface-cli download --repo-type dataset openai/gsm8k --local-dir DIR" in msg
    assert "--from gsm8k=DIR" in msg


def test_a_bad_row_inside_a_zip_is_named_by_member_and_line(tmp_path):
    """A LAMA fact without its object: the error names data.zip's member and the line, not a stream index."""
    from remix_ds.data import prepare

    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data/relations.jsonl", "".join(json.dumps(r) + "\n" for r in LAMA_RELATIONS))
        good = {"uuid": "a1", "obj_label": "Paris", "sub_label": "Jean Dupont"}
        z.writestr("data/TREx/P19.jsonl", json.dumps(good) + "\n" + json.dumps({"uuid": "a2", "sub_label": "X"}) + "\n")
    plan = prepare.SetPlan("lama", 0)
    with pytest.raises(DataError) as e:
        prepare.select_rows(plan, sources.rows("lama", path), None, 10_000)
    assert f"{path}:data/TREx/P19.jsonl:2" in str(e.value) and "obj_label" in str(e.value)


def test_non_utf8_inside_a_zip_names_member_and_line(tmp_path):
    path = tmp_path / "dataset.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("dataset/train/P17.train.json", b'[\n{"question": "q", "answers": ["a"]},\n{"question": "\xff"}\n]')
    with pytest.raises(DataError, match=r"dataset/train/P17\.train\.json:3: not valid UTF-8"):
        list(sources.rows("entityqa", path))
