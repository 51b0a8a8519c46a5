"""The real engine through the real launcher: 2-rank ZeRO-3 on CPU (gloo).

One uninterrupted run (module fixture) feeds several checks; the resume and failure tests make
their own runs. Budget: about 2-3 minutes on 2 cores.
"""

import json
import math
import sys

import pytest
import torch

from helpers import REPO, deepspeed_cmd, run_cmd
from remix_ds.engine.metrics import read_metrics

pytestmark = pytest.mark.slow  # launches deepspeed / subprocesses

CONFIG = str(REPO / "configs" / "tiny.yaml")
STEPS = 6


def overrides(run_dir, *extra):
    return [
        f"train.output_dir={run_dir}",
        f"train.max_steps={STEPS}",
        "train.save_every=3",
        "train.progress_bar=false",
        "data.kvr.num_pairs=32",
        "data.max_seq_len=64",
        *extra,
    ]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """6 optimizer steps, 2 ranks x micro-batch 2 x grad accum 2, probed (see tests/scripts/engine_probe.py)."""
    root = tmp_path_factory.mktemp("full")
    run_dir, probe = root / "run", root / "probe"
    proc = run_cmd(deepspeed_cmd([str(REPO / "tests/scripts/engine_probe.py"), str(probe), CONFIG,
                                  *overrides(run_dir)], num_ranks=2))
    return {"run": run_dir, "probe": probe, "stdout": proc.stdout}


def test_two_rank_zero3_loss_falls(full_run):
    rows = read_metrics(full_run["run"] / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.85 * losses[0] and max(losses[3:]) < min(losses[:3]), losses
    assert all(r["examples"] == 8 for r in rows)  # global batch 8 across 2 ranks
    assert rows[0]["supervised_tokens"] > 0 and rows[0]["tokens"] > rows[0]["supervised_tokens"]
    out = full_run["stdout"]
    assert "world size 2" in out and "ZeRO stage 3" in out and "attention sdpa" in out
    assert "grad accum 2 x 2 ranks" in out and "tokens in the first optimizer step" in out
    saved = json.loads((full_run["run"] / "config.json").read_text())
    assert saved["train"]["max_steps"] == STEPS and saved["data"]["kvr"]["num_pairs"] == 32
    assert (full_run["run"] / "latest").read_text().strip() == f"checkpoint-{STEPS}"
    # keep_last=2 of the tiny config: checkpoint-3 and checkpoint-6
    assert sorted(p.name for p in full_run["run"].glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]


def test_loss_normalization_matches_single_process_full_batch_gradient(full_run):
    """ZeRO-3 gradient of step 1 == d/dθ [sum of token losses over all 4 micro-batches / N]."""
    from transformers import AutoModelForCausalLM

    from remix_ds.engine.loss import token_loss_sum
    from remix_ds.models import tiny_model_dir

    probe = full_run["probe"]
    batches = [b for r in range(2) for b in torch.load(probe / f"step1_batches_{r}.pt", weights_only=False)]
    sup = [int(b["num_supervised"]) for b in batches]
    assert len(batches) == 4 and len(set(sup)) >= 1 and sum(sup) > 0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    total = sum(token_loss_sum(model, b, "sdpa") for b in batches) / sum(sup)
    total.backward()
    want = {n: p.grad for n, p in model.named_parameters()}
    got = torch.load(probe / "step1_grads.pt")
    for name, grad in got.items():
        torch.testing.assert_close(grad, want[name], rtol=1e-4, atol=1e-7, msg=name)
    # A per-micro-batch mean would give a different gradient whenever counts differ.
    if len(set(sup)) > 1:
        model.zero_grad()
        wrong = sum(token_loss_sum(model, b, "sdpa") / s for b, s in zip(batches, sup)) / len(batches)
        wrong.backward()
        name = "lm_head.weight"
        assert not torch.allclose(model.get_parameter(name).grad, want[name], rtol=1e-3)


def test_resume_reproduces_uninterrupted_losses(full_run, tmp_path):
    run_dir = tmp_path / "run"
    first = run_cmd(deepspeed_cmd(["remix_ds.train", CONFIG, *overrides(run_dir, "train.stop_at_step=3")], module=True))
    assert (run_dir / "latest").read_text().strip() == "checkpoint-3"
    assert not (run_dir / "final").exists()
    second = run_cmd(deepspeed_cmd(["remix_ds.train", CONFIG, *overrides(run_dir)], module=True))
    assert "resumed from" in second.stdout and "at step 3" in second.stdout
    resumed = read_metrics(run_dir / "metrics.jsonl")
    reference = read_metrics(full_run["run"] / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (a["step"], a["loss"], b["loss"])
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
        assert a["supervised_tokens"] == b["supervised_tokens"]
    del first


def test_export_round_trip_logits(full_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    run_cmd([sys.executable, "-m", "remix_ds.cli", "export", str(full_run["run"] / f"checkpoint-{STEPS}"), str(out)])
    probe = torch.load(full_run["probe"] / "logits.pt")
    for folder in (out, full_run["run"] / "final"):  # offline export and the end-of-run export
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=probe["input_ids"]).logits
        torch.testing.assert_close(logits, probe["logits"], rtol=1e-4, atol=1e-5)
        assert any(p.name.endswith(".safetensors") for p in folder.iterdir())
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok("The value of key")["input_ids"][-3:] == AutoTokenizer.from_pretrained(
            full_run["run"] / f"checkpoint-{STEPS}")("The value of key")["input_ids"][-3:]


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = overrides(run_dir, "train.stop_at_step=2", "train.save_every=0", "train.max_steps=4")
    run_cmd([sys.executable, str(REPO / "tests/scripts/save_failure.py"), CONFIG, *args])
    crash = json.loads((run_dir / "crash.json").read_text())
    assert crash["step"] == 3 and "disk full while saving checkpoint-3" in crash["error"]
    assert "checkpoint-2 stays latest" in crash["error"] and "\n" not in crash["error"]
    assert (run_dir / "latest").read_text().strip() == "checkpoint-2"
    # the partial folder is removed at once (it only took space), and no checkpoint-3 exists
    assert not (run_dir / ".tmp-checkpoint-3").exists() and not (run_dir / "checkpoint-3").exists()
    # The previous checkpoint loads: resume=auto continues from step 2 and recomputes step 3 exactly.
    resumed = run_cmd([sys.executable, "-m", "remix_ds.train", CONFIG, *overrides(run_dir, "train.max_steps=4",
                                                                                  "train.save_every=0")])
    assert "resumed from" in resumed.stdout and "checkpoint-2 at step 2" in resumed.stdout
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] == 3]
    assert rows and rows[-1]["loss"] == pytest.approx(crash["loss"], rel=1e-6)
    assert (run_dir / "latest").read_text().strip() == "checkpoint-4"
    assert not list(run_dir.glob(".tmp-checkpoint-*"))  # the partial save was cleaned up
