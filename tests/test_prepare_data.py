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
