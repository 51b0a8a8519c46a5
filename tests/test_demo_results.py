"""The README's demo numbers are the recorded run's (docs/demo_results.json), for the current demo.yaml.

The recorded file holds the rows of one real `remix-ds demo` run (one seed, default config) and the
95% CIs over factoids the report computed from its per-example files. Re-record both (and the
README table between the `demo-results` markers) when the demo's config or training changes.
"""

import hashlib
import json

import pytest

from helpers import REPO

RESULTS = REPO / "docs" / "demo_results.json"
BEGIN, END = "<!-- demo-results:begin -->", "<!-- demo-results:end -->"


def _ci(row: dict, m: str) -> str:
    return f"{row[m]:.3f} [{row[m + '_lo']:.3f}, {row[m + '_hi']:.3f}]"


def readme_table(recorded: dict) -> str:
    """The README's table, rendered from the recorded file."""
    ci = {(r["d_b"], r["strategy"]): r for r in recorded["summary"]}
    lines = ["| D_B | strategy | EM(D_A) stage 1 | EM(D_A) stage 2 [95% CI] | EM(D_B) [95% CI] | forgetting [95% CI] | "
             "stage-1 epochs | generic NLL change, stage 1 |", "|---|---|---|---|---|---|---|---|"]
    for r in recorded["rows"]:
        c = ci[(r["d_b"], r["strategy"])]
        lines.append(f"| {r['d_b']} | {r['strategy']} | {r['em_a_stage1']:.3f} | {_ci(c, 'em_a_stage2')} | "
                     f"{_ci(c, 'em_b_stage2')} | {_ci(c, 'forgetting')} | {r['stage1_epochs']:g} | "
                     f"{r['pres_s1_nll_change']:+.2f} |")
    return "\n".join(lines)


def test_readme_table_is_the_recorded_run():
    recorded = json.loads(RESULTS.read_text())
    readme = (REPO / "README.md").read_text()
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    quoted = readme.split(BEGIN)[1].split(END)[0].strip()
    assert quoted == readme_table(recorded)


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
    """Issue 20: the recorded demo (kvr_b learned by `none`, only replay significant) prints the toy-scale
    note; a significant random-mixing gain on a learned D_B, or none on an unlearned one, changes it."""
    from remix_ds.demo import toy_scale_note

    recorded = json.loads(RESULTS.read_text())
    note = toy_scale_note(recorded["rows"], recorded["comparisons"])
    assert note is not None and "only replay did" in note and "EM(D_B) >= 0.8" in note
    gain = {"d_a": "kvr_a", "d_b": "kvr_b", "strategy": "random@12", "significant": "yes", "diff": -0.3}
    assert toy_scale_note(recorded["rows"], recorded["comparisons"] + [gain]) is None
    on_unlearned = {**gain, "d_b": "generic_b"}  # none's EM(D_B) there is 0.0: not a learned D_B
    assert toy_scale_note(recorded["rows"], recorded["comparisons"] + [on_unlearned]) is not None
    assert "neither did" in toy_scale_note(recorded["rows"], [])
