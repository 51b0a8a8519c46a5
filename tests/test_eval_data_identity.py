"""`remix-ds eval` scores exactly the data a model was trained on, and every output says which set it scored.

Fast (in-process, the untrained tiny model): an exported folder with a recorded non-default KVR
variant is scored on that variant with no extra flags; `--data-config` / `--set data.*` select
the data as training does; the default fallback warns in one line. Slow: a real run's end-of-run
export and `remix-ds export RUN/checkpoint-N` both record the data settings.
"""

import json
import sys

import pytest

from helpers import REPO, run_cmd
from remix_ds import cli
from remix_ds.config import load_config
from remix_ds.data.config import KVRConfig, SourceConfig
from remix_ds.data.datasets import load_examples
from remix_ds.data.fingerprint import data_fingerprint, same_set, short, source_params
from remix_ds.engine.export import DATA_CONFIG_FILE, _save_folder


def test_fingerprint_names_the_set_not_its_order():
    kvr = KVRConfig(num_pairs=48, seed=3)
    examples = load_examples(SourceConfig(dataset="kvr"), kvr)
    fp = data_fingerprint("kvr", examples, source_params(SourceConfig(), kvr))
    assert fp["count"] == 48 and fp["params"]["kvr"]["num_pairs"] == 48 and len(fp["ids_sha256"]) == 64
    assert same_set(fp, data_fingerprint("kvr", list(reversed(examples))))
    assert same_set(fp, data_fingerprint("kvr", [e.id for e in examples]))  # ids only: no content to compare
    assert not same_set(fp, data_fingerprint("kvr", examples[:-1]))
    # another variant of the same size: same ids (kvr-0 ...), other pairs
    other = data_fingerprint("kvr", load_examples(SourceConfig(dataset="kvr"), KVRConfig(num_pairs=48, seed=4)))
    assert other["ids_sha256"] == fp["ids_sha256"] and not same_set(fp, other)
    assert short(fp) == f"kvr:48:{fp['content_sha256'][:12]}"


def _export(tiny_model, tiny_tokenizer, out, run_config=None):
    state = {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}
    return _save_folder(tiny_model.config, state, out, tokenizer_src=None, tokenizer=tiny_tokenizer,
                        run_config=run_config)


@pytest.fixture(scope="module")
def variant_model(tiny_model, tiny_tokenizer, tmp_path_factory):
    """A run trained (nominally) on KVR 48 pairs, seed 7, exported to a folder away from the run."""
    root = tmp_path_factory.mktemp("variant")
    run = root / "run"
    run.mkdir()
    cfg = load_config(None, ["data.kvr.num_pairs=48", "data.kvr.seed=7", f"train.output_dir={run}"])
    cfg.save(run / "config.json")
    model_dir = _export(tiny_model, tiny_tokenizer, root / "exported", run_config=run / "config.json")
    return cfg, run, model_dir


def _eval(argv, capsys):
    assert cli.main(["eval", *argv, "--mode", "fused"]) == 0
    return capsys.readouterr()


def test_exported_variant_is_scored_on_its_own_data(variant_model, tmp_path, capsys):
    cfg, run, model_dir = variant_model
    recorded = json.loads((model_dir / DATA_CONFIG_FILE).read_text())
    assert recorded["data"]["kvr"]["num_pairs"] == 48 and recorded["data"]["kvr"]["seed"] == 7
    out = tmp_path / "ev"
    err = _eval([str(model_dir), "--data", "kvr", "--out", str(out)], capsys).err
    assert "warning" not in err and f"data settings from {model_dir / DATA_CONFIG_FILE}" in err
    metrics = json.loads((out / "kvr.metrics.json").read_text())
    trained = load_examples(cfg.data.source(), cfg.data.kvr)
    assert metrics["n"] == 48
    assert same_set(metrics["data_fingerprint"], data_fingerprint("kvr", trained))
    assert metrics["data_fingerprint"]["params"]["kvr"]["seed"] == 7
    rows = [json.loads(line) for line in (out / "kvr.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in trained]
    assert {r["data_fingerprint"] for r in rows} == {short(metrics["data_fingerprint"])}


def test_default_fallback_says_so_in_one_line(tiny_model, tiny_tokenizer, tmp_path, capsys):
    model_dir = _export(tiny_model, tiny_tokenizer, tmp_path / "bare")
    assert not (model_dir / DATA_CONFIG_FILE).exists()
    err = _eval([str(model_dir), "--data", "kvr", "--n", "4", "--out", str(tmp_path / "ev")], capsys).err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "default data settings" in warnings[0]
    fp = json.loads((tmp_path / "ev" / "kvr.metrics.json").read_text())["data_fingerprint"]
    assert fp["count"] == 4 and fp["params"]["kvr"]["num_pairs"] == 2000


def test_data_config_and_dotted_overrides(variant_model, tiny_model, tiny_tokenizer, tmp_path, capsys):
    cfg, run, _ = variant_model
    bare = _export(tiny_model, tiny_tokenizer, tmp_path / "bare")
    # a run folder as --data-config, plus a data.* override on top
    _eval([str(bare), "--data", "kvr", "--data-config", str(run), "--set", "data.kvr.num_pairs=12",
           "--out", str(tmp_path / "a")], capsys)
    fp = json.loads((tmp_path / "a" / "kvr.metrics.json").read_text())["data_fingerprint"]
    want = load_examples(cfg.data.source(), KVRConfig(num_pairs=12, seed=7))
    assert fp["count"] == 12 and same_set(fp, data_fingerprint("kvr", want))
    # a local file through data.dataset: the stage dataset's own settings (num_examples) apply
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"id": f"f{i}", "prompt": f"Q{i}?", "answer": f"A{i}"}) + "\n" for i in range(9)))
    _eval([str(bare), "--data", str(data), "--set", f"data.dataset={data}", "--set", "data.num_examples=5",
           "--out", str(tmp_path / "b")], capsys)
    fp = json.loads((tmp_path / "b" / "facts.metrics.json").read_text())["data_fingerprint"]
    assert fp["count"] == 5 and fp["params"]["num_examples"] == 5


def test_bad_data_override_is_one_line(variant_model, capsys):
    _, _, model_dir = variant_model
    assert cli.main(["eval", str(model_dir), "--data", "kvr", "--set", "data.kvr.num_pairz=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("remix-ds: config error:") and "num_pairz" in err and "\n" not in err


@pytest.mark.slow
def test_real_exports_record_the_training_data(tmp_path):
    """End-of-run export and `remix-ds export RUN/checkpoint-N` both carry the run's KVR variant."""
    run = tmp_path / "run"
    run_cmd([sys.executable, "-m", "remix_ds.train", str(REPO / "configs/tiny.yaml"), f"train.output_dir={run}",
             "data.kvr.num_pairs=8", "data.kvr.seed=5", "train.global_batch_size=8", "train.micro_batch_size=8",
             "train.max_steps=2", "train.save_every=2", "train.progress_bar=false"])
    for folder in (run / "final", tmp_path / "exported"):
        if folder.name == "exported":
            run_cmd([sys.executable, "-m", "remix_ds.cli", "export", str(run / "checkpoint-2"), str(folder)])
        assert json.loads((folder / DATA_CONFIG_FILE).read_text())["data"]["kvr"]["num_pairs"] == 8
    out = tmp_path / "ev"
    run_cmd([sys.executable, "-m", "remix_ds.cli", "eval", str(tmp_path / "exported"), "--data", "kvr",
             "--out", str(out)])
    fp = json.loads((out / "kvr.metrics.json").read_text())["data_fingerprint"]
    trained = load_examples(SourceConfig(dataset="kvr"), KVRConfig(num_pairs=8, seed=5))
    assert same_set(fp, data_fingerprint("kvr", trained)) and fp["count"] == 8


def test_preservation_check_refuses_different_sets():
    from remix_ds.data.records import DataError, Example
    from remix_ds.experiments import preserve

    task = [Example(id=f"t{i}", source="x", prompt=f"p{i}", answer="a") for i in range(3)]
    m = {"nll": [1.0, 2.0], "continuations": [[1], [2]], "eos": [True, False], "task_eos": [True],
         "passages_fingerprint": data_fingerprint("preserve-passages", ["preserve-0", "preserve-1"]),
         "task_fingerprint": data_fingerprint("preserve-task", task)}
    d = preserve.compare(m, dict(m, nll=[2.0, 3.0]))
    assert d["nll_change"] == 1.0 and d["task_fingerprint"]["count"] == 3
    with pytest.raises(DataError, match="different sets"):
        preserve.compare(m, dict(m, task_fingerprint=data_fingerprint("preserve-task", task[:2])))
