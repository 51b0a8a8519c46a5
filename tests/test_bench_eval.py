"""`remix-ds bench eval`: one process and two ZeRO-3 ranks under the real deepspeed launcher; the
fused verdicts agree with generation and the JSON's numbers agree with each other."""

import json
import sys

import pytest

from helpers import REPO, free_port, run_cmd


@pytest.mark.slow  # the deepspeed launcher, 2 ranks
def test_bench_eval_single_and_two_zero3_ranks(tmp_path):
    out = tmp_path / "bench_eval.json"
    run_cmd([sys.executable, "-m", "remix_ds.cli", "bench", "eval", "--examples", "6", "--ranks", "2",
             "--master-port", str(free_port()), "--out", str(out)], cwd=REPO, timeout=400)
    result = json.loads(out.read_text())
    single, zero3 = result["single"], result["zero3"]
    assert (single["n"], single["ranks"], zero3["n"], zero3["ranks"]) == (6, 1, 6, 2)
    assert "launcher_exit_code" not in zero3  # every rank ended cleanly
    for setting, runs in ((single, ("generate",)), (zero3, ("generate", "generate_naive"))):
        for name in runs:  # the fused pass's verdicts and proven prefixes are what generation produced
            assert setting[name]["verdicts_equal"] is True and setting[name]["prefixes_equal"] is True
            assert setting[name]["examples_per_s"] == pytest.approx(6 / setting[name]["seconds"])
        assert setting["fused_speedup_vs_generate"] == pytest.approx(setting["generate"]["seconds"] / setting["fused"]["seconds"])
    assert zero3["fused_speedup_vs_naive_generate"] == pytest.approx(
        zero3["generate_naive"]["seconds"] / zero3["fused"]["seconds"])
