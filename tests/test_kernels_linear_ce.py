"""Chunked lm_head + cross-entropy against the plain path: loss, grad of hidden and of the weight.

Tolerances: fp64 1e-12 relative (the loss itself goes through fp32 like the plain path, so
fp64 inputs are compared at fp32 precision: 1e-6); fp32 1e-5; bf16 within 2 bf16 ulps of the
largest gradient entry (both paths round the (C, V) logit gradient to bf16 before the matmuls).
"""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from remix_ds.kernels import linear_cross_entropy as LCE

CUDA = torch.cuda.is_available()


def make_inputs(n, h, v, dtype=torch.float32, ignore_every=3, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) * h**-0.5).to(device, dtype).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g).to(device)
    if ignore_every:
        target[::ignore_every] = -100  # prompt positions
    return hidden, weight, target


def loss_and_grads(fn, hidden, weight, target, scale=0.37):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, target)
    (loss * scale).backward()  # the engine backpropagates loss * world / N, not 1
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


CASES = [  # (N, H, V, chunk rows, ignore every k-th)
    (37, 24, 101, 5, 3),  # odd shapes, chunks that do not divide the rows
    (64, 16, 1000, 1, 2),  # one row per chunk
    (50, 8, 77, 1000, 0),  # one chunk, nothing ignored
    (9, 8, 33, 4, 1),  # every row ignored: loss 0, zero grads
]


@pytest.mark.parametrize("n,h,v,chunk,ignore", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_chunked_matches_reference(n, h, v, chunk, ignore, dtype, tol):
    inputs = make_inputs(n, h, v, dtype, ignore)
    want = loss_and_grads(LCE.reference_linear_cross_entropy, *inputs)
    got = loss_and_grads(lambda *a: LCE.linear_cross_entropy(*a, backend="chunked", chunk_size=chunk), *inputs)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    for name, w, g in zip(("loss", "grad_hidden", "grad_weight"), want, got):
        torch.testing.assert_close(g.to(w.dtype), w, atol=tol, rtol=tol, msg=name)
    if ignore == 1:
        assert got[0].item() == 0.0 and not got[1].any() and not got[2].any()
    else:
        assert got[0].item() > 0 and got[1].abs().sum() > 0
        if ignore:  # ignored rows get exactly zero gradient
            assert not got[1][::ignore].any()


def test_chunked_matches_reference_bf16():
    inputs = make_inputs(53, 32, 257, torch.bfloat16)
    want = loss_and_grads(LCE.reference_linear_cross_entropy, *inputs)
    got = loss_and_grads(lambda *a: LCE.linear_cross_entropy(*a, backend="chunked", chunk_size=7), *inputs)
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=0)
    for w, g in zip(want[1:], got[1:]):
        assert g.dtype == torch.bfloat16
        assert (g.float() - w.float()).abs().max() <= 2 * 2**-7 * w.float().abs().max()


def test_no_grad_inputs_give_loss_only():
    hidden, weight, target = make_inputs(20, 8, 50)
    with torch.no_grad():
        got = LCE.linear_cross_entropy(hidden, weight, target, backend="chunked", chunk_size=3)
        want = LCE.reference_linear_cross_entropy(hidden, weight, target)
    torch.testing.assert_close(got, want)


class LargestTensor(TorchDispatchMode):
    """Largest tensor (elements) any op produced while active: forward and backward."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_full_logits_never_exist():
    n, h, v, chunk = 96, 8, 500, 16
    inputs = make_inputs(n, h, v, ignore_every=0)
    for fn, bound in ((LCE.reference_linear_cross_entropy, None), (lambda *a: LCE.chunked_linear_cross_entropy(*a, chunk_size=chunk), chunk * v)):
        inputs[0].grad = inputs[1].grad = None
        with LargestTensor() as mode:
            fn(*inputs).backward()
        if bound is None:
            assert mode.largest == n * v  # the plain path builds (N, V) logits
        else:
            assert mode.largest == max(bound, v * h)  # a (C, V) chunk or the (V, H) weight grad


def test_chunk_rows_budget():
    assert LCE.chunk_rows(128_256) == 523  # 256 MiB of fp32 logits per chunk at Llama-3's vocabulary
    assert LCE.chunk_rows(10, chunk_bytes=1) == 1
    with pytest.raises(ValueError, match="shapes"):
        LCE.linear_cross_entropy(torch.zeros(4, 3), torch.zeros(5, 2), torch.zeros(4, dtype=torch.long))
    assert LCE.choose_backend("cpu") == "chunked"
    with pytest.raises(ValueError, match="liger"):
        LCE.choose_backend("cpu", "liger")


# ---- the engine's loss ------------------------------------------------------------------------
def answer_only_batch(seed=0, lengths=(2, 7, 33, 100, 20, 61)):
    from remix_ds.data.packing import pack
    from remix_ds.data.tokenize import TokenizedExample

    rng = np.random.default_rng(seed)
    examples = []
    for i, n in enumerate(lengths):
        ids = rng.integers(3, 2000, n).astype(np.int32)
        labels = ids.copy()
        labels[: max(1, n * 2 // 3)] = -100  # prompt: no loss
        examples.append(TokenizedExample(str(i), ids, labels))
    return pack(examples, 128, pad_id=0)


def engine_loss_and_grads(model, batch, fused):
    from remix_ds.engine.loss import token_loss_sum

    model.zero_grad()
    loss = token_loss_sum(model, batch, "sdpa", fused)
    (loss / batch["num_supervised"]).backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_engine_fused_loss_matches_plain(tiny_model):
    batch = answer_only_batch()
    assert 0 < batch["num_supervised"] < batch["num_tokens"] / 2
    plain, g_plain = engine_loss_and_grads(tiny_model, batch, "off")
    for mode in ("on", "auto"):
        fused, g_fused = engine_loss_and_grads(tiny_model, batch, mode)
        assert fused == pytest.approx(plain, rel=1e-6)
        for name in g_plain:  # every parameter, lm_head and embeddings included
            torch.testing.assert_close(g_fused[name], g_plain[name], atol=1e-6, rtol=1e-4, msg=name)
    assert "forward" not in tiny_model.lm_head.__dict__  # the swap is undone
    assert tiny_model(input_ids=batch["input_ids"][:1, :5], use_cache=False).logits.shape == (1, 5, 2048)


def test_auto_is_off_where_not_exact(tiny_model, monkeypatch):
    from remix_ds.engine.loss import fused_loss_supported, use_fused_loss

    assert fused_loss_supported(tiny_model) == (True, "")
    assert use_fused_loss(tiny_model, "auto") and use_fused_loss(tiny_model, "on") and not use_fused_loss(tiny_model, "off")
    monkeypatch.setattr(tiny_model.config, "final_logit_softcapping", 30.0, raising=False)
    assert not use_fused_loss(tiny_model, "auto")
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        use_fused_loss(tiny_model, "on")


def test_fused_loss_refuses_models_that_transform_logits(tiny_model):
    from types import SimpleNamespace

    from remix_ds.engine.loss import token_loss_sum

    class Doubled(torch.nn.Module):  # looks like a plain causal LM, but scales its logits
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, **kw):
            return SimpleNamespace(logits=self.inner(**kw).logits * 2)

    with pytest.raises(RuntimeError, match="post-processes"):
        token_loss_sum(Doubled(tiny_model), answer_only_batch(), "sdpa", "on")
    assert "forward" not in tiny_model.lm_head.__dict__


def test_mini_training_converges_the_same(tiny_model):
    """A few AdamW steps from the same init: per-step losses with the fused loss on == off."""
    from remix_ds.engine.loss import token_loss_sum

    init = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    batches = [answer_only_batch(seed=s, lengths=(30, 41, 25, 60)) for s in range(2)]
    curves = {}
    for mode in ("off", "on"):
        tiny_model.load_state_dict(init)
        opt = torch.optim.AdamW(tiny_model.parameters(), lr=3e-3)
        losses = []
        for step in range(5):
            b = batches[step % 2]
            opt.zero_grad()
            loss = token_loss_sum(tiny_model, b, "sdpa", mode)
            (loss / b["num_supervised"]).backward()
            opt.step()
            losses.append(loss.item() / b["num_supervised"])
        curves[mode] = losses
    tiny_model.load_state_dict(init)
    np.testing.assert_allclose(curves["on"], curves["off"], rtol=2e-5)
    assert curves["off"][4] < curves["off"][0] - 0.5  # it does learn (batch 0 seen 3 times)


@pytest.mark.skipif(not (CUDA and LCE.liger_available()), reason="needs CUDA and liger-kernel")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_liger_matches_reference_gpu(dtype):
    inputs = make_inputs(517, 256, 32_003, dtype, device="cuda")
    want = loss_and_grads(LCE.reference_linear_cross_entropy, *inputs)
    got = loss_and_grads(lambda *a: LCE.linear_cross_entropy(*a, backend="liger"), *inputs)
    torch.testing.assert_close(got[0], want[0], rtol=1e-3 if dtype == torch.bfloat16 else 1e-5, atol=0)
    for w, g in zip(want[1:], got[1:]):
        assert (g.float() - w.float()).abs().max() <= (2 * 2**-7 if dtype == torch.bfloat16 else 1e-4) * w.float().abs().max()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_matches_reference_gpu(dtype):
    inputs = make_inputs(1031, 512, 50_001, dtype, device="cuda")
    want = loss_and_grads(LCE.reference_linear_cross_entropy, *inputs)
    got = loss_and_grads(lambda *a: LCE.linear_cross_entropy(*a, backend="chunked", chunk_size=100), *inputs)
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=0)
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    for w, g in zip(want[1:], got[1:]):
        assert (g.float() - w.float()).abs().max() <= 2 * ulp * w.float().abs().max()
