"""`remix-ds bench all --record`: the headline table in docs/benchmarks.md is what the recorded JSON
renders, every row against a named baseline, and missed goals / lost ratios say so."""

import argparse
import json
import statistics

import pytest

from helpers import REPO
from remix_ds.bench import record


def test_docs_table_is_the_recorded_json():
    recorded = json.loads((REPO / record.RESULTS).read_text())
    doc = (REPO / record.DOC).read_text()
    assert doc.count(record.BEGIN) == 1 and doc.count(record.END) == 1
    quoted = doc.split(record.BEGIN)[1].split(record.END)[0].strip()
    assert quoted == record.render(recorded), "docs/benchmarks.md's headline table was edited by hand: rerun " \
        "`remix-ds bench all --record` (or the parts that changed)"
    assert "**" not in quoted  # no bold headline: the numbers speak
    for r in recorded["rows"]:
        assert r["baseline"]["name"] and len(r["ours"]["values"]) == len(r["baseline"]["values"]) >= 1
        assert r["ours"]["min"] <= r["ours"]["median"] <= r["ours"]["max"]
        ratios = [o / b if r["higher_is_better"] else b / o for o, b in zip(r["ours"]["values"], r["baseline"]["values"])]
        assert r["ratio"]["values"] == pytest.approx(ratios) and r["ratio"]["median"] == statistics.median(ratios)
        assert r["machine"] and r["date"] and len(r["load_average"]) == 2


def _fake(id_, ours, base, goal=2.0, higher=True):
    return record.row(id_, f"metric {id_}", "setting", "tokens/s" if higher else "s", ("ours", ours), ("rival", base),
                      goal, higher_is_better=higher, load_before=1.0)


def test_row_ratios_are_per_repetition_and_losses_say_so():
    r = _fake("a", [10.0, 30.0, 20.0], [10.0, 10.0, 40.0])  # rates: ratios 1, 3, 0.5
    assert r["ratio"]["values"] == [1.0, 3.0, 0.5] and r["ratio"]["median"] == 1.0
    assert (r["ours"]["median"], r["ours"]["min"], r["ours"]["max"]) == (20.0, 10.0, 30.0)
    assert r["goal_met"] is False
    t = _fake("b", [1.0, 2.0], [3.0, 3.0], higher=False)  # times: baseline / ours
    assert t["ratio"]["values"] == [3.0, 1.5] and t["goal_met"] is True
    table = record.render({"command": "remix-ds bench all --record", "repeats": 3,
                           "machine": {"summary": "cpu", "short": "CPU, 2 cores"},
                           "rows": [{**_fake("c", [5.0], [10.0]), "machine": "CPU, 2 cores"}, {**t, "machine": "m"}]})
    lines = table.splitlines()
    assert "0.50x (baseline ahead)" in lines[-2] and ">= 2x: missed" in lines[-2] and "rival: 10" in lines[-2]
    assert "2.25x [1.50, 3.00]" in lines[-1] and ">= 2x: met" in lines[-1]


def test_record_merges_parts_and_rewrites_the_doc(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    doc = tmp_path / record.DOC
    doc.write_text(f"# B\n\nintro\n\n{record.BEGIN}\nold table\n{record.END}\n\nrest\n")
    monkeypatch.setattr(record, "RUNNERS", {**record.RUNNERS, "random_words": lambda n: [_fake("rw", [3.0] * n, [1.0] * n)],
                                             "stage": lambda n: [_fake("st", [1.0] * n, [2.0] * n)]})
    record.record(("random_words", "stage"), 2, root=tmp_path)
    first = json.loads((tmp_path / record.RESULTS).read_text())
    assert [r["id"] for r in first["rows"]] == ["rw", "st"] and first["errors"] == {}
    monkeypatch.setitem(record.RUNNERS, "stage", lambda n: [_fake("st", [9.0] * n, [1.0] * n)])
    rec = record.record(("stage",), 1, root=tmp_path)  # one part again: its row replaced, the other kept
    assert [r["id"] for r in rec["rows"]] == ["rw", "st"] and rec["rows"][1]["ratio"]["median"] == 9.0
    assert rec["rows"][0] == first["rows"][0]
    text = doc.read_text()
    assert text.startswith("# B\n\nintro\n\n") and text.endswith(f"{record.END}\n\nrest\n") and "old table" not in text
    assert text.split(record.BEGIN)[1].split(record.END)[0].strip() == record.render(rec)
    monkeypatch.setitem(record.RUNNERS, "stage", lambda n: 1 / 0)
    assert record.record(("stage",), 1, root=tmp_path)["errors"] == {"stage": "ZeroDivisionError: division by zero"}
    doc.write_text("no markers")
    with pytest.raises(SystemExit, match="bench-headline:begin"):
        record.record(("random_words",), 1, root=tmp_path)
    with pytest.raises(SystemExit, match="unknown part"):
        record.record(("nope",), 1, root=tmp_path)


def test_cli_bench_all_record_flags():
    from remix_ds.bench import add_bench_command

    parser = argparse.ArgumentParser()
    add_bench_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "all", "--record", "--record-parts", "loss,stage", "--record-repeats", "5"])
    assert args.record and args.record_parts == "loss,stage" and args.record_repeats == 5
