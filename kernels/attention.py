"""Causal attention over packed (varlen) batches: one dispatch, a reference beside every fast path.

A packed micro-batch (remix_ds/data/packing.py) holds several examples end to end per row; each
example attends causally to itself only (block-diagonal causal attention). Layout of the flat
API (flash-attn's varlen layout):

    q            (N, Hq, D)    N = all tokens of all rows, flattened
    k, v         (N, Hkv, D)   Hq % Hkv == 0 (grouped-query attention: query head h reads kv head h // (Hq/Hkv))
    cu_seqlens   (S + 1,) int32, cumulative lengths of the S sequences (0, ..., N), the collator's
                 `cu_seq_lens_q` (== `cu_seq_lens_k`: self-attention)
    max_seqlen   int, the longest sequence
    returns      (N, Hq, D), softmax(q k^T * scale + block-causal mask) v

Backends, fastest first (`choose_backend`):

- `flash_attn`: `flash_attn.flash_attn_varlen_func(causal=True)`; CUDA, fp16/bf16, flash-attn installed.
- `torch_varlen`: `torch.nn.attention.varlen.varlen_attn` (PyTorch's own flash kernel, torch >= 2.9);
  CUDA, fp16/bf16.
- `flex`: `torch.nn.attention.flex_attention` with a document mask from `create_block_mask`
  (compiled on CUDA; any dtype). On CPU it runs forward-only and unfused (tests use it for parity).
- `sdpa`: the reference. `F.scaled_dot_product_attention` with a dense block-diagonal causal
  boolean mask per row, (R, 1, T, T); exact everywhere, O(T^2) memory per row.

All four compute the same function; they differ by floating-point summation order only.

Sliding windows (Mistral, Qwen2 `sliding_attention` layers): token i sees token j of its own
sequence iff ``i - window < j <= i`` (transformers' `sliding_window_overlay`). A sequence no longer
than the window is unaffected, so when every packed sequence fits, every backend runs unchanged.
When one does not, `sdpa` and `flex` apply the window inside each document; `flash_attn` and
`torch_varlen` raise `WINDOW_ERROR` naming the window and the longest sequence.

Hugging Face integration: `register()` adds `remix_varlen` to transformers 5's `AttentionInterface`
(and nothing to `AttentionMaskInterface`, so transformers builds no dense mask for it), so
`from_pretrained(..., attn_implementation="remix_varlen")` or `model.set_attn_implementation("remix_varlen")`
routes every attention layer through `remix_varlen_attention_forward`, which reads the collator's
`cu_seq_lens_q` kwarg when present and otherwise derives the sequences from `position_ids`
(a new sequence wherever a position is not the previous one + 1, as transformers does).
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

ATTN_NAME = "remix_varlen"
BACKENDS = ("flash_attn", "torch_varlen", "flex", "sdpa")
_HALF = (torch.float16, torch.bfloat16)
# Forward kwargs carrying a packed batch's sequence boundaries, and the attention implementations
# that read them (others get the block-diagonal mask transformers derives from position_ids).
VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
VARLEN_IMPLEMENTATIONS = ("flash_attention_2", ATTN_NAME)


class SlidingWindowError(ValueError):
    """A packed sequence is longer than the model's sliding window on a backend without windows."""


# What the window check raises; `register(window_error=...)` lets the caller substitute its own
# user-facing error class (remix_ds.models passes a RemixError subclass: one line in the CLI).
WINDOW_ERROR: type[Exception] = SlidingWindowError
WINDOWED_BACKENDS = ("flex", "sdpa")


def effective_window(window: int | None, max_seqlen: int, backend: str) -> int | None:
    """The window a backend must apply: None when every sequence fits it (nothing to mask), the
    window for `flex`/`sdpa`; raises `WINDOW_ERROR` for the backends that cannot apply one."""
    if not window or max_seqlen <= window:
        return None
    if backend in WINDOWED_BACKENDS:
        return int(window)
    raise WINDOW_ERROR(f"sliding window {window} is shorter than the longest packed sequence ({max_seqlen} tokens) "
                       f"and the {backend} attention backend cannot apply it; use sequences of at most {window} "
                       f"tokens (data.max_seq_len) or the flex backend")


def takes_varlen_kwargs(attn_implementation: str | None) -> bool:
    """Whether a packed forward passes ``VARLEN_KWARGS`` to a model using this attention implementation."""
    return attn_implementation in VARLEN_IMPLEMENTATIONS


# ---- sequence bookkeeping ----------------------------------------------------------------------
def segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(N,) long: index of the sequence each flattened token belongs to."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths, output_size=total)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(R, T) position ids -> (cu_seqlens (S + 1,) int32 over the flattened rows, max_seqlen).

    A sequence starts at every row start and wherever position != previous position + 1, which
    is how the packer lays rows out (the pad tail counts up from 0: one sequence).
    """
    rows, t = position_ids.shape
    start = torch.ones_like(position_ids, dtype=torch.bool)
    start[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    starts = start.reshape(-1).nonzero().squeeze(1)
    cu = torch.cat([starts, starts.new_tensor([rows * t])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())  # NOTE: host sync; flash-attn wants an int anyway


def _repeat_kv(x: torch.Tensor, groups: int, head_dim: int) -> torch.Tensor:
    """Expand kv heads for GQA along `head_dim` (kv head j serves query heads j*groups .. j*groups+groups-1)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=head_dim)


# ---- reference ---------------------------------------------------------------------------------
def block_causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: torch.Tensor,
                      scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """Reference on rows: q (R, Hq, T, D), k/v (R, Hkv, T, D), seg (R, T) sequence ids -> (R, Hq, T, D).

    Token i attends to token j iff seg[i] == seg[j] and j <= i (a dense (R, 1, T, T) bool mask),
    and i - j < window when a window is given. Every token attends at least to itself, so no
    softmax row is empty.
    """
    groups = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, groups, 1), _repeat_kv(v, groups, 1)
    t = q.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    if window:
        causal = causal & ~torch.ones(t, t, dtype=torch.bool, device=q.device).tril(-int(window))
    mask = (seg[:, :, None] == seg[:, None, :]) & causal  # (R, T, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scale)


def sdpa_varlen(q, k, v, cu_seqlens, max_seqlen=None, scale=None, window=None):
    """Reference in the flat layout: the whole batch as one row with a block-diagonal causal mask."""
    seg = segment_ids(cu_seqlens, q.shape[0])[None]  # (1, N)
    out = block_causal_sdpa(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], seg, scale,
                            window)
    return out[0].transpose(0, 1)  # (N, Hq, D)


# ---- fast paths --------------------------------------------------------------------------------
def flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """flash-attn 2/3 varlen kernel (GQA native)."""
    from flash_attn import flash_attn_varlen_func

    cu = cu_seqlens.to(torch.int32)
    return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, softmax_scale=scale, causal=True)


@functools.lru_cache(maxsize=1)
def _torch_varlen_fn():
    """PyTorch's `varlen_attn` and how this version spells "causal" (its signature changed across releases)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, {}
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None, {}
    return varlen_attn, {"causal": causal, "gqa": "enable_gqa" in params}


def torch_varlen(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """`torch.nn.attention.varlen.varlen_attn` (flash kernel shipped with PyTorch; CUDA fp16/bf16)."""
    fn, spec = _torch_varlen_fn()
    if fn is None:
        raise RuntimeError("torch.nn.attention.varlen.varlen_attn is not available in this PyTorch")
    kwargs = dict(spec["causal"], scale=scale)
    if spec["gqa"]:
        kwargs["enable_gqa"] = q.shape[1] != k.shape[1]
    else:
        groups = q.shape[1] // k.shape[1]
        k, v = _repeat_kv(k, groups, 1), _repeat_kv(v, groups, 1)
    cu = cu_seqlens.to(torch.int32)
    return fn(q, k, v, cu, cu, max_seqlen, max_seqlen, **kwargs)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Unfused (eager) flex materializes the scores; compiled it is a fused kernel.
    return torch.compile(flex_attention)


def flex_rows(q, k, v, seg, scale=None, window=None):
    """flex_attention on rows with a document mask: q (R, Hq, T, D), k/v (R, Hkv, T, D), seg (R, T);
    with a window, token i also needs i - j < window (inside each document, as the reference)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if window:
        w = int(window)

        def document_causal(b, h, q_idx, kv_idx):
            return (seg[b, q_idx] == seg[b, kv_idx]) & (q_idx >= kv_idx) & (q_idx - kv_idx < w)
    else:
        def document_causal(b, h, q_idx, kv_idx):
            return (seg[b, q_idx] == seg[b, kv_idx]) & (q_idx >= kv_idx)

    r, _, t, _ = q.shape
    on_cuda = q.is_cuda
    block_mask = create_block_mask(document_causal, B=r, H=None, Q_LEN=t, KV_LEN=t, device=q.device, _compile=on_cuda)
    fn = _compiled_flex() if on_cuda else flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def flex_varlen(q, k, v, cu_seqlens, max_seqlen=None, scale=None, window=None):
    seg = segment_ids(cu_seqlens, q.shape[0])[None]
    out = flex_rows(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], seg, scale, window)
    return out[0].transpose(0, 1)


_FLAT = {"flash_attn": flash_attn_varlen, "torch_varlen": torch_varlen, "flex": flex_varlen, "sdpa": sdpa_varlen}


# ---- dispatch ----------------------------------------------------------------------------------
def _flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _flex_installed() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    """Backends that can run (forward and backward) on this device and dtype, fastest first."""
    device = torch.device(device)
    found = []
    if device.type == "cuda":
        if dtype in _HALF and _flash_attn_installed():
            found.append("flash_attn")
        if dtype in _HALF and _torch_varlen_fn()[0] is not None:
            found.append("torch_varlen")
        if _flex_installed():
            found.append("flex")
    found.append("sdpa")
    return found


def choose_backend(device: torch.device | str, dtype: torch.dtype, requested: str = "auto") -> str:
    """`auto`: the first of `available_backends`; a named backend is checked and returned as is."""
    if requested == "auto":
        return available_backends(device, dtype)[0]
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; one of auto, {', '.join(BACKENDS)}")
    if requested == "flex" and torch.device(device).type == "cpu":
        return requested  # forward-only on CPU; allowed for parity checks
    if requested not in available_backends(device, dtype):
        raise ValueError(f"attention backend {requested!r} is not available for {dtype} on {torch.device(device).type}")
    return requested


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, scale: float | None = None, backend: str = "auto",
                     window: int | None = None) -> torch.Tensor:
    """Block-diagonal causal attention in the flat layout (see the module docstring for shapes);
    ``window``: a sliding window (see the module docstring)."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} not a multiple of kv heads {k.shape[1]}")
    name = choose_backend(q.device, q.dtype, backend)
    w = effective_window(window, int(max_seqlen), name)
    if w is not None:
        return _FLAT[name](q, k, v, cu_seqlens, int(max_seqlen), scale, window=w)
    return _FLAT[name](q, k, v, cu_seqlens, int(max_seqlen), scale)


# ---- transformers AttentionInterface -----------------------------------------------------------
# Backend the registered function uses; `auto` picks per call from device and dtype. Tests set it.
HF_BACKEND = "auto"


def remix_varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                   value: torch.Tensor, attention_mask: torch.Tensor | None,
                                   dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers 5 attention function: query (R, Hq, T, D), key/value (R, Hkv, T, D) (after RoPE)
    -> ((R, T, Hq, D), None), like `sdpa_attention_forward`.

    Sequences come from `cu_seq_lens_q` (+ `max_length_q`) when the caller passes them (the engine
    does), else from `position_ids`. Padding masks are not supported: packed batches have none.
    """
    if attention_mask is not None:
        raise ValueError(f"{ATTN_NAME} takes packed batches without an attention mask (pass position_ids)")
    if dropout:
        raise NotImplementedError(f"{ATTN_NAME} has no attention dropout (got {dropout})")
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    r, hq, t, d = query.shape
    cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(t, device=query.device).expand(r, t)
        cu, max_len = cu_seqlens_from_position_ids(position_ids.expand(r, t))
    cu = cu.to(query.device)
    name = choose_backend(query.device, query.dtype, HF_BACKEND)
    if window:  # NOTE: host sync only for windowed models; every sequence fitting the window changes nothing
        if max_len is None:
            max_len = int((cu[1:] - cu[:-1]).max())
        window = effective_window(window, int(max_len), name)
    if name in ("sdpa", "flex"):  # row layout: masks stay (R, T, T), never (N, N)
        seg = segment_ids(cu, r * t).view(r, t)
        rows = block_causal_sdpa if name == "sdpa" else flex_rows
        out = rows(query, key, value, seg, scaling, window)  # (R, Hq, T, D)
        return out.transpose(1, 2).contiguous(), None
    flat = lambda x: x.transpose(1, 2).reshape(r * t, x.shape[1], d)  # noqa: E731  (N, H, D)
    if max_len is None:
        max_len = int((cu[1:] - cu[:-1]).max())
    out = _FLAT[name](flat(query), flat(key), flat(value), cu, int(max_len), scaling)
    return out.view(r, t, hq, d), None


def register(name: str = ATTN_NAME, window_error: type[Exception] | None = None) -> str:
    """Register `remix_varlen_attention_forward` under `name` in transformers' AttentionInterface (idempotent).

    window_error: the exception class the sliding-window check raises (a subclass of ValueError)."""
    global WINDOW_ERROR
    from transformers import AttentionInterface

    if window_error is not None:
        WINDOW_ERROR = window_error
    AttentionInterface.register(name, remix_varlen_attention_forward)
    return name
