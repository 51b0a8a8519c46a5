"""`remix-ds prepare-data` end to end on fixtures shaped like the real sources (no network)."""

import json

import pytest
import yaml
from source_fixtures import install_fake_hub, write_entityqa_zip, write_lama_zip

from remix_ds import cli
from remix_ds.data import prepare
from remix_ds.data.datasets import REGISTRY
from remix_ds.data.records import read_rows

ALL = ["popqa", "triviaqa", "webqa", "lama", "entityqa", "ultrachat", "evolcode", "apps", "gsm8k", "math"]


def _grid(tmp_path, n=2, seed=None, max_seq_len=256):
    cfg = {
        "output_dir": str(tmp_path / "grid"),
        "run": {"model": {"name_or_path": "tiny"}, "data": {"max_seq_len": max_seq_len}},
        "data_a": [{"name": "kvr", "dataset": "kvr", "num_examples": 8},
                   {"name": "popqa", "dataset": "popqa", "num_examples": n, "subsample_seed": seed},
                   {"name": "triviaqa", "dataset": "triviaqa", "num_examples": n, "subsample_seed": seed}],
        "data_b": [{"name": d, "dataset": d, "num_examples": n, "subsample_seed": seed} for d in ALL[2:]],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def releases(tmp_path):
    return ["--from", f"entityqa={write_entityqa_zip(tmp_path / 'dataset.zip')}",
            "--from", f"lama={write_lama_zip(tmp_path / 'data.zip')}"]


def test_prepare_data_end_to_end_then_resume(tmp_path, monkeypatch, releases, capsys):
    install_fake_hub(monkeypatch)
    out = tmp_path / "data"
    argv = ["prepare-data", str(_grid(tmp_path)), "--out", str(out), "--no-progress", *releases]
    assert cli.main(argv) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["sets"]) == sorted(ALL)  # kvr is generated: nothing to download
    for name, e in m["sets"].items():
        rows = read_rows(out / e["file"])
        c = e["counts"]
        assert c["kept"] == len(rows) == 2 or (e["short"] and c["kept"] == len(rows) < 2), name
        assert c["loaded"] == c["filtered"] + c["too_long"] + c["fit"], name
        assert e["sha256"] == prepare.sha256_file(out / e["file"])
        for i, r in enumerate(rows):  # exactly the loader's fields, and the loader reads them back
            assert set(r) <= set(e["fields"])
            assert REGISTRY[name].convert(r, i, f"{name} row {i}") is not None
    # the long PopQA question does not fit max_seq_len=256: dropped and counted
    assert m["sets"]["popqa"]["counts"] == {"loaded": 2, "filtered": 0, "too_long": 0, "fit": 2, "kept": 2}
    assert m["sets"]["apps"]["counts"]["filtered"] == 1  # the competition row, before the first 2 that fit
    assert m["sets"]["entityqa"]["source"]["kind"] == "release"
    assert m["sets"]["entityqa"]["source"]["sha256"] == prepare.sha256_file(tmp_path / "dataset.zip")
    assert m["sets"]["math"]["source"]["hub_id"] == "EleutherAI/hendrycks_math"
    table = capsys.readouterr().out
    assert "built" in table and "skipped" not in table
    before = (out / "manifest.json").read_text()

    assert cli.main(argv) == 0  # resume: every set matches its entry
    assert (out / "manifest.json").read_text() == before
    table = capsys.readouterr().out
    assert all(f"{name:<14}skipped" in table for name in ALL)

    (out / "gsm8k.jsonl").write_text("{}\n")  # a damaged file is rebuilt
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "gsm8k         skipped" not in table and "webqa         skipped" in table
    assert prepare.sha256_file(out / "gsm8k.jsonl") == json.loads(before)["sets"]["gsm8k"]["sha256"]


def test_too_long_rows_are_dropped_and_counted(tmp_path, monkeypatch):
    install_fake_hub(monkeypatch)
    out = tmp_path / "data"
    assert cli.main(["prepare-data", str(_grid(tmp_path, n=3)), "--out", str(out), "--no-progress", "--only", "popqa"]) == 0
    e = json.loads((out / "manifest.json").read_text())["sets"]["popqa"]
    assert e["counts"] == {"loaded": 3, "filtered": 0, "too_long": 1, "fit": 2, "kept": 2} and e["short"]
    assert [r["id"] for r in read_rows(out / "popqa.jsonl")] == [4222362, 1936]


def test_seeded_selection_is_recorded_and_reproducible(tmp_path, monkeypatch):
    install_fake_hub(monkeypatch)
    grid = _grid(tmp_path, n=1, seed=7)
    outs = []
    for k in range(2):
        out = tmp_path / f"data{k}"
        assert cli.main(["prepare-data", str(grid), "--out", str(out), "--no-progress", "--only", "math"]) == 0
        outs.append(json.loads((out / "manifest.json").read_text())["sets"]["math"])
    assert outs[0]["selection"] == {"mode": "seeded", "take": 1, "seed": 7, "prefix_rows": 20000}
    assert outs[0]["counts"]["fit"] == 7 and outs[0]["counts"]["kept"] == 1
    assert outs[0]["sha256"] == outs[1]["sha256"]


def test_missing_release_is_one_line(tmp_path, monkeypatch, capsys):
    install_fake_hub(monkeypatch)
    assert cli.main(["prepare-data", str(_grid(tmp_path)), "--out", str(tmp_path / "d"), "--no-progress", "--only", "lama"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("remix-ds: error: lama:") and "--from lama=" in err


def test_corrupt_release_is_one_line(tmp_path, monkeypatch, capsys):
    install_fake_hub(monkeypatch)
    bad = tmp_path / "dataset.zip"
    bad.write_text("<html>404 Not Found</html>")
    argv = ["prepare-data", str(_grid(tmp_path)), "--out", str(tmp_path / "d"), "--no-progress", "--only", "entityqa",
            "--from", f"entityqa={bad}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "entityqa" in err and str(bad) in err


def test_unreachable_hub_source_is_one_line(tmp_path, monkeypatch, capsys):
    install_fake_hub(monkeypatch, rows={})
    assert cli.main(["prepare-data", str(_grid(tmp_path)), "--out", str(tmp_path / "d"), "--no-progress", "--only", "webqa"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "webqa" in err and "stanfordnlp/web_questions" in err


def test_experiment_reads_data_dir_and_records_the_manifest(tmp_path, monkeypatch, releases):
    from remix_ds.experiments import datasets as exp_datasets
    from remix_ds.experiments.config import load_experiment

    install_fake_hub(monkeypatch)
    out = tmp_path / "data"
    grid = _grid(tmp_path)
    assert cli.main(["prepare-data", str(grid), "--out", str(out), "--no-progress", *releases]) == 0
    cfg = load_experiment(grid, [f"data_dir={out}"])
    spec = exp_datasets.resolve_spec(cfg.data_b[0], cfg.data_dir, stage_a=False, require_filtered=False)
    assert spec.data_files == str(out / "webqa.jsonl")
    kvr = exp_datasets.resolve_spec(cfg.data_a[0], cfg.data_dir, stage_a=True, require_filtered=True)
    assert kvr.dataset == "kvr"  # generated: require_filtered does not apply
    from remix_ds.data.records import DataError

    with pytest.raises(DataError, match="popqa.*no yet-to-learn file.*filter-known"):
        exp_datasets.resolve_spec(cfg.data_a[1], cfg.data_dir, stage_a=True, require_filtered=True)
    from remix_ds.experiments.grid import Grid

    g = Grid(cfg, log=lambda *a: None)
    monkeypatch.setattr(exp_datasets, "materialize", lambda specs, *a: {s.name: s.data_files or s.dataset for _, s in specs})
    g.prepare()
    assert g.data_manifest_sha256 == prepare.sha256_file(out / "manifest.json")
    assert g.paths["webqa"] == str(out / "webqa.jsonl") and g.paths["lama"] == str(out / "lama.jsonl")


def test_build_shards_document_cap_and_min_words(tmp_path, tiny_tokenizer, monkeypatch):
    """Generic corpora: the first N hub documents, those under min_words skipped (the reference's 20,000 / 100)."""
    docs = [{"content": " ".join(["word"] * (5 if i % 3 == 0 else 12)), "id": i} for i in range(50)]
    install_fake_hub(monkeypatch, rows={"Query-of-CC/Knowledge_Pile|None|train": docs})
    entry, skipped = prepare.prepare_generic("knowledge-pile", tmp_path, tiny_tokenizer, tokenizer_name="tiny",
                                             max_documents=30, min_words=10, progress=False)
    assert not skipped and entry["counts"] == {"loaded": 30, "too_short": 10, "kept": 20}
    shards = json.loads((tmp_path / "generic" / "knowledge-pile" / "manifest.json").read_text())
    assert shards["num_documents"] == 20 and shards["max_documents"] == 30 and shards["skipped_short"] == 10
    again, skipped = prepare.prepare_generic("knowledge-pile", tmp_path, tiny_tokenizer, tokenizer_name="tiny",
                                             max_documents=30, min_words=10, manifest={"generic": {"knowledge-pile": entry}},
                                             progress=False)
    assert skipped and again == entry


# ---- offline: every source from a local copy, data_files sets, --only, one-line failures


def _refuse_hub(monkeypatch):
    import datasets

    def refuse(*a, **k):
        raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)\nsecond line of a long trace")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


def test_every_source_builds_offline_from_local_copies(tmp_path, monkeypatch, releases, capsys):
    """`--from NAME=DIR` for the 8 hub sets (the folders huggingface-cli leaves) plus the two releases: the same
    files, byte for byte, as the build that streamed the hub."""
    from source_fixtures import HUB_SETS, write_hub_copy

    install_fake_hub(monkeypatch)
    online = tmp_path / "online"
    argv = ["prepare-data", str(_grid(tmp_path)), "--no-progress", *releases]
    assert cli.main([*argv, "--out", str(online)]) == 0
    _refuse_hub(monkeypatch)
    offline = tmp_path / "offline"
    local = [a for name in HUB_SETS for a in ("--from", f"{name}={write_hub_copy(tmp_path / 'hub' / name, name)}")]
    assert cli.main([*argv, "--out", str(offline), *local]) == 0
    m_on, m_off = (json.loads((d / "manifest.json").read_text()) for d in (online, offline))
    assert sorted(m_off["sets"]) == sorted(ALL)
    for name in ALL:
        on, off = m_on["sets"][name], m_off["sets"][name]
        assert off["counts"] == on["counts"], name
        got, want = read_rows(offline / off["file"]), read_rows(online / on["file"])
        if name == "popqa":  # a .tsv is untyped: the id arrives as a string
            want = [{**r, "id": str(r["id"])} for r in want]
        assert got == want, name
    assert m_off["sets"]["popqa"]["source"] == {"kind": "local", "path": str(tmp_path / "hub" / "popqa"),
                                                "sha256": prepare.sha256_release(tmp_path / "hub" / "popqa",
                                                                                 [tmp_path / "hub" / "popqa" / "test.tsv"])}


def test_a_data_files_set_is_built_and_trained_from_data_dir(tmp_path, monkeypatch, capsys):
    from source_fixtures import write_hub_copy

    from remix_ds.experiments import datasets as exp_datasets
    from remix_ds.experiments.config import load_experiment

    _refuse_hub(monkeypatch)
    tsv = write_hub_copy(tmp_path / "hub", "popqa") / "test.tsv"
    cfg = {"output_dir": str(tmp_path / "grid"), "run": {"model": {"name_or_path": "tiny"}, "data": {"max_seq_len": 256}},
           "data_a": [{"name": "popqa", "dataset": "popqa", "data_files": str(tsv), "num_examples": 2, "subsample_seed": None}],
           "data_b": [{"name": "kvr", "dataset": "kvr", "num_examples": 4}]}
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "data"
    assert cli.main(["prepare-data", str(grid), "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "popqa         built" in table
    m = json.loads((out / "manifest.json").read_text())
    assert m["sets"]["popqa"]["counts"]["kept"] == 2 and m["sets"]["popqa"]["source"]["path"] == str(tsv)
    assert [r["id"] for r in read_rows(out / "popqa.jsonl")] == ["4222362", "1936"]  # the first 2 rows of test.tsv
    spec = exp_datasets.resolve_spec(load_experiment(grid, [f"data_dir={out}"]).data_a[0], str(out), stage_a=True,
                                     require_filtered=False)
    assert spec.data_files == str(out / "popqa.jsonl")  # trained on the prepared rows


def test_only_names_are_checked_and_limit_the_generic_corpus(tmp_path, monkeypatch, capsys):
    install_fake_hub(monkeypatch, rows={**__import__("source_fixtures").HUB_ROWS})
    grid = _grid(tmp_path)
    cfg = yaml.safe_load(grid.read_text())
    cfg["run"]["data"]["mix"] = {"generic_corpus": str(tmp_path / "data" / "generic" / "knowledge-pile")}
    grid.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "data"
    assert cli.main(["prepare-data", str(grid), "--out", str(out), "--no-progress", "--only", "popqaa"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--only popqaa: not a set or corpus" in err and "popqa" in err and "knowledge-pile" in err
    assert not (out / "manifest.json").exists()
    # --only popqa builds popqa and not the corpus (whose hub stream the fake hub does not have)
    assert cli.main(["prepare-data", str(grid), "--out", str(out), "--no-progress", "--only", "popqa"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["sets"]) == ["popqa"] and m["generic"] == {}


def test_generic_corpus_offline_one_line_then_from_a_local_copy(tmp_path, monkeypatch, capsys):
    _refuse_hub(monkeypatch)
    grid = _grid(tmp_path)
    argv = ["prepare-data", str(grid), "--out", str(tmp_path / "data"), "--no-progress", "--only", "knowledge-pile",
            "--generic", "knowledge-pile", "--min-words", "10"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "generic:knowledge-pile: cannot stream Query-of-CC/Knowledge_Pile" in err
    assert "huggingface-cli download --repo-type dataset Query-of-CC/Knowledge_Pile --local-dir DIR" in err
    assert "--from knowledge-pile=DIR" in err
    copy = tmp_path / "kp"
    (copy / "data").mkdir(parents=True)
    (copy / "README.md").write_text("# Knowledge Pile\n" + "not a document " * 20)
    (copy / ".cache").mkdir()
    (copy / ".cache" / "x.json").write_text("{}")
    for k in (0, 1):
        (copy / "data" / f"part-{k}.jsonl").write_text(
            "".join(json.dumps({"content": " ".join([f"w{k}{i}"] * (4 if i == 0 else 12))}) + "\n" for i in range(5)))
    assert cli.main([*argv, "--from", f"knowledge-pile={copy}"]) == 0
    g = json.loads((tmp_path / "data" / "manifest.json").read_text())["generic"]["knowledge-pile"]
    assert g["counts"] == {"loaded": 10, "too_short": 2, "kept": 8}  # README.md and .cache/ are not documents
    assert g["local"]["path"] == str(copy)


def test_gated_tokenizer_is_one_line_saying_what_to_download(tmp_path, monkeypatch, capsys):
    from remix_ds.experiments import prepare_cli

    def gated(name, *a, **k):
        raise OSError("You are trying to access a gated repo.\nMake sure to have access to it at https://huggingface.co/x")

    monkeypatch.setattr(prepare_cli, "load_tokenizer", gated)
    argv = ["prepare-data", str(_grid(tmp_path)), "--out", str(tmp_path / "d"), "--no-progress", "--only", "popqa",
            "--tokenizer", "meta-llama/Meta-Llama-3-8B"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot load the tokenizer 'meta-llama/Meta-Llama-3-8B'" in err
    assert "huggingface-cli download meta-llama/Meta-Llama-3-8B --include 'tokenizer*'" in err and "--tokenizer DIR" in err


def test_unknown_from_name_is_refused(tmp_path, monkeypatch, capsys):
    install_fake_hub(monkeypatch)
    assert cli.main(["prepare-data", str(_grid(tmp_path)), "--out", str(tmp_path / "d"), "--from", "popq=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown source 'popq'" in err
