"""Fused evaluator vs generation evaluator vs plain HF calls, on a tiny model trained on KVR
until it recalls some but not all pairs (tests/scripts/eval_tiny.py, cached on disk)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from eval_tiny import kvr_examples  # noqa: E402

from remix_ds.data.records import Example  # noqa: E402
from remix_ds.data.tokenize import tokenize_examples  # noqa: E402
from remix_ds.eval.config import EvalConfig  # noqa: E402
from remix_ds.eval.fused import score_fused  # noqa: E402
from remix_ds.eval.generate import generate_greedy  # noqa: E402
from remix_ds.eval.items import make_items  # noqa: E402
from remix_ds.eval.runner import evaluate  # noqa: E402


@pytest.fixture(scope="session")
def both_modes(trained_tiny):
    model, tok, _ = trained_tiny
    ex = kvr_examples()
    fused = evaluate(model, tok, ex, EvalConfig(mode="fused", max_seq_len=64, max_batch_tokens=256))
    gen = evaluate(model, tok, ex, EvalConfig(mode="generate", batch_size=7, max_new_tokens=10))
    return fused, gen


def test_fused_verdicts_equal_generation_verdicts(both_modes):
    fused, gen = both_modes
    f = [r["correct"] for r in fused.rows]
    g = [r["correct"] for r in gen.rows]
    assert [r["id"] for r in fused.rows] == [r["id"] for r in gen.rows] == [e.id for e in kvr_examples()]
    assert 0 < sum(f) < len(f), "the fixture model must get some but not all pairs right"
    assert f == g
    assert all(r["verdict"] == "fused" for r in fused.rows) and all(r["verdict"] == "generate" for r in gen.rows)
    # Correct fused rows predict the gold; generated text equals gold exactly where correct.
    for fr, gr in zip(fused.rows, gen.rows):
        if fr["correct"]:
            assert fr["prediction"] == fr["gold"] == gr["prediction"]
        else:
            assert gr["prediction"].strip().lower() != gr["gold"].lower()
            assert fr["first_error"] >= 0
    assert fused.metrics["em"] == gen.metrics["em"] == sum(f) / len(f)
    assert gen.metrics["fused_generate_agreement"] == 1.0


def test_nll_matches_unpacked_forward(trained_tiny, both_modes):
    """answer_nll / answer_logprob from packed rows == one example per forward, HF's own loss."""
    model, tok, _ = trained_tiny
    fused, _ = both_modes
    data = tokenize_examples(kvr_examples(), tok, mode="answer").examples
    for t, row in zip(data[:12], fused.rows[:12]):
        ids = torch.from_numpy(t.input_ids.astype(np.int64))[None]
        labels = torch.from_numpy(t.labels.astype(np.int64))[None]
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()  # mean over answer tokens + EOS
        n = int((labels != -100).sum())
        assert row["n_answer_tokens"] == n
        assert row["answer_nll"] == pytest.approx(loss, rel=1e-4, abs=1e-5)
        assert row["answer_logprob"] == pytest.approx(-loss * n, rel=1e-4, abs=1e-4)


def test_packing_does_not_change_results(trained_tiny):
    model, tok, _ = trained_tiny
    items = make_items(kvr_examples(), tok)
    packed = score_fused(model, items, max_seq_len=96, max_batch_tokens=192, pad_id=tok.pad_token_id)
    single = score_fused(model, items, max_seq_len=1, max_batch_tokens=1, pad_id=tok.pad_token_id)  # 1 per forward
    assert [r.index for r in packed] == list(range(len(items)))
    assert [r.correct for r in packed] == [r.correct for r in single]
    assert [r.greedy_prefix for r in packed] == [r.greedy_prefix for r in single]
    np.testing.assert_allclose([r.answer_nll for r in packed], [r.answer_nll for r in single], rtol=1e-4, atol=1e-5)


def test_causal_rows_are_the_auto_layout_and_change_no_result(trained_tiny):
    """sdpa with max_seq_len 0: one example per row, positions running on through the padding (a
    plain causal mask, no masked pairs computed); verdicts, prefixes and first errors equal the
    packed layout's and generation's, NLLs to float precision."""
    from remix_ds.eval.fused import batches

    model, tok, _ = trained_tiny
    items = make_items(kvr_examples(), tok)
    assert model.config._attn_implementation == "sdpa"
    todo = batches(items, 0, 160, tok.pad_token_id, "sdpa")
    assert sorted(it.index for b in todo for it in b.items) == list(range(len(items)))
    for b in todo:
        rows, width = b.input_ids.shape
        assert rows == len(b.items) and rows * width <= 160 and width == max(it.length for it in b.items)
        assert (b.position_ids == torch.arange(width)).all()  # no restart: nothing but causal masking
        assert all(start == 0 for _, start, _, _ in b.spans)
    auto = score_fused(model, items, max_seq_len=0, max_batch_tokens=160, pad_id=tok.pad_token_id)
    packed = score_fused(model, items, max_seq_len=96, max_batch_tokens=192, pad_id=tok.pad_token_id)
    gens = generate_greedy(model, tok, items, 7, max(len(it.answer_ids) for it in items))
    assert [r.index for r in auto] == list(range(len(items)))
    assert [(r.correct, r.greedy_prefix, r.first_error) for r in auto] == \
           [(r.correct, r.greedy_prefix, r.first_error) for r in packed]
    assert 0 < sum(r.correct for r in auto) < len(auto)
    eos = tok.eos_token_id
    assert [r.correct for r in auto] == [g.token_ids + [eos] == it.answer_ids.tolist() for g, it in zip(gens, items)]
    np.testing.assert_allclose([r.answer_nll for r in auto], [r.answer_nll for r in packed], rtol=1e-4, atol=1e-5)


def test_generation_matches_hf_generate(trained_tiny):
    """Batched, left-padded, length-sorted generation == model.generate one prompt at a time."""
    model, tok, _ = trained_tiny
    items = make_items(kvr_examples()[:16], tok)
    ours = generate_greedy(model, tok, items, batch_size=5, max_new_tokens=6)
    for it, g in zip(items, ours):
        ids = torch.from_numpy(it.prompt_ids)[None]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in out:
            out = out[: out.index(tok.eos_token_id)]
        assert g.index == it.index
        assert g.token_ids == out
        assert g.text == tok.decode(out, skip_special_tokens=True)


def test_generation_stops(trained_tiny):
    model, tok, _ = trained_tiny
    items = make_items(kvr_examples()[:6], tok)
    full = generate_greedy(model, tok, items, batch_size=6, max_new_tokens=10)
    short = generate_greedy(model, tok, items, batch_size=6, max_new_tokens=1)
    for f, s in zip(full, short):
        assert s.token_ids == f.token_ids[:1]
        assert s.stop_reason == ("eos" if not f.token_ids else "length")
    # A stop string cuts the text before it.
    target = next(f for f in full if len(f.text) >= 2)
    stop = target.text[1]
    cut = generate_greedy(model, tok, items, batch_size=6, max_new_tokens=10, stop_strings=[stop])
    hit = next(c for c in cut if c.index == target.index)
    assert hit.text == target.text[: target.text.index(stop)] and hit.stop_reason == "stop_string"


def test_auto_mode_routes_and_documented_gap(trained_tiny, both_modes):
    """auto: fused for plain exact match, generation for aliases. A lower-cased gold answer is the
    documented case where token-level fused EM (wrong: different tokens) and string EM
    (right: strip().lower()) disagree."""
    model, tok, _ = trained_tiny
    fused, _ = both_modes
    right = [e for e, r in zip(kvr_examples(), fused.rows) if r["correct"] and r["gold"].lower() != r["gold"]][:3]
    assert right, "need correct examples whose answer has upper-case letters"
    lowered = [replace(e, id=e.id + "-lc", answer=e.answer.lower()) for e in right]
    aliased = [Example(id=e.id + "-al", source="kvr", prompt=e.prompt, answer="nope", aliases=("nope", e.answer))
               for e in right]
    res = evaluate(model, tok, right + lowered + aliased, EvalConfig(mode="auto", max_new_tokens=10))
    rows = {r["id"]: r for r in res.rows}
    for e in right:
        assert rows[e.id]["verdict"] == "fused" and rows[e.id]["correct"]
        lc = rows[e.id + "-lc"]
        assert lc["verdict"] == "fused" and not lc["correct"]  # token-level: "ab1" is not "AB1"
        al = rows[e.id + "-al"]
        assert al["verdict"] == "generate" and al["correct"] and not al["fused_correct"]
    gen = evaluate(model, tok, lowered, EvalConfig(mode="generate", max_new_tokens=10))
    assert all(r["correct"] and not r["fused_correct"] for r in gen.rows)  # string-level: equal after lower()


def test_module_hook_removal_keeps_hooks_added_inside_the_context():
    """`_without_module_hooks` restores DeepSpeed's hooks without dropping hooks registered meanwhile."""
    import torch

    from remix_ds.eval import zero

    lin = torch.nn.Linear(2, 2)
    calls = []

    def ds_hook(mod, args):  # stands in for a DeepSpeed hook
        calls.append("ds")

    ds_hook.__module__ = "deepspeed.runtime.zero.parameter_offload"
    lin.register_forward_pre_hook(ds_hook)
    with zero._without_module_hooks(lin):
        lin(torch.zeros(1, 2))
        assert calls == []  # removed inside
        lin.register_forward_pre_hook(lambda mod, args: calls.append("user"))
    lin(torch.zeros(1, 2))
    assert calls == ["ds", "user"]  # DeepSpeed's back first, the new one kept


def _reference_rows(items, max_seq_len: int) -> list[list[int]]:
    """The fused evaluator's former private first-fit-decreasing (indices of each row's items)."""
    rows, fill = [], []
    for it in sorted(items, key=lambda it: -it.length):
        for r, used in enumerate(fill):
            if used + it.length <= max_seq_len:
                rows[r].append(it.index)
                fill[r] += it.length
                break
        else:
            rows.append([it.index])
            fill.append(it.length)
    return rows


def test_fused_packing_is_the_training_packer_layout(trained_tiny):
    from remix_ds.eval.fused import pack

    _, tok, _ = trained_tiny
    items = make_items(kvr_examples(), tok)
    longest = max(it.length for it in items)
    for max_seq_len, max_batch_tokens in [(96, 192), (longest - 1, 4 * longest), (1, 1), (4096, 4096)]:
        batches = list(pack(items, max_seq_len, max_batch_tokens, tok.pad_token_id))
        rows = [[] for _ in range(sum(b.input_ids.shape[0] for b in batches))]
        at = 0
        for b in batches:
            for it, (r, *_) in zip(b.items, b.spans):
                rows[at + r].append(it.index)
            at += b.input_ids.shape[0]
        assert rows == _reference_rows(items, max_seq_len)


def test_remix_varlen_fused_eval_gets_varlen_kwargs_and_same_verdicts(trained_tiny):
    import copy

    from remix_ds.kernels import attention as attention_kernels

    from remix_ds.eval import fused

    model, tok, _ = trained_tiny
    items = make_items(kvr_examples(), tok)
    attention_kernels.register()
    varlen = copy.deepcopy(model)
    varlen.set_attn_implementation(attention_kernels.ATTN_NAME)
    seen = []
    real = fused._varlen_kwargs
    fused._varlen_kwargs = lambda batch, device: seen.append(batch) or real(batch, device)
    try:
        got = score_fused(varlen, items, max_seq_len=96, max_batch_tokens=192, pad_id=tok.pad_token_id)
    finally:
        fused._varlen_kwargs = real
    ref = score_fused(model, items, max_seq_len=96, max_batch_tokens=192, pad_id=tok.pad_token_id)
    assert seen, "remix_varlen models get cu_seq_lens_* like flash_attention_2 (the loss's rule)"
    assert [r.correct for r in got] == [r.correct for r in ref]
    assert [r.greedy_prefix for r in got] == [r.greedy_prefix for r in ref]
    np.testing.assert_allclose([r.answer_nll for r in got], [r.answer_nll for r in ref], rtol=1e-4, atol=1e-5)


def test_load_for_inference_equals_a_plain_from_pretrained(trained_tiny):
    from remix_ds import models

    model, tok, folder = trained_tiny
    loaded = models.load_for_inference(folder, device="cpu")
    assert not loaded.training and next(loaded.parameters()).dtype == torch.float32
    assert next(loaded.parameters()).device.type == "cpu"
    ids = torch.as_tensor(make_items(kvr_examples()[:1], tok)[0].prompt_ids)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    half = models.load_for_inference(folder, dtype="bf16", device=None)
    assert next(half.parameters()).dtype == torch.bfloat16
