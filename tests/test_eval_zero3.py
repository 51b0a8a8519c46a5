"""2-rank ZeRO-3 evaluation (real `deepspeed` launcher, CPU/gloo) == single-process evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from eval_tiny import kvr_examples, trained_model_dir  # noqa: E402

from remix_ds.eval.config import EvalConfig  # noqa: E402
from remix_ds.eval.runner import evaluate  # noqa: E402

pytestmark = pytest.mark.slow  # launches deepspeed / subprocesses

SCRIPT = str(Path(__file__).parent / "scripts" / "eval_zero3.py")


@pytest.fixture(scope="module")
def zero3_out(tmp_path_factory, run_deepspeed):
    model_dir = trained_model_dir()  # train (or load) once before the ranks start
    out = tmp_path_factory.mktemp("eval_zero3")
    run_deepspeed([SCRIPT, str(out), str(model_dir)], num_ranks=2, timeout=300)
    return out, model_dir


def _single(model_dir, cfg):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    return evaluate(model, tok, kvr_examples()[:39], cfg, 0, 1).rows


@pytest.mark.parametrize("variant, mode", [("engine_auto", "auto"), ("module_generate", "generate"),
                                           ("lockstep_generate", "generate")])
def test_zero3_rows_equal_single_process(zero3_out, variant, mode):
    out, model_dir = zero3_out
    dist_rows = json.loads((out / f"{variant}.json").read_text())
    single = _single(model_dir, EvalConfig(mode=mode, max_new_tokens=8))
    assert [r["id"] for r in dist_rows] == [r["id"] for r in single]
    assert [r["correct"] for r in dist_rows] == [r["correct"] for r in single]
    assert 0 < sum(r["correct"] for r in single) < len(single)
    assert [r["prediction"] for r in dist_rows] == [r["prediction"] for r in single]
    for a, b in zip(dist_rows, single):
        assert a["answer_nll"] == pytest.approx(b["answer_nll"], rel=1e-4, abs=1e-5)
        assert a["answer_logprob"] == pytest.approx(b["answer_logprob"], rel=1e-4, abs=1e-4)


def test_zero3_hook_same_metrics_on_all_ranks_and_restores_training(zero3_out):
    out, model_dir = zero3_out
    h0 = json.loads((out / "hook_rank0.json").read_text())
    h1 = json.loads((out / "hook_rank1.json").read_text())
    assert h0["metrics"] == h1["metrics"]
    single = _single(model_dir, EvalConfig())
    em = sum(r["correct"] for r in single) / len(single)
    assert h0["metrics"]["eval/kvr/em"] == pytest.approx(em)
    assert h0["train_before"] and h0["train_after"] and h1["train_after"]
    rows = [json.loads(line) for line in (out / "eval" / "step-7" / "kvr.jsonl").read_text().splitlines()]
    assert len(rows) == 39 and {"id", "prompt", "gold", "prediction", "correct", "answer_nll", "answer_logprob"} <= set(rows[0])
    assert json.loads((out / "eval" / "step-7" / "kvr.metrics.json").read_text())["step"] == 7
    # ZeRO-3 hooks are back after evaluation: same loss as before, and a training step still works.
    for r in (0, 1):
        t = json.loads((out / f"train_rank{r}.json").read_text())
        assert t["after"] == t["before"]
        assert t["stepped"] < t["before"]


def test_zero3_gradient_features_equal_single_process(zero3_out):
    """forgetting/similarity.py's projected LM-head gradients with every parameter partitioned."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remix_ds.eval.items import make_items
    from remix_ds.forgetting.similarity import lm_head_gradient_reference, lm_head_gradients

    out, model_dir = zero3_out
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    pairs = [(it.prompt_ids, it.answer_ids) for it in make_items(kvr_examples()[:11], tok)]
    one = lm_head_gradients(model, pairs, EvalConfig(), tok.pad_token_id or 0, dims=(8, 4), seed=3, batch_size=3)
    assert one.shape == (11, 32) and np.abs(one).max() > 1e-6
    assert one[4] == pytest.approx(lm_head_gradient_reference(model, *pairs[4], (8, 4), seed=3), rel=1e-4, abs=1e-7)
    for name in ("lockstep", "gathered"):
        assert np.load(out / f"grad_{name}.npy") == pytest.approx(one, rel=1e-4, abs=1e-6), name
