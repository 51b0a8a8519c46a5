"""`launch/gpu_check.sh` / `remix-ds bench gpu`: the CPU dry run writes every step, and a step killed
by its timeout leaves the earlier steps' results (the GPU run itself needs a lent GPU machine)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, run_cmd
from remix_ds.bench import gpu
from remix_ds.errors import RemixError


def test_llama8b_layer_count_from_memory():
    # 16 bytes/param states + 34*h*tokens activations per layer, 0.7 of memory, 30 GB for HF's logits
    per_layer = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    assert per_layer == 218_103_808
    h200 = 143771 * 2**20  # what nvidia-smi reports on the lent H200
    assert gpu.llama8b_layers(h200, 16384, cap=4) == (10, 4)
    assert gpu.llama8b_layers(h200, 16384, cap=64) == (10, 10)
    assert gpu.llama8b_layers(80 * 10**9, 16384, cap=4) == (1, 1)  # an 80 GB card: 1 layer, or zero3_offload


def test_timeouts_parse_and_reject():
    assert gpu._parse_timeouts(["train=30", "eval=2.5"]) == {**gpu.DEFAULT_TIMEOUTS, "train": 30.0, "eval": 2.5}
    assert sum(gpu.DEFAULT_TIMEOUTS.values()) == gpu.DEFAULT_BUDGET == 480  # the 8-minute window
    with pytest.raises(RemixError, match="STEP=SECONDS"):
        gpu._parse_timeouts(["trian=3"])
    with pytest.raises(RemixError, match="not a number"):
        gpu._parse_timeouts(["train=soon"])


def _steps(out_dir):
    report = json.loads((out_dir / "gpu_check.json").read_text())
    return report, report["steps"], (out_dir / "gpu_check.md").read_text()


@pytest.mark.slow  # subprocesses, ~2 minutes on 2 shared cores
def test_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "check"
    env = {"DRY_RUN": "1", "OUT_DIR": str(out), "OMP_NUM_THREADS": "1", "BUDGET": "900", "PYTHON": sys.executable}
    # train: room for DeepSpeed's one-time CPU Adam build on a fresh machine (the GPU run uses torch's AdamW)
    run_cmd(["bash", str(REPO / "launch/gpu_check.sh"), "--timeout", "train=600"], env=env, timeout=960)
    report, steps, md = _steps(out)
    assert report["environment"]["mode"] == "cpu dry run"
    assert list(steps) == list(gpu.STEPS)
    for name, s in steps.items():
        assert s["status"] in ("passed", "skipped"), (name, s)
        assert s["seconds"] > 0
        assert f"| {name} | {s['status']} |" in md
        if s["status"] == "skipped":
            assert s["reason"], name
    # a. every backend that runs on CPU, both dtypes, GQA; packed == unpacked logits
    att = steps["attention"]
    assert {r["dtype"] for r in att["kernels"]} == {"bfloat16", "float32"}
    assert {(r["hq"], r["hkv"]) for r in att["kernels"]} == {(8, 8), (8, 2)}
    assert all(r["ok"] and 0 < r["out_max_err"] < 0.05 for r in att["kernels"])
    assert all(r["ok"] and r["examples"] == 6 and r["max_rel_diff"] < 1e-4 for r in att["packed_vs_unpacked"])
    # b. chunked vs plain at both supervision fractions: same loss and gradients
    ce = {(c["backend"], c["supervised"]): c for c in steps["linear_ce"]["cases"]}
    assert set(ce) >= {("reference", 1.0), ("chunked", 1.0), ("reference", 0.25), ("chunked", 0.25)}
    assert ce[("chunked", 0.25)]["grad_weight_rel_err"] < 1e-4 and ce[("chunked", 1.0)]["seconds"] > 0
    assert ce[("reference", 1.0)]["loss"] > ce[("reference", 0.25)]["loss"] > 0  # 4x the supervised rows
    # c. the real engine and HF Trainer side by side, MFU against the measured matmul
    tr = steps["train"]
    assert tr["remix_ds"]["zero_stage"] == 3 and tr["remix_ds"]["tokens_per_s"] > 0
    assert tr["hf_trainer"]["tokens_per_s"] > 0 and tr["matmul"]["tflops_per_s"] > 0
    assert tr["mfu_vs_measured_matmul"] == pytest.approx(tr["remix_ds"]["tflops_per_s"] / tr["matmul"]["tflops_per_s"])
    assert tr["batching"]
    # d. fused and generated verdicts agree
    ev = steps["eval"]
    assert ev["layers"] == 4 and ev["fused"]["examples_per_s"] > 0 and ev["generate"]["verdicts_equal"] is True
    # e. the sync-debug step needs CUDA: on CPU it is skipped and says why
    assert steps["syncdebug"]["status"] == "skipped"
    assert steps["syncdebug"]["reason"] == "torch.cuda.set_sync_debug_mode needs a CUDA device"


@pytest.mark.slow  # subprocesses
def test_a_hung_step_is_killed_and_earlier_results_stay(tmp_path):
    out = tmp_path / "check"
    cmd = [sys.executable, "-m", "remix_ds.cli", "bench", "gpu", "--cpu", "--out-dir", str(out),
           "--steps", "linear_ce,eval,syncdebug", "--hang-step", "eval", "--timeout", "eval=3", "--budget", "300"]
    run_cmd(cmd, timeout=300)
    report, steps, md = _steps(out)
    assert steps["linear_ce"]["status"] == "passed" and steps["linear_ce"]["cases"]
    assert steps["eval"]["status"] == "timeout" and "killed after 3 s" in steps["eval"]["reason"]
    assert 3 <= steps["eval"]["seconds"] < 30
    assert "syncdebug" in steps  # the run went on after the killed step
    assert "| eval | timeout |" in md and "## linear_ce: passed" in md


@pytest.mark.slow  # subprocess
def test_without_cuda_the_real_run_refuses():
    if __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is present")
    p = subprocess.run([sys.executable, "-m", "remix_ds.cli", "bench", "gpu", "--out-dir", os.devnull],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "remix-ds: error: bench gpu: no CUDA device here" in p.stderr
