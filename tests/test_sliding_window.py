"""Sliding-window models on the packed attention paths (CPU).

- every packed sequence fits the window: `remix_varlen` runs unchanged and equals the model's own
  sdpa packed mask (Llama, Qwen2 and Mistral; Mistral-7B v0.1's window 4096 at 2048-token rows);
- a sequence longer than the window: the reference and flex apply the window inside each
  document (exactly the model's own sliding-window mask), the other backends raise one line.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from remix_ds import models
from remix_ds.errors import RemixError
from remix_ds.kernels import attention as A


def per_sequence_window(q, k, v, cu, window):
    """The obvious definition: each sequence alone, causal, token i sees j iff i - window < j <= i."""
    groups = q.shape[1] // k.shape[1]
    outs = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        i = torch.arange(e - s)
        mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).transpose(0, 1))
    return torch.cat(outs)


def qkv(lengths, hq=4, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    q, k, v = (torch.randn(n, h, d, generator=g, dtype=torch.float64) for h in (hq, hkv, hkv))
    return q, k, v, torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_window_inside_each_document(backend):
    q, k, v, cu = qkv([1, 7, 33, 100])
    want = per_sequence_window(q, k, v, cu, window=8)
    with torch.no_grad():
        got = A.varlen_attention(q, k, v, cu, 100, backend=backend, window=8)
        full = A.varlen_attention(q, k, v, cu, 100, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert (got - full).abs().max() > 1e-3  # the window matters for the long sequences
    # a window no shorter than the longest sequence changes nothing
    torch.testing.assert_close(A.varlen_attention(q, k, v, cu, 100, backend=backend, window=100), full,
                               atol=1e-12, rtol=0)


def test_backends_without_window_fail_in_one_line():
    models.register_attention()
    assert A.effective_window(4096, 2048, "flash_attn") is None  # fits: unchanged
    assert A.effective_window(None, 9999, "torch_varlen") is None
    assert A.effective_window(64, 100, "flex") == 64
    for backend in ("flash_attn", "torch_varlen"):
        with pytest.raises(RemixError) as e:
            A.effective_window(64, 100, backend)
        msg = str(e.value)
        assert "\n" not in msg and "sliding window 64" in msg and "100 tokens" in msg and backend in msg
        assert isinstance(e.value, A.SlidingWindowError)


def build(arch: str, window: int | None, max_pos: int = 4096):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, \
        Qwen2ForCausalLM

    common = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=max_pos, tie_word_embeddings=False)
    if arch == "llama":
        cfg, cls = LlamaConfig(**common), LlamaForCausalLM
    elif arch == "mistral":
        cfg, cls = MistralConfig(**common, sliding_window=window), MistralForCausalLM
    else:
        cfg, cls = Qwen2Config(**common, sliding_window=window, use_sliding_window=window is not None,
                               max_window_layers=0), Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg._attn_implementation = "sdpa"
    ref = cls(cfg).eval()
    fast = copy.deepcopy(ref)
    models.register_attention()
    fast.set_attn_implementation(A.ATTN_NAME)
    return ref, fast


def packed(lengths, row_len, vocab=256, seed=0):
    from remix_ds.data.packing import pack
    from remix_ds.data.tokenize import TokenizedExample

    rng = np.random.default_rng(seed)
    examples = []
    for i, n in enumerate(lengths):
        ids = rng.integers(3, vocab, n).astype(np.int32)
        labels = ids.copy()
        labels[: n // 2] = -100
        examples.append(TokenizedExample(str(i), ids, labels))
    return pack(examples, row_len, pad_id=0)


def logits_and_grads(model, batch, extra):
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **extra).logits
    logits.float().pow(2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch,window", [("llama", None), ("qwen2", 4096), ("mistral", 4096)])
def test_packed_matches_model_sdpa_at_2048_token_rows(arch, window):
    """Stock Mistral-7B v0.1 geometry (window 4096) at 2048-token rows: remix_varlen == the model's sdpa."""
    ref, fast = build(arch, window)
    if window:
        assert fast.config.sliding_window == window
    batch = packed([1200, 848, 1000, 1040], 2048)  # a full row and one with a pad tail
    assert batch["input_ids"].shape == (2, 2048)
    extra = {k: batch[k] for k in ("cu_seq_lens_q", "max_length_q")}
    l_ref, g_ref = logits_and_grads(ref, batch, {})
    l_fast, g_fast = logits_and_grads(fast, batch, extra)
    torch.testing.assert_close(l_fast, l_ref, atol=1e-5, rtol=1e-5)
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_window_shorter_than_sequences_matches_model_mask(arch, backend, monkeypatch):
    """Window 16 over sequences up to 100 tokens: reference and flex == the model's own sliding mask (eager and sdpa)."""
    ref, fast = build(arch, 16, max_pos=256)
    eager = copy.deepcopy(ref)
    eager.set_attn_implementation("eager")
    batch = packed([2, 7, 33, 100, 20, 61], 128)
    monkeypatch.setattr(A, "HF_BACKEND", backend)
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad():
        want = ref(**kwargs).logits
        want_eager = eager(**kwargs).logits
        got = fast(**kwargs).logits
        full = build(arch, None, max_pos=256)[0]  # same architecture without a window
        full.load_state_dict(ref.state_dict())
        unwindowed = full(**kwargs).logits
    torch.testing.assert_close(want_eager, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (unwindowed - want).abs().max() > 1e-3  # the window is really applied


CUDA = torch.cuda.is_available()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_compiled_flex_applies_the_window():
    q, k, v, cu = (x.cuda() for x in qkv([1, 7, 33, 100, 300]))
    want = A.varlen_attention(q, k, v, cu, 300, backend="sdpa", window=64)  # fp64 reference
    got = A.varlen_attention(*(x.bfloat16() for x in (q, k, v)), cu, 300, backend="flex", window=64)
    torch.testing.assert_close(got.double(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_mistral_window_4096_runs_on_the_fast_backend_at_2048_token_rows():
    ref, fast = build("mistral", 4096)
    ref, fast = ref.cuda().bfloat16(), fast.cuda().bfloat16()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in packed([1200, 848, 1000, 1040], 2048).items()}
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad():
        want = ref(**kwargs).logits.float()
        got = fast(**kwargs, cu_seq_lens_q=batch["cu_seq_lens_q"], max_length_q=batch["max_length_q"]).logits.float()
    torch.testing.assert_close(got, want, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("arch,window", [("llama", None), ("qwen2", 16), ("mistral", 16), ("mistral", 4096)])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_packed_equals_each_example_alone(arch, window, backend, monkeypatch):
    """Packed through remix_varlen == every example run alone through the model's own attention
    (its sliding window included): packing changes nothing, windowed or not."""
    ref, fast = build(arch, window, max_pos=256)
    lengths = [2, 7, 33, 100, 20, 61]
    batch = packed(lengths, 128)
    monkeypatch.setattr(A, "HF_BACKEND", backend)
    with torch.no_grad():
        got = fast(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        seg = A.segment_ids(batch["cu_seq_lens_q"], got.shape[0] * got.shape[1]).view(got.shape[:2])
        ids, checked = batch["input_ids"], 0
        for r in range(ids.shape[0]):
            for s in seg[r].unique().tolist():
                cols = (seg[r] == s).nonzero().squeeze(1)
                if batch["position_ids"][r, cols[0]] != 0 or len(cols) not in lengths:
                    continue
                alone = ref(input_ids=ids[r, cols][None], use_cache=False).logits[0]
                torch.testing.assert_close(got[r, cols], alone, atol=1e-5, rtol=1e-5)
                checked += 1
    assert checked >= len(lengths)
