"""The README's demo numbers are the recorded run's (docs/demo_results.json), for the current demo.yaml.

The recorded file holds the rows of one real `remix-ds demo` run (one seed, default config), the
95% CIs over factoids the report computed from its per-example files, and what the numbers depend on
besides the code (the lock's and the built-in corpus's sha256, Python, torch). `remix-ds demo --record`
from the repository root re-records it and the README table between the `demo-results` markers;
do that when the demo's config, training or the lock changes.
"""

import hashlib
import json
import platform

import pytest

from remix_ds import demo
from remix_ds.data import corpus
from helpers import REPO

RESULTS = REPO / "docs" / "demo_results.json"
BEGIN, END = demo.README_BEGIN, demo.README_END


def test_readme_table_is_the_recorded_run():
    recorded = json.loads(RESULTS.read_text())
    readme = (REPO / "README.md").read_text()
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    quoted = readme.split(BEGIN)[1].split(END)[0].strip()
    assert quoted == demo.readme_table(recorded)


def test_recorded_run_is_for_this_lock_corpus_python_and_torch():
    """The table depends on the code, the lock and the shipped corpus only; the record says which."""
    recorded = json.loads(RESULTS.read_text())
    assert recorded["lock_sha256"] == hashlib.sha256((REPO / demo.LOCK_FILE).read_bytes()).hexdigest(), (
        f"{demo.LOCK_FILE} changed since docs/demo_results.json was recorded: run `remix-ds demo --record` from the root")
    assert recorded["corpus_sha256"] == corpus.BUILTIN_SHA256
    lock_torch = next(l.split("==")[1] for l in (REPO / demo.LOCK_FILE).read_text().splitlines() if l.startswith("torch=="))
    assert recorded["torch"].split("+")[0] == lock_torch
    assert recorded["python"].rsplit(".", 1)[0] == "3.11"


def test_record_writes_the_json_and_the_readme_table(tmp_path, monkeypatch):
    """`remix-ds demo --record`: the run's rows, CIs and comparisons with their provenance, and the README table."""
    recorded = json.loads(RESULTS.read_text())
    out = tmp_path / "runs"
    out.mkdir()
    (out / "results.json").write_text(json.dumps([{**r, "stage1_wall_s": 1.0} for r in recorded["rows"]]))
    (out / "results_summary.json").write_text(json.dumps({"summary": recorded["summary"], "comparisons": recorded["comparisons"]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold table\n{END}\nrest\n")
    monkeypatch.chdir(REPO)
    got = demo.record(out, tmp_path / "docs" / "demo_results.json", readme)
    assert json.loads((tmp_path / "docs" / "demo_results.json").read_text()) == got
    assert got["rows"] == [{k: r[k] for k in demo.ROW_KEYS if k in r} for r in recorded["rows"]]
    assert got["summary"] == recorded["summary"] and got["date"] and got["commit"]
    assert got["lock_sha256"] == hashlib.sha256((REPO / demo.LOCK_FILE).read_bytes()).hexdigest()
    assert got["corpus_sha256"] == corpus.BUILTIN_SHA256 and got["python"] == platform.python_version()
    assert readme.read_text() == f"intro\n{BEGIN}\n{demo.readme_table(recorded)}\n{END}\nrest\n"
    with pytest.raises(Exception, match="--record records the default demo only"):
        demo.run(None, ["stage2.epochs=1"], record_to="x.json")


def test_recorded_run_is_for_the_current_demo_config():
    recorded = json.loads(RESULTS.read_text())
    assert recorded["demo_yaml_sha256"] == hashlib.sha256((REPO / "remix_ds" / "demo.yaml").read_bytes()).hexdigest(), (
        "remix_ds/demo.yaml changed since docs/demo_results.json was recorded: rerun `remix-ds demo` and re-record")
    assert recorded["command"] == "remix-ds demo" and len(recorded["rows"]) == 8
    for r in recorded["rows"]:  # the rows are a real table: forgetting = EM stage 1 - EM stage 2, CIs hold the means
        assert r["status"] == "done" and r["forgetting"] == pytest.approx(r["em_a_stage1"] - r["em_a_stage2"])
    for c in recorded["summary"]:
        for m in ("em_a_stage1", "em_a_stage2", "em_b_stage2", "forgetting"):
            assert c[m + "_lo"] <= c[m] <= c[m + "_hi"]
        row = next(r for r in recorded["rows"] if (r["d_b"], r["strategy"]) == (c["d_b"], c["strategy"]))
        assert c["forgetting"] == pytest.approx(row["forgetting"]) and c["em_b_stage2"] == pytest.approx(row["em_b_stage2"])


def test_demo_seeds_option_runs_the_seed_axis():
    from remix_ds.cli import build_parser
    from remix_ds.configtools import ConfigError
    from remix_ds.demo import DEMO_CONFIG, seeds_override
    from remix_ds.experiments.config import load_experiment
    from remix_ds.experiments.grid import Grid

    args = build_parser().parse_args(["demo", "--seeds", "3"])
    assert args.seeds == 3 and seeds_override(args.seeds) == ["seeds=[0,1,2]"] and seeds_override(1) == []
    cells = Grid(load_experiment(DEMO_CONFIG, seeds_override(3))).cells()
    assert len(cells) == 24 and [c.seed for c in cells[::8]] == [0, 1, 2]
    assert cells[8].key == "kvr_a__kvr_b__none__s1" and cells[8].stage1_key == "kvr_a__plain__s1"
    assert Grid(load_experiment(DEMO_CONFIG)).cells()[0].key == "kvr_a__kvr_b__none"  # default: one seed, as recorded
    with pytest.raises(ConfigError, match="--seeds"):
        seeds_override(0)



def test_the_demo_says_whether_mixing_beat_none_beyond_noise():
    """The recorded demo (`none` learned neither D_B to 0.8, replay significant) says it cannot compare
    mixing at equal learning; where `none` learned kvr_b, only replay significant gives the toy-scale note,
    and a significant random-mixing gain on a learned D_B (not on an unlearned one) changes it."""
    from remix_ds.demo import toy_scale_note

    recorded = json.loads(RESULTS.read_text())
    note = toy_scale_note(recorded["rows"], recorded["comparisons"])
    assert "learned no D_B to EM(D_B) >= 0.8" in note and "replay kept D_A significantly better" in note
    no_replay = [c for c in recorded["comparisons"] if "replay" not in c["strategy"]]
    assert "no strategy kept D_A" in toy_scale_note(recorded["rows"], no_replay)

    rows = [{**r, "em_b_stage2": 0.9} if (r["d_b"], r["strategy"]) == ("kvr_b", "none") else r for r in recorded["rows"]]
    note = toy_scale_note(rows, recorded["comparisons"])
    assert note is not None and "only replay did" in note and "EM(D_B) >= 0.8" in note
    gain = {"d_a": "kvr_a", "d_b": "kvr_b", "strategy": "random@12", "significant": "yes", "diff": -0.3}
    assert toy_scale_note(rows, recorded["comparisons"] + [gain]) is None
    on_unlearned = {**gain, "d_b": "generic_b"}  # none's EM(D_B) there is 0.125: not a learned D_B
    assert toy_scale_note(rows, recorded["comparisons"] + [on_unlearned]) is not None
    assert "neither did" in toy_scale_note(rows, [])
