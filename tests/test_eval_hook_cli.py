"""The trainer's eval hook and `remix-ds eval`, single process, on the trained tiny KVR model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from eval_tiny import KVR, kvr_examples  # noqa: E402

from remix_ds.config import RunConfig  # noqa: E402
from remix_ds.configtools import ConfigError, from_dict  # noqa: E402
from remix_ds.engine.hooks import EvalHook  # noqa: E402
from remix_ds.eval.config import EvalConfig  # noqa: E402
from remix_ds.eval.data import parse_spec, set_label  # noqa: E402
from remix_ds.eval.hook import build_eval_hook, build_eval_hooks  # noqa: E402


@pytest.fixture(scope="module")
def kvr_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "kvr40.jsonl"
    path.write_text("".join(json.dumps({"id": e.id, "prompt": e.prompt, "answer": e.answer}) + "\n"
                            for e in kvr_examples()))
    return path


def test_hook_metrics_mode_and_files(trained_tiny, tmp_path):
    model, tok, _ = trained_tiny
    cfg = RunConfig()
    cfg.data.kvr = KVR
    cfg.data.subsample_seed = None  # generator order
    cfg.eval = EvalConfig(datasets=["kvr", "kvr:heldout"], sources=[], n=0)
    cfg.data.heldout_size = 10
    hook = build_eval_hook(cfg, tok, rank=0, world_size=1)
    model.train()
    metrics = hook(model, step=3, out_dir=tmp_path)
    assert model.training  # back in train mode
    assert set(metrics) == {f"eval/{s}/{k}" for s in ("kvr", "kvr-heldout") for k in ("em", "answer_nll", "answer_logprob")}
    train_rows = [json.loads(x) for x in (tmp_path / "step-3" / "kvr.jsonl").read_text().splitlines()]
    held_rows = [json.loads(x) for x in (tmp_path / "step-3" / "kvr-heldout.jsonl").read_text().splitlines()]
    assert [r["id"] for r in held_rows] == [e.id for e in kvr_examples()[:10]]
    assert [r["id"] for r in train_rows] == [e.id for e in kvr_examples()[10:]]
    assert metrics["eval/kvr/em"] == pytest.approx(sum(r["correct"] for r in train_rows) / 30)
    assert metrics["eval/kvr/answer_nll"] == pytest.approx(sum(r["answer_nll"] for r in train_rows) / 30)
    assert json.loads((tmp_path / "step-3" / "kvr.metrics.json").read_text())["step"] == 3
    model.eval()
    assert hook(model, step=4, out_dir=tmp_path) == metrics and not model.training  # eval mode kept too
    assert build_eval_hook(RunConfig(), tok, 0, 1) is None


def test_hook_setup_takes_the_trainers_tokenizer_rank_and_world(trained_tiny, tmp_path):
    """Under a Trainer the hook is built without a tokenizer; setup(trainer) binds the trainer's."""
    from types import SimpleNamespace

    model, tok, _ = trained_tiny
    cfg = RunConfig()
    cfg.data.kvr = KVR
    cfg.eval = EvalConfig(datasets=["kvr"], sources=[], n=8, write_rows=False)
    assert build_eval_hooks(RunConfig()) == []
    (hook,) = build_eval_hooks(cfg)
    assert isinstance(hook, EvalHook) and hook.tokenizer is None and len(hook.sets[0].examples) == 8
    hook.setup(SimpleNamespace(tokenizer=tok, rank=0, world=1))
    assert (hook.tokenizer, hook.rank, hook.world_size) == (tok, 0, 1)
    model.eval()
    assert hook(model, step=1, out_dir=tmp_path) == build_eval_hook(cfg, tok, 0, 1)(model, step=1, out_dir=tmp_path)


def test_cli_eval_writes_rows_and_metrics(trained_tiny, kvr_file, tmp_path, capsys):
    from remix_ds.cli import main

    _, _, model_dir = trained_tiny
    out = tmp_path / "out"
    assert main(["eval", str(model_dir), "--data", str(kvr_file), "--mode", "generate", "--out", str(out),
                 "--set", "eval.max_new_tokens=6", "--set", "eval.batch_size=8"]) == 0
    rows = [json.loads(x) for x in (out / "kvr40.jsonl").read_text().splitlines()]
    summary = json.loads((out / "metrics.json").read_text())["kvr40"]
    assert len(rows) == 40 and all(r["verdict"] == "generate" for r in rows)
    assert 0 < summary["em"] < 1 and summary["em"] == sum(r["correct"] for r in rows) / 40
    assert summary["fused_generate_agreement"] == 1.0
    assert "kvr40: em=" in capsys.readouterr().out
    assert main(["eval", str(model_dir), "--data", str(kvr_file), "--out", str(out), "--set", "eval.batch_size=0"]) == 2
    assert "eval.batch_size must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("spec, name, split, label", [
    ("kvr", "kvr", "train", "kvr"), ("popqa:heldout", "popqa", "heldout", "popqa-heldout"),
    ("data/x.jsonl", "data/x.jsonl", "train", "x"), ("C:/d/x.jsonl:heldout", "C:/d/x.jsonl", "heldout", "x-heldout"),
])
def test_set_specs(spec, name, split, label):
    assert parse_spec(spec) == (name, split)
    assert set_label(spec) == label


@pytest.mark.parametrize("data, message", [
    ({"mode": "beam"}, "eval.mode"), ({"max_new_tokens": 0}, "eval.max_new_tokens"),
    ({"datasets": ["kvr", "kvr"]}, "duplicates"), ({"max_seq_len": 512, "max_batch_tokens": 256}, "max_batch_tokens"),
])
def test_eval_config_validation(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(EvalConfig, data, prefix="eval")
