"""EWC and KL through the real Trainer: 2 ZeRO-3 ranks (deepspeed launcher, gloo) vs a world of one.

One probed run per world size (tests/scripts/baselines_probe.py) feeds every check. ~1 minute.
"""

import json
import sys

import pytest
import torch

from helpers import REPO, deepspeed_cmd, run_cmd
from remix_ds.engine.metrics import read_metrics

pytestmark = pytest.mark.slow  # launches deepspeed / subprocesses

CONFIG = str(REPO / "configs" / "tiny.yaml")
LAM, BETA, N_FISHER, STEPS = 10.0, 0.5, 6, 3
PROBE = str(REPO / "tests/scripts/baselines_probe.py")


def overrides(run_dir):
    return [f"train.output_dir={run_dir}", f"train.max_steps={STEPS}", "optim.warmup_ratio=0", "train.progress_bar=false",
            "train.tensorboard=false", "train.export_final=false", "data.kvr.num_pairs=32", "data.max_seq_len=64",
            f"regularize.ewc.lam={LAM}", "regularize.ewc.dataset=kvr", f"regularize.ewc.num_examples={N_FISHER}",
            f"regularize.kl.beta={BETA}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    out = {}
    for world in (2, 1):
        run_dir, probe = root / f"run{world}", root / f"probe{world}"
        target = [PROBE, str(probe), CONFIG, *overrides(run_dir)]
        run_cmd(deepspeed_cmd(target, num_ranks=2) if world == 2 else [sys.executable, *target])
        out[world] = {"run": run_dir, "probe": json.loads((probe / "probe.json").read_text()),
                      "state": torch.load(probe / "state.pt"), "metrics": read_metrics(run_dir / "metrics.jsonl")}
    return out


def _reference_fisher():
    """Single process, plain autograd: mean over the examples of (d sum-NLL_n / d theta)^2."""
    from transformers import AutoModelForCausalLM

    from remix_ds.config import load_config
    from remix_ds.data.packing import pack
    from remix_ds.data.tokenize import tokenize_examples
    from remix_ds.engine.loss import token_loss_sum
    from remix_ds.eval.data import load_eval_set
    from remix_ds.models import load_tokenizer, tiny_model_dir

    cfg = load_config(CONFIG, overrides("unused"))
    tok = load_tokenizer()
    examples = load_eval_set("kvr", cfg.eval, cfg.data, n=N_FISHER).examples
    rows = tokenize_examples(examples, tok, mode="answer", max_len=64).examples
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32, attn_implementation="sdpa")
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for r in rows:
        model.zero_grad()
        token_loss_sum(model, pack([r], len(r), tok.pad_token_id), "sdpa").backward()
        for n, p in model.named_parameters():
            fisher[n] += p.grad ** 2
    return {n: (f / len(rows)).flatten() for n, f in fisher.items()}


def test_fisher_on_zero3_pieces_equals_single_process_per_example_fisher(runs):
    want = _reference_fisher()
    for world in (1, 2):
        got = runs[world]["state"]["fisher"]
        assert set(got) == set(want)
        for name, f in want.items():
            torch.testing.assert_close(got[name], f, rtol=2e-3, atol=1e-6 * float(f.abs().max()) + 1e-12, msg=name)
        assert sum(float(f.sum()) for f in got.values()) > 0


def shift(numel: int, seed: int) -> torch.Tensor:
    """The probe's shift of a flattened parameter (same definition as tests/scripts/baselines_probe.py)."""
    return 1e-2 * torch.sin(torch.arange(numel, dtype=torch.float64) * 0.37 + seed).float()


def test_penalty_zero_at_anchor_quadratic_and_equal_on_one_and_two_ranks(runs):
    values = {}
    for world in (1, 2):
        p, state = runs[world]["probe"], runs[world]["state"]
        assert p["penalty_at_anchor"] == 0.0 and p["penalty_restored"] == 0.0
        assert p["penalty_shift_1"] > 0
        assert p["penalty_shift_2"] == pytest.approx(4 * p["penalty_shift_1"], rel=1e-6)
        # the value summed over ZeRO-3 pieces is lam/2 sum F delta^2 over the full tensors
        want = 0.5 * LAM * sum(float((state["fisher"][n].double() * shift(len(state["fisher"][n]), k).double() ** 2).sum())
                               for n, k in p["shift_seeds"].items())
        assert p["penalty_shift_1"] == pytest.approx(want, rel=1e-5)
        values[world] = p["penalty_shift_1"]
    assert values[1] == pytest.approx(values[2], rel=1e-4)


def test_gradient_edit_is_the_closed_form_and_metrics_show_both_terms(runs):
    for world in (1, 2):
        p = runs[world]["probe"]
        assert p["edit_calls"] == STEPS and p["edit_max_abs"] > 1e-4  # theta moved away from theta* after step 1
        assert p["edit_max_abs_err"] <= 1e-6 * p["edit_max_abs"] + 1e-7
        rows = runs[world]["metrics"]
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
        # step 1 runs at the starting weights: current == frozen and theta == theta*
        assert rows[0]["reg/ewc/penalty"] == 0.0 and abs(rows[0]["reg/kl/kl"]) < 1e-6
        assert rows[0]["reg/kl/tokens"] == rows[0]["supervised_tokens"]
        for r in rows[1:]:
            assert r["reg/ewc/penalty"] > 1e-6 and r["reg/kl/kl"] > 1e-4
            assert r["reg/kl/term"] == pytest.approx(BETA * r["reg/kl/kl"])
        assert p["kl_after_training"] > 0
    # same data, same global batch: the two world sizes train the same trajectory
    for a, b in zip(runs[1]["metrics"], runs[2]["metrics"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["reg/ewc/penalty"] == pytest.approx(b["reg/ewc/penalty"], rel=1e-3, abs=1e-9)
        assert a["reg/kl/kl"] == pytest.approx(b["reg/kl/kl"], rel=1e-3, abs=1e-7)


def test_state_written_by_two_ranks_loads_under_three(runs):
    import math

    from remix_ds.baselines import store
    from remix_ds.baselines.partitions import Slot

    folder = runs[2]["run"] / "ewc"
    meta = store.read_meta(folder)
    assert meta["world_size"] == 2 and len(meta["parts"]) == 2 and meta["info"]["num_examples"] == N_FISHER
    gathered = runs[2]["state"]
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        numel = meta["params"][name]["numel"]
        pn = math.ceil(numel / 3)
        pieces = [Slot(name, None, r * pn, max(0, min(pn, numel - r * pn)), pn, numel, ()) for r in range(3)]
        loaded = [store.load(folder, [s], ["fisher", "anchor"]) for s in pieces]
        for kind in ("fisher", "anchor"):
            joined = torch.cat([d[kind][0][: s.real] for d, s in zip(loaded, pieces)])
            torch.testing.assert_close(joined, gathered[kind][name], rtol=0, atol=0)
