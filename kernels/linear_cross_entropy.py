"""lm_head + cross-entropy without the full (tokens x vocab) logits: a chunked path beside its reference.

    hidden   (N, H)  final hidden states (after the last norm), model dtype
    weight   (V, H)  lm_head weight (no bias), model dtype
    target   (N,)    long, next-token ids; `ignore_index` (-100) where there is no loss
    returns  ()      fp32 SUM over kept rows of  logsumexp(z) - z[target],  z = (hidden @ weight.T).float()

The reference (`reference_linear_cross_entropy`) is exactly what the plain engine path computes:
`F.linear` in the model dtype, upcast to fp32, `F.cross_entropy(..., reduction="sum")`. It keeps
(N, V) logits, their fp32 copy, the log-softmax and the logits' gradient alive: for Llama-3's
V = 128,256 at N = 8,192 tokens each fp32 copy is 4.2 GB.

`chunked` (pure torch, any device; `ChunkedLinearCrossEntropy`) drops ignored rows first (with
answer-only labels most rows are prompt), then walks the kept rows in chunks of C rows. Per
chunk, z = (h_c @ W^T).float() (C, V), loss += sum(lse - z[t]), and since
d loss / d z = softmax(z) - onehot(t), the gradients are formed right away (the Liger-Kernel
trick, Hsu et al. 2024, "Liger Kernel: Efficient Triton Kernels for LLM Training", sec. 3):

    g_c = (softmax(z) - onehot(t)).to(dtype)      (C, V)   cast like autograd casts through .float()
    grad_hidden[rows_c] = g_c @ W                 (C, H)
    grad_weight        += g_c^T @ h_c             (V, H)   accumulated in fp32, cast at the end

The backward only scales the stored gradients by the incoming scalar, so neither pass keeps
full logits. Peak extra memory: about 2 chunks of (C, V) fp32 + grad_weight (V, H) (fp32 while
accumulating) + grad_hidden (N, H), instead of several (N, V) fp32 tensors. Chunks are sized so a
chunk's fp32 logits take at most `chunk_bytes` (default 256 MiB: 523 rows at V = 128,256). The
matmul work is the same 3 matmuls as the reference, but only over supervised rows.

`liger` (CUDA, `liger-kernel` installed): Liger-Kernel's `LigerFusedLinearCrossEntropyFunction`
(Triton), same maths, same contract.

Both compute the gradients in the forward, so they assume the loss will be backpropagated (the
training loop does); in `torch.no_grad()` or for inputs that don't require grad they skip it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

BACKENDS = ("liger", "chunked", "reference")
IGNORE_INDEX = -100
DEFAULT_CHUNK_BYTES = 256 * 2**20


def reference_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The plain path: full logits in the model dtype, upcast, summed cross-entropy."""
    logits = F.linear(hidden, weight).float()  # (N, V)
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")


def chunk_rows(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk's fp32 logits (C, V) take at most `chunk_bytes`."""
    return max(1, chunk_bytes // (4 * vocab_size))


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T`, loss and gradients chunk by chunk (see module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, target, ignore_index: int, chunk_size: int, supervised_only: bool = False):
        # Forward runs with grad mode off; needs_input_grad says what the caller's graph wants.
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if supervised_only:  # the caller selected the rows: no .nonzero() (a device -> host sync)
            keep = torch.arange(target.shape[0], device=target.device)
        else:
            keep = (target != ignore_index).nonzero().squeeze(1)  # (M,) supervised rows
        h = hidden.index_select(0, keep)  # (M, H)
        t = target.index_select(0, keep)  # (M,)
        grad_h = torch.zeros_like(hidden) if need_h else None
        # fp32 accumulation over chunks (one bf16 matmul over all rows also accumulates in fp32).
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, keep.numel(), chunk_size):
            h_c, t_c = h[s : s + chunk_size], t[s : s + chunk_size]
            z = F.linear(h_c, weight).float()  # (C, V), as the plain path's .float()
            lse = torch.logsumexp(z, dim=-1)  # (C,)
            loss += (lse - z.gather(1, t_c[:, None]).squeeze(1)).sum()
            if not (need_h or need_w):
                continue
            z.sub_(lse[:, None]).exp_()  # softmax, in place
            z[torch.arange(t_c.numel(), device=z.device), t_c] -= 1.0  # d loss / d z
            g = z.to(hidden.dtype)  # (C, V)
            del z
            if need_h:
                grad_h.index_copy_(0, keep[s : s + chunk_size], g @ weight)
            if need_w:
                if weight.dtype == torch.float32:
                    grad_w.addmm_(g.t(), h_c)
                else:
                    grad_w += g.t() @ h_c
        ctx.grad_h = grad_h
        ctx.grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.grad_h, ctx.grad_w
        ctx.grad_h = ctx.grad_w = None
        # In place: the stored gradients are ours alone, and a copy of grad_w is (V, H) more memory.
        if grad_h is not None:
            grad_h.mul_(grad_loss.to(grad_h.dtype))
        if grad_w is not None:
            grad_w.mul_(grad_loss.to(grad_w.dtype))
        return grad_h, grad_w, None, None, None, None


def chunked_linear_cross_entropy(hidden, weight, target, ignore_index: int = IGNORE_INDEX,
                                 chunk_size: int | None = None, supervised_only: bool = False) -> torch.Tensor:
    """Pure-torch chunked path (any device, any dtype)."""
    chunk = chunk_size or chunk_rows(weight.shape[0])
    return ChunkedLinearCrossEntropy.apply(hidden, weight, target, ignore_index, chunk, supervised_only)


def liger_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except ImportError:
        return False
    return True


def liger_linear_cross_entropy(hidden, weight, target, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Liger-Kernel's fused Triton kernel (CUDA), summed."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(hidden, weight, target, ignore_index=ignore_index, reduction="sum")
    loss = out[0] if isinstance(out, tuple) else out  # some versions return (loss, z_loss)
    return loss.float()


def choose_backend(device: torch.device | str, requested: str = "auto") -> str:
    """`auto`: liger on CUDA when liger-kernel imports, else chunked."""
    if requested == "auto":
        return "liger" if torch.device(device).type == "cuda" and liger_available() else "chunked"
    if requested not in BACKENDS:
        raise ValueError(f"unknown linear cross-entropy backend {requested!r}; one of auto, {', '.join(BACKENDS)}")
    if requested == "liger" and not (torch.device(device).type == "cuda" and liger_available()):
        raise ValueError("the liger backend needs CUDA and the liger-kernel package")
    return requested


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, backend: str = "auto",
                         chunk_size: int | None = None, supervised_only: bool = False) -> torch.Tensor:
    """Summed next-token cross-entropy of `hidden @ weight.T` (shapes in the module docstring).

    supervised_only: the caller promises no target equals ignore_index (it gathered the supervised
    rows itself), so no ignore scan runs: no `.nonzero()` / `.any()` device -> host sync.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or target.shape != hidden.shape[:1]:
        raise ValueError(f"shapes: hidden {tuple(hidden.shape)} (N, H), weight {tuple(weight.shape)} (V, H), "
                         f"target {tuple(target.shape)} (N,)")
    name = choose_backend(hidden.device, backend)
    if name == "reference":
        return reference_linear_cross_entropy(hidden, weight, target, ignore_index)
    # all-ignored rows: chunked returns 0 (liger would divide by zero); with supervised_only the
    # row count is known on the host
    has_rows = target.shape[0] > 0 if supervised_only else bool((target != ignore_index).any())
    if name == "liger" and has_rows:
        return liger_linear_cross_entropy(hidden, weight, target, ignore_index)
    return chunked_linear_cross_entropy(hidden, weight, target, ignore_index, chunk_size, supervised_only)
