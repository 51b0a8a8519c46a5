"""Packed causal attention: every backend against the SDPA block-diagonal reference, outputs and grads.

CPU: the reference against a per-sequence loop (fp64 and fp32), flex forward (CPU flex has no
backward), the transformers `remix_varlen` registration against the model's own `sdpa` path.
GPU (skipped without CUDA): every available backend, bf16 and fp16, outputs and q/k/v grads,
with flash-attn's own tolerance rule: the fast path's error against an fp32 reference may be at
most twice the error of the reference itself run in the low-precision dtype, plus 1e-3.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from remix_ds.kernels import attention as A

LENGTHS = [1, 7, 33, 100]  # odd lengths, a one-token sequence included
CUDA = torch.cuda.is_available()


def make_qkv(lengths, hq, hkv, d=16, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    q, k, v = (torch.randn(n, h, d, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
               for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32, device=device)
    return q, k, v, cu


def per_sequence_attention(q, k, v, cu):
    """The obvious definition: causal SDPA on each sequence separately, GQA by repeating kv heads."""
    groups = q.shape[1] // k.shape[1]
    outs = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1))
    return torch.cat(outs)


def out_and_grads(fn, q, k, v, cu, seed=1):
    for x in (q, k, v):
        x.grad = None
    out = fn(q, k, v, cu)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out)
    out.backward(dout)
    return [out.detach()] + [x.grad.detach().clone() for x in (q, k, v)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (6, 1)])
def test_reference_matches_per_sequence_attention(dtype, tol, hq, hkv):
    q, k, v, cu = make_qkv(LENGTHS, hq, hkv, dtype=dtype)
    want = out_and_grads(per_sequence_attention, q, k, v, cu)
    got = out_and_grads(lambda *a: A.varlen_attention(*a, max_seqlen=100, backend="sdpa"), q, k, v, cu)
    for name, w, g in zip(("out", "dq", "dk", "dv"), want, got):
        assert g.shape == w.shape and g.dtype == dtype
        torch.testing.assert_close(g, w, atol=tol, rtol=tol, msg=name)
    # the first token of every sequence attends only to itself: its output is its own value row
    groups = hq // hkv
    for s in cu[:-1].tolist():
        torch.testing.assert_close(got[0][s], v[s].detach().repeat_interleave(groups, 0), atol=tol, rtol=0)


def test_flex_forward_matches_reference_on_cpu():
    q, k, v, cu = (x.detach() for x in make_qkv(LENGTHS, 4, 2))
    with torch.no_grad():
        ref = A.varlen_attention(q, k, v, cu, 100, backend="sdpa")
        flex = A.varlen_attention(q, k, v, cu, 100, backend="flex")
    torch.testing.assert_close(flex, ref, atol=2e-6, rtol=2e-6)


def test_sequences_from_position_ids():
    # two rows of 10: [3 | 5 | pad 2 counting up] and [4 | 6]
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
    cu, max_len = A.cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == [0, 3, 8, 10, 14, 20] and cu.dtype == torch.int32 and max_len == 6
    assert A.segment_ids(cu, 20).tolist() == [0] * 3 + [1] * 5 + [2] * 2 + [3] * 4 + [4] * 6


def test_cpu_dispatch_is_the_reference():
    assert A.available_backends("cpu", torch.float32) == ["sdpa"]
    assert A.choose_backend("cpu", torch.float32) == "sdpa"
    with pytest.raises(ValueError, match="not available"):
        A.choose_backend("cpu", torch.bfloat16, "flash_attn")
    with pytest.raises(ValueError, match="unknown"):
        A.choose_backend("cpu", torch.float32, "xformers")


@pytest.fixture(scope="module")
def tiny_models(tiny_model):
    from transformers import AttentionInterface

    from remix_ds import models
    from remix_ds.config import ModelConfig

    A.register()
    assert AttentionInterface._global_mapping[A.ATTN_NAME] is A.remix_varlen_attention_forward
    ref = tiny_model
    fast = models.load_model(ModelConfig(), torch.float32, A.ATTN_NAME)
    assert fast.config._attn_implementation == A.ATTN_NAME
    return ref, fast


def packed_batch():
    from remix_ds.data.packing import pack
    from remix_ds.data.tokenize import TokenizedExample

    rng = np.random.default_rng(0)
    examples = []
    for i, n in enumerate([2, 7, 33, 100, 20, 61]):
        ids = rng.integers(3, 2000, n).astype(np.int32)
        labels = ids.copy()
        labels[: n // 2] = -100
        examples.append(TokenizedExample(str(i), ids, labels))
    return pack(examples, 128, pad_id=0)


@pytest.mark.parametrize("pass_cu", [True, False], ids=["cu_seq_lens", "position_ids"])
def test_hf_remix_varlen_matches_sdpa(tiny_models, pass_cu):
    """The tiny Llama through `remix_varlen` == through transformers' sdpa packed mask: logits and every grad."""
    ref, fast = tiny_models
    batch = packed_batch()
    assert batch["input_ids"].shape[0] >= 2 and len(batch["cu_seq_lens_q"]) > 7  # several rows, pad tails
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    results = []
    for model, extra in ((ref, {}), (fast, {k: batch[k] for k in ("cu_seq_lens_q", "max_length_q")} if pass_cu else {})):
        model.zero_grad()
        logits = model(**kwargs, **extra).logits
        logits.float().pow(2).mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l_ref, g_ref), (l_fast, g_fast) = results
    torch.testing.assert_close(l_fast, l_ref, atol=1e-5, rtol=1e-5)
    assert g_ref.keys() == g_fast.keys()
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], atol=1e-6, rtol=1e-4, msg=name)
    # and the mask matters: ignoring the packing (one causal sequence per row) gives other logits
    plain = ref(input_ids=batch["input_ids"], use_cache=False).logits
    assert (plain - l_ref).abs().max() > 1e-2


def test_hf_remix_varlen_rejects_padding_masks(tiny_models):
    _, fast = tiny_models
    ids = torch.ones(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="without an attention mask"):
        A.remix_varlen_attention_forward(fast.model.layers[0].self_attn, *(torch.zeros(1, 4, 5, 32),) * 3,
                                         attention_mask=torch.ones(1, 1, 5, 5, dtype=torch.bool), position_ids=ids)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hq,hkv", [(8, 8), (8, 2)])
def test_gpu_backends_match_reference(dtype, hq, hkv):
    backends = A.available_backends("cuda", dtype)
    assert backends[-1] == "sdpa"
    q32, k32, v32, cu = make_qkv(LENGTHS, hq, hkv, d=64, dtype=torch.float32, device="cuda")
    exact = out_and_grads(lambda *a: A.varlen_attention(*a, 100, backend="sdpa"), q32, k32, v32, cu)
    low = [x.detach().to(dtype).requires_grad_() for x in (q32, k32, v32)]
    base = out_and_grads(lambda *a: A.varlen_attention(*a, 100, backend="sdpa"), *low, cu)
    for name in backends:
        got = out_and_grads(lambda *a, n=name: A.varlen_attention(*a, 100, backend=n), *low, cu)
        for what, e, b, g in zip(("out", "dq", "dk", "dv"), exact, base, got):
            assert g.dtype == dtype and g.shape == e.shape
            err, ref_err = (g.float() - e).abs().max().item(), (b.float() - e).abs().max().item()
            assert err <= 2 * ref_err + 1e-3, f"{name} {what} {dtype}: err {err:.2e} vs reference {ref_err:.2e}"


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_fp32_dispatch_is_exact_path():
    """fp32 on CUDA: flash kernels are half-only, so auto falls to flex or sdpa; both match fp32 tightly."""
    q, k, v, cu = make_qkv(LENGTHS, 8, 2, d=64, device="cuda")
    assert A.choose_backend("cuda", torch.float32) in ("flex", "sdpa")
    want = out_and_grads(per_sequence_attention, q, k, v, cu)
    got = out_and_grads(lambda *a: A.varlen_attention(*a, 100), q, k, v, cu)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=2e-4, rtol=2e-4)


def test_one_varlen_kwargs_rule_for_training_and_fused_eval():
    from remix_ds.engine.loss import model_inputs

    assert A.VARLEN_KWARGS == ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    assert [A.takes_varlen_kwargs(n) for n in ("flash_attention_2", A.ATTN_NAME, "sdpa", "eager", None)] == \
        [True, True, False, False, False]
    batch = {"input_ids": 1, "position_ids": 2, "cu_seq_lens_q": 3, "cu_seq_lens_k": 3, "max_length_q": 4,
             "max_length_k": 4}
    assert set(model_inputs(batch, A.ATTN_NAME)) == {"input_ids", "position_ids", "use_cache", *A.VARLEN_KWARGS}
    assert set(model_inputs(batch, "sdpa")) == {"input_ids", "position_ids", "use_cache"}
