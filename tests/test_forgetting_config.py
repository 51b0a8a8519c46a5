"""Forgetting config: docstrings, errors that name the key, CLI wiring, task run configs, storage."""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import fields, is_dataclass

import numpy as np
import pytest

from remix_ds.configtools import ConfigError, field_docs
from remix_ds.forgetting.config import ForgettingConfig, load_forgetting_config


def test_every_field_has_a_docstring():
    checked = []

    def walk(cls):
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        checked.append(cls.__name__)
        for f in fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            for tp in (hints[f.name], *typing.get_args(hints[f.name])):
                if is_dataclass(tp) and tp.__name__ not in checked:
                    walk(tp)

    walk(ForgettingConfig)
    assert {"UpstreamConfig", "TaskConfig", "MeasureConfig", "AnalyzeConfig", "PredictConfig",
            "ReplayExperimentConfig", "RunConfig"} <= set(checked)


def test_defaults_and_overrides(tmp_path):
    cfg = load_forgetting_config(None, [])
    assert cfg.measure.lr == 2e-6 and cfg.measure.steps == 1000
    assert cfg.measure.intermediate_steps() == [100]
    assert cfg.predict.revealed == 30 and cfg.predict.rank == 5
    assert cfg.replay.ratio == 1 / 32 and cfg.replay.temperature == 0.1
    f = tmp_path / "f.yaml"
    f.write_text("tasks:\n  - {dataset: a.jsonl}\n  - {name: b2, dataset: kvr}\nmeasure:\n  steps: 50\n")
    cfg = load_forgetting_config(f, ["measure.at_fractions=[0.1, 0.5, 0.99]"])
    assert cfg.task_names() == ["a", "b2"] and cfg.measure.steps == 50
    assert cfg.measure.intermediate_steps() == [5, 25]  # 0.99 x 50 rounds to the final step: not intermediate


@pytest.mark.parametrize("overrides,match", [
    (["predict.bogus=1"], "predict.bogus"),
    (["tasks=[{dataset: kvr}, {dataset: kvr}]"], "duplicate task names"),
    (["tasks=[{name: 'a b', dataset: kvr}]"], r"tasks\[0\].name"),
    (["finetune.optim.lr=1e-5"], "set measure.lr"),
    (["finetune.train.max_steps=7"], "set measure.steps"),
    (["measure.at_fractions=[1.5]"], "measure.at_fractions"),
    (["predict.folds=1"], "predict.folds"),
    (["replay.arms=[none, none]"], "replay.arms"),
    (["replay.pool_fraction=1.0"], "replay.pool_fraction"),
    (["upstream.num_examples=1"], "upstream.num_examples"),
    (["upstream.source.num_examples=-1"], "upstream.source"),
])
def test_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_forgetting_config(None, overrides)


def test_study_folder_needs_its_config(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        load_forgetting_config(tmp_path)
    cfg = load_forgetting_config(None, ["measure.steps=9", f"output_dir={tmp_path}"])
    from remix_ds import configtools

    (tmp_path / "config.json").write_text(json.dumps(configtools.to_dict(cfg)))
    assert load_forgetting_config(tmp_path, ["predict.revealed=5"]).measure.steps == 9


def test_cli_subcommands_parse():
    from remix_ds.forgetting.commands import add_forgetting_command, run_analyze, run_measure, run_predict, run_replay

    parser = argparse.ArgumentParser()
    add_forgetting_command(parser.add_subparsers(dest="command"))
    for name, func in [("measure", run_measure), ("analyze", run_analyze), ("predict", run_predict),
                       ("replay-experiment", run_replay)]:
        args = parser.parse_args(["forgetting", name, "study.yaml", "measure.steps=3"])
        assert args.func is func and args.config == "study.yaml" and args.overrides == ["measure.steps=3"]


def test_task_run_config_uses_measure_settings(tmp_path):
    from remix_ds.data.config import ReplayConfig
    from remix_ds.forgetting.measure import task_run_config

    cfg = load_forgetting_config(None, ["tasks=[{dataset: t.jsonl, num_examples: 5, loss_mode: all}]",
                                        "measure.steps=40", "measure.lr=3e-4", "finetune.train.seed=4",
                                        "finetune.eval.datasets=[kvr]"])
    run = task_run_config(cfg, cfg.tasks[0], tmp_path / "r", eval_every=4,
                          replay=[ReplayConfig(dataset="pool.npz", ratio=0.5)])
    assert run.optim.lr == 3e-4 and run.train.max_steps == 40 and run.train.eval_every == 4
    assert run.train.resume == "none" and not run.train.export_final and run.train.seed == 4
    assert run.data.dataset == "t.jsonl" and run.data.num_examples == 5 and run.data.loss_mode == "all"
    assert run.data.replay[0].dataset == "pool.npz" and run.eval.datasets == []
    assert cfg.finetune.data.replay == [] and cfg.finetune.eval.datasets == ["kvr"]  # template untouched
    assert task_run_config(cfg, cfg.tasks[0], tmp_path / "r", seed=9).train.seed == 9
    if hasattr(cfg.finetune.train, "early_stop_metric"):  # rows always run the full measure.steps
        cfg.finetune.train.early_stop_metric = "eval/kvr/em"
        assert task_run_config(cfg, cfg.tasks[0], tmp_path / "r").train.early_stop_metric is None


def test_store_refuses_rows_measured_otherwise(tmp_path):
    from remix_ds.forgetting.store import MatrixStore, load_matrix

    store = MatrixStore(tmp_path)
    ids = [f"e{i}" for i in range(4)]
    store.save_base(ids, np.array([1.0, 2.0, 3.0, 4.0]), np.array([3, 3, 3, 3]), np.ones((4, 2)))
    settings = {"steps": 10, "lr": 1e-3}
    store.save_row("t1", settings, np.array([1.5, 2.0, 2.5, 4.5]), {5: np.array([1.2, 2.0, 2.8, 4.1])}, np.ones(2))
    mat = store.assemble({"t1": settings, "t2": settings}, {"steps": 10})
    assert mat.z[0] == pytest.approx([0.5, 0.0, -0.5, 0.5]) and np.isnan(mat.z[1]).all()
    assert mat.z_at[5][0] == pytest.approx([0.2, 0.0, -0.2, 0.1])
    assert mat.done.tolist() == [True, False]
    loaded = load_matrix(tmp_path)
    assert np.array_equal(loaded.z, mat.z, equal_nan=True) and loaded.task_names == ["t1", "t2"]
    assert loaded.finished().z.shape == (1, 4)
    meta = json.loads((tmp_path / "matrix.json").read_text())
    assert meta["example_ids"] == ids and meta["tasks"][1] == {"name": "t2", "done": False}
    with pytest.raises(ConfigError, match="other settings"):
        store.load_row("t1", {"steps": 10, "lr": 2e-3})
    with pytest.raises(ConfigError, match="another upstream set"):
        store.load_base(ids[::-1])
    assert not list(tmp_path.glob(".tmp-*")) and not list((tmp_path / "rows").glob(".tmp-*"))
