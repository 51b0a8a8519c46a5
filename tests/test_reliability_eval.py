"""Fault injection for the evaluator (issue 15, item 2): no entry point can hang.

Under 2-rank ZeRO-3 (real `deepspeed` launcher, CPU/gloo): 21 examples (11 / 10 per rank, so
unequal fused passes and generate calls), `evaluate(engine)` and `evaluate(engine.module)`, two
evaluations in a row after a training step, then gathered vs partitioned on the same weights.
Before the fix the second evaluation deadlocked (rank 0 in DeepSpeed's `reset_step` broadcast,
rank 1 in the rows' all_gather_object); the launcher runs under a hard timeout, so a hang fails
the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from eval_tiny import trained_model_dir  # noqa: E402
from helpers import REPO, deepspeed_cmd  # noqa: E402

pytestmark = pytest.mark.slow  # launches deepspeed

SCRIPT = str(Path(__file__).parent / "scripts" / "eval_hang_probe.py")
TIMEOUT_S = 420


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    model_dir = trained_model_dir()
    out = tmp_path_factory.mktemp("eval_hang")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # Own process group, so a hang kills the launcher *and* both ranks.
    proc = subprocess.Popen(deepspeed_cmd([SCRIPT, str(out), str(model_dir)], 2), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"2-rank evaluation hung (killed after {TIMEOUT_S}s):\n{log[-4000:]}")
    assert proc.returncode == 0, log[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


VARIANTS = ["engine_auto", "module_auto", "engine_generate", "module_generate", "engine_lockstep"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_back_to_back_evaluations_after_a_step_agree_on_all_ranks(probe, variant):
    r0, r1 = probe[0]["variants"][variant], probe[1]["variants"][variant]
    rows_a, rows_b = r0["rows"]
    assert [r["id"] for r in rows_a] == [f"kvr-{i}" for i in range(21)]
    assert rows_a == rows_b  # second evaluation in a row: same rows, bit for bit
    assert r1["rows"] == [[], []]
    assert r0["metrics"][0] == r0["metrics"][1] == r1["metrics"][0] == r1["metrics"][1]
    assert r0["metrics"][0]["n"] == 21.0
    assert r0["training_after"] and r1["training_after"]


def test_ranks_really_ran_unequal_work(probe):
    r0, r1 = (p["variants"] for p in probe)
    assert (r0["engine_generate"]["n_generate"], r1["engine_generate"]["n_generate"]) == (2, 1)
    assert (r0["engine_auto"]["n_fused"], r1["engine_auto"]["n_fused"]) == (2, 1)


def test_gathered_and_partitioned_agree_and_training_continues(probe):
    gathered, partitioned = probe[0]["same_weights"]
    assert [r["correct"] for r in gathered] == [r["correct"] for r in partitioned]
    assert [r["prediction"] for r in gathered] == [r["prediction"] for r in partitioned]
    for a, b in zip(gathered, partitioned):
        assert a["answer_nll"] == pytest.approx(b["answer_nll"], rel=1e-4, abs=1e-5)
    for p in probe:
        losses = p["losses"]
        assert len(losses) == 1 + len(VARIANTS) + 2 and all(x == x for x in losses)  # finite, no NaN
        assert losses[-1] < losses[0]  # the hooks are back: training steps still move the loss
