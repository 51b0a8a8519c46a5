"""The fused evaluator's fast path (vectorized collation and scoring, logsumexp / max instead of
log_softmax / topk, the last decoder layer trimmed to the answer positions) against its plain
reference ``score_reference`` (one example per forward, full logits, a Python loop)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from eval_tiny import kvr_examples  # noqa: E402

from remix_ds.eval import fused  # noqa: E402
from remix_ds.eval.items import make_items  # noqa: E402


def _same(got, ref) -> None:
    """Verdicts, first errors, proven prefixes and span verdicts equal; scores to float precision."""
    assert [r.index for r in got] == [r.index for r in ref]
    assert [(r.correct, r.first_error, r.greedy_prefix, r.span_correct) for r in got] == \
           [(r.correct, r.first_error, r.greedy_prefix, r.span_correct) for r in ref]
    for name in ("answer_logprob", "answer_nll", "min_margin"):
        np.testing.assert_allclose([getattr(r, name) for r in got], [getattr(r, name) for r in ref],
                                   rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose([x for r in got for x in r.span_nll], [x for r in ref for x in r.span_nll],
                               rtol=1e-4, atol=1e-4)


def _score(model, items, max_seq_len, max_batch_tokens, pad, trim=True, share_prefix=True):
    attn = model.config._attn_implementation
    out = [r for b in fused.batches(items, max_seq_len, max_batch_tokens, pad, attn)
           for r in fused.forward_batch(model, b, trim=trim, share_prefix=share_prefix)]
    return sorted(out, key=lambda r: r.index)


@pytest.fixture(scope="module")
def kvr_items(trained_tiny):
    _, tok, _ = trained_tiny
    items = make_items(kvr_examples(), tok)
    # Marked spans on some answers, so the span verdicts and NLLs are compared too.
    return [replace(it, spans=((0, 2), (1, len(it.answer_ids)))) if it.index % 3 == 0 else it for it in items]


@pytest.mark.parametrize("max_seq_len,max_batch_tokens", [(0, 8192), (0, 160), (96, 192), (1, 1)])
@pytest.mark.parametrize("trim,share_prefix", [(True, True), (False, False), (True, False), (False, True)])
def test_fast_path_equals_the_plain_reference(trained_tiny, kvr_items, max_seq_len, max_batch_tokens, trim,
                                              share_prefix):
    model, tok, _ = trained_tiny
    ref = fused.score_reference(model, kvr_items)
    assert 0 < sum(r.correct for r in ref) < len(ref), "the fixture model must get some but not all pairs right"
    assert any(r.span_correct and not all(r.span_correct) for r in ref) or any(all(r.span_correct) for r in ref)
    _same(_score(model, kvr_items, max_seq_len, max_batch_tokens, tok.pad_token_id, trim, share_prefix), ref)


def test_collate_layout_is_the_plain_one(trained_tiny, kvr_items):
    """Vectorized collation: every example's ids at its span, the pad id elsewhere; packed rows
    restart positions per example and per padding block."""
    _, tok, _ = trained_tiny
    pad = tok.pad_token_id
    for max_seq_len, max_batch_tokens in [(96, 192), (0, 160)]:
        for b in fused.batches(kvr_items, max_seq_len, max_batch_tokens, pad, "sdpa"):
            ids, pos = b.input_ids.clone(), b.position_ids
            for it, (r, start, p_len, a_len), in zip(b.items, b.spans):
                n = p_len + a_len
                assert ids[r, start : start + n].tolist() == it.prompt_ids.tolist() + it.answer_ids.tolist()
                assert pos[r, start : start + n].tolist() == list(range(n))
                ids[r, start : start + n] = -1
            assert ((ids == -1) | (ids == pad)).all()
            for r, lens in enumerate(b.seq_lens):
                assert sum(lens) == ids.shape[1]
                if b.causal:
                    assert pos[r].tolist() == list(range(ids.shape[1]))
                else:
                    at = 0
                    for n in lens:
                        assert pos[r, at : at + n].tolist() == list(range(n))
                        at += n


def test_trim_and_shared_prefix_cut_the_work(trained_tiny, kvr_items):
    """The shared prompt prefix runs once (one row), the rest of each row after it up to the
    last column; the last layer's MLP runs on the answer positions only. Results stay the
    reference's."""
    model, tok, _ = trained_tiny
    b = fused.batches(kvr_items, 0, 8192, tok.pad_token_id, "sdpa")[0]
    rows, width = b.input_ids.shape
    shared = fused.shared_prefix_length(model, b)
    assert shared >= 5  # BOS + the KVR prompt's opening words
    assert b.input_ids[:, :shared].eq(b.input_ids[:1, :shared]).all()
    assert (b.input_ids[:, shared] != b.input_ids[0, shared]).any() or shared == min(p for _, _, p, _ in b.spans) - 1
    n_keep = sum(a for *_, a in b.spans)
    rows_seen = []
    layers = model.model.layers
    hooks = [layers[i].mlp.down_proj.register_forward_hook(
        lambda m, args, out, i=i: rows_seen.append((i, args[0].shape[:-1].numel()))) for i in (0, len(layers) - 1)]
    try:
        got = fused.forward_batch(model, b)
    finally:
        for h in hooks:
            h.remove()
    last = len(layers) - 1
    # The last column (the longest rows' EOS, padding elsewhere) predicts nothing and is not run.
    assert rows_seen == [(0, shared), (last, shared), (0, rows * (width - 1 - shared)), (last, n_keep)]
    assert n_keep < rows * (width - 1 - shared) / 2
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()), "hooks are removed"
    _same(sorted(got, key=lambda r: r.index), fused.score_reference(model, b.items))
    plain = fused.forward_batch(model, b, trim=False, share_prefix=False)
    _same(sorted(got, key=lambda r: r.index), sorted(plain, key=lambda r: r.index))


def _tiny(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    gemma2 = dict(head_dim=16, query_pre_attn_scalar=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    extra = {"gemma2": dict(gemma2, sliding_window=8), "gemma2-wide": dict(gemma2, sliding_window=64),
             "mistral": dict(sliding_window=8), "qwen2": dict(use_sliding_window=False),
             "qwen3": dict(head_dim=16)}.get(model_type, {})
    cfg = AutoConfig.for_model(model_type.split("-")[0], vocab_size=2048, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma2-wide"])
def test_trim_keeps_results_across_architectures(trained_tiny, kvr_items, model_type):
    """Random-init models of each family (Gemma-2: softcapping, hybrid cache; Mistral and
    Gemma-2: a sliding window shorter than the examples, so no shared prefix; the others and
    Gemma-2 with a wide window share it): trimmed ==
    the plain reference, and the trim did engage."""
    _, tok, _ = trained_tiny
    model = _tiny(model_type)
    assert len(fused._trimmable(model)) == 4
    b = fused.batches(kvr_items, 0, 8192, tok.pad_token_id, "sdpa")[0]
    assert (fused.shared_prefix_length(model, b) > 0) == (model_type not in ("mistral", "gemma2"))
    ref = fused.score_reference(model, kvr_items)
    _same(_score(model, kvr_items, 0, 8192, tok.pad_token_id, trim=True), ref)
    _same(_score(model, kvr_items, 96, 192, tok.pad_token_id, trim=True), ref)


def test_models_laid_out_otherwise_run_untrimmed(trained_tiny, kvr_items):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok, _ = trained_tiny
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=2048, n_embd=64, n_layer=2, n_head=4, n_positions=256)).eval()
    assert fused._trimmable(model) == []
    _same(_score(model, kvr_items[:12], 0, 8192, tok.pad_token_id), fused.score_reference(model, kvr_items[:12]))


def test_partitioned_zero3_models_run_the_plain_pass(trained_tiny, kvr_items):
    """Parameters still partitioned (ZeRO-3 without gathering: every forward is a collective, ranks
    must run the same forwards): no extra prefix forward and no hooks beside DeepSpeed's."""
    _, tok, _ = trained_tiny
    model = _tiny("llama")
    b = fused.batches(kvr_items, 0, 8192, tok.pad_token_id, "sdpa")[0]
    assert fused.shared_prefix_length(model, b) > 0 and fused._trimmable(model)
    for p in model.parameters():
        p.ds_id = 0  # gathered: whole parameters, tagged
    assert not fused._partitioned(model) and fused.shared_prefix_length(model, b) > 0
    model.model.layers[0].mlp.up_proj.weight.data = torch.empty(0)  # one partitioned parameter
    assert fused._partitioned(model)
    assert fused.shared_prefix_length(model, b) == 0 and fused._trimmable(model) == []
