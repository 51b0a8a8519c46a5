"""Logit lens and preservation on the tiny model (exported HF folder, CPU)."""


import numpy as np
import pytest
import torch

from remix_ds import models
from remix_ds.data.config import KVRConfig
from remix_ds.data.datasets import generate_kvr
from remix_ds.eval.generate import generate_greedy
from remix_ds.eval.items import make_items
from remix_ds.experiments import lens, preserve


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    path = models.tiny_model_dir()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # A random init is nearly uniform; sharpen it so the argmaxes below are not near-ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model, models.load_tokenizer("tiny")


def test_last_layer_top1_is_the_models_greedy_token(tiny):
    model, tok = tiny
    examples = generate_kvr(KVRConfig(num_pairs=12, seed=3))
    rows = lens.logit_lens(model, tok, examples, batch_size=5)  # odd batch: padding across batches
    items = make_items(examples, tok)
    gens = generate_greedy(model, tok, items, batch_size=4, max_new_tokens=1, eos_ids=[tok.eos_token_id])
    n_layers = model.config.num_hidden_layers
    for row, it, g in zip(rows, items, gens):
        assert len(row["prob"]) == len(row["top1"]) == n_layers + 1  # embeddings + every layer
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(it.prompt_ids)[None]).logits[0, -1]
        assert row["top1"][-1] == int(logits.argmax())
        first = g.token_ids[0] if g.token_ids else tok.eos_token_id
        assert row["top1"][-1] == first
        p = torch.softmax(logits.float(), -1)[row["gold_token"]].item()
        assert row["prob"][-1] == pytest.approx(p, rel=1e-4, abs=1e-7)
        # recall layer: gold top-1 from there to the end, not just before
        r = row["recall_layer"]
        gold_hits = [t == row["gold_token"] for t in row["top1"]]
        if r is None:
            assert not gold_hits[-1]
        else:
            assert all(gold_hits[r:]) and (r == 0 or not gold_hits[r - 1])


def test_recall_layer_on_a_memorized_token(tiny):
    """Force the gold token to be each example's greedy token: every example is recalled at the last layer."""
    model, tok = tiny
    examples = generate_kvr(KVRConfig(num_pairs=6, seed=5))
    items = make_items(examples, tok)
    rows = lens.logit_lens(model, tok, examples)
    greedy = [r["top1"][-1] for r in rows]
    faked = [dict(r, gold_token=g) for r, g in zip(rows, greedy)]
    for r in faked:
        hits = [t == r["gold_token"] for t in r["top1"]]
        r["recall_layer"] = max(i for i in range(len(hits)) if all(hits[i:]))
    s = lens.summarize(faked)
    assert s["n_recalled"] == 6 and 0 <= s["recall_layer_mean"] <= model.config.num_hidden_layers
    assert len(s["mean_prob_per_layer"]) == model.config.num_hidden_layers + 1
    assert s["top1_rate_per_layer"][-1] == 1.0
    assert len(items) == 6


def test_preservation_same_model_changes_nothing(tiny):
    model, tok = tiny
    texts = ["the quick brown fox jumps over the lazy dog and keeps running far away from home " * 3,
             "a model that is trained on some data should not forget the other things that it knew before " * 2]
    probe = preserve.Probe(texts, prompt_words=6, max_tokens=24, max_new_tokens=5,
                           task=generate_kvr(KVRConfig(num_pairs=3)))
    a = preserve.measure(model, tok, probe)
    b = preserve.measure(model, tok, probe)
    d = preserve.compare(a, b)
    assert d["nll_change"] == pytest.approx(0.0, abs=1e-6) and d["changed_frac"] == 0.0
    assert len(a["nll"]) == 2 and all(x > 0 for x in a["nll"])
    assert len(a["task_eos"]) == 3
    # NLL by hand for the first passage
    ids = tok(texts[0])["input_ids"][:24]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor(ids)[None]).logits[0, :-1], -1)
    ref = -lp[np.arange(len(ids) - 1), torch.tensor(ids[1:])].mean().item()
    assert a["nll"][0] == pytest.approx(ref, rel=1e-4)
    # a perturbed model changes the NLL
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.5)
    try:
        c = preserve.compare(a, preserve.measure(model, tok, probe))
    finally:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.sub_(0.5)
    assert abs(c["nll_change"]) > 1e-3


ZERO3_SCRIPT = '''
import json, sys
import deepspeed, torch
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig
from remix_ds import models
from remix_ds.data.config import KVRConfig
from remix_ds.data.datasets import generate_kvr
from remix_ds.experiments import lens

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
out, model_dir = args[0], args[1]
from remix_ds.engine import dist as _dist
_dist.init_distributed("gloo")  # as the package does (no DeepSpeed CPU shm op, no shm buffer)
ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
      "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}, "steps_per_print": 10**9}
hf_ds = HfDeepSpeedConfig(ds)  # keep alive: from_pretrained builds under zero.Init
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
assert all(p.numel() == 0 for p in engine.module.parameters()), "expected partitioned parameters"
rows = lens.logit_lens(engine, models.load_tokenizer(model_dir), generate_kvr(KVRConfig(num_pairs=6, seed=3)))
if torch.distributed.get_rank() == 0:
    json.dump(rows, open(out, "w"))
_dist.shutdown(engine)  # as the package's entry points: gloo's threads left to interpreter exit can abort a rank
'''


@pytest.mark.slow  # subprocess
def test_lens_under_zero3_matches_single_process(tmp_path, tiny, run_deepspeed):
    """Two ZeRO-3 ranks with every parameter partitioned: the lens gathers once and gives the
    single-process numbers."""
    model, tok = tiny
    model_dir = tmp_path / "sharp"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    script = tmp_path / "lens_zero3.py"
    script.write_text(ZERO3_SCRIPT)
    run_deepspeed([str(script), str(tmp_path / "rows.json"), str(model_dir)], num_ranks=2, timeout=300)
    import json

    z3 = json.loads((tmp_path / "rows.json").read_text())
    ref = lens.logit_lens(model, tok, generate_kvr(KVRConfig(num_pairs=6, seed=3)))
    assert [r["top1"] for r in z3] == [r["top1"] for r in ref]
    for a, b in zip(z3, ref):
        assert a["prob"] == pytest.approx(b["prob"], rel=1e-4, abs=1e-7)
