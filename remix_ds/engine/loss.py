"""The training loss: summed token cross-entropy over supervised positions of a packed batch.

Two paths, same number:

- plain: `model(...).logits` (R, T, V), upcast, `F.cross_entropy(reduction="sum")`.
- fused (`model.fused_loss`): the lm_head never produces logits. For the duration of one forward
  the lm_head module's `forward` is swapped for "chunked linear cross-entropy against this batch's
  labels" (remix_ds.kernels.linear_cross_entropy), so the model's own forward (and, for a
  DeepSpeed engine, `engine.forward` with its backward hooks) runs unchanged and hands back the
  summed loss where the logits would be. Running *as the lm_head's forward* is what makes it
  ZeRO-3-correct: DeepSpeed's module hooks gather the partitioned weight before it, release it
  after it, re-gather it for the backward and reduce-scatter its full gradient, exactly as for
  a plain `nn.Linear` call.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from remix_ds.kernels import attention as attention_kernels
from remix_ds.kernels.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy

# Config attributes of architectures whose logits are NOT lm_head(h) (softcapping, scaling): the
# fused loss would silently differ there, so `auto` stays off (and `on` is refused at run time).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_scaling")

# `remix_varlen` is selectable as `attn_implementation` once this module is imported (the trainer imports it).
attention_kernels.register()


def model_inputs(batch: dict, attn_implementation: str) -> dict:
    """Forward kwargs for a packed micro-batch.

    NOTE: `use_cache=False` is load-bearing. transformers 5 turns reset `position_ids` into a
    block-diagonal mask for sdpa/eager only when no KV cache is created; with a cache, packed
    examples silently attend to each other. Flash-attention (and `remix_varlen`) take the
    precomputed varlen boundaries instead.
    """
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if attention_kernels.takes_varlen_kwargs(attn_implementation):
        kwargs.update({k: batch[k] for k in attention_kernels.VARLEN_KWARGS})
    return kwargs


def _unwrap(model):
    """The Hugging Face model behind a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)


def fused_loss_supported(model) -> tuple[bool, str]:
    """Whether the fused loss is exact for this model: logits == lm_head(final hidden) with a bias-free Linear."""
    hf = _unwrap(model)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return False, f"output embedding is {type(head).__name__}, not nn.Linear"
    if head.bias is not None:
        return False, "lm_head has a bias"
    config = getattr(hf, "config", None)
    for name in LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 0, 0.0):
            return False, f"config.{name}={value} transforms the logits"
    return True, ""


def use_fused_loss(model, fused_loss: str) -> bool:
    """`off`: plain; `auto`: fused where exact (`fused_loss_supported`); `on`: fused or an error."""
    if fused_loss == "off":
        return False
    ok, why = fused_loss_supported(model)
    if fused_loss == "on" and not ok:
        raise ValueError(f"model.fused_loss=on is not exact for this model: {why} (use model.fused_loss=off)")
    if fused_loss not in ("on", "auto"):
        raise ValueError(f"model.fused_loss must be auto, on or off, got {fused_loss!r}")
    return ok


def supervised_rows(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, targets): flat positions into (R * T) whose logits predict a supervised token, and
    those tokens. Packed batches carry both, built at collation (`loss_index` / `loss_targets`),
    so gathering needs no device -> host sync; other batches get them from a boolean mask here."""
    if "loss_index" in batch:
        return batch["loss_index"], batch["loss_targets"]
    labels = batch["labels"]
    R, T = labels.shape
    supervised = labels[:, 1:] != IGNORE_INDEX  # (R, T-1): position t predicts labels[t + 1]
    rows, cols = supervised.nonzero(as_tuple=True)
    return rows * T + cols, labels[:, 1:][supervised]


@contextlib.contextmanager
def _lm_head_computes_loss(head: torch.nn.Linear, batch: dict, backend: str):
    """Swap `head.forward` for: final hidden (R, T, H) -> summed shifted cross-entropy against the batch's labels (R, T)."""
    labels = batch["labels"]
    index, targets = supervised_rows(batch)
    produced = {}

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[:2] != labels.shape:
            raise RuntimeError(f"fused loss: lm_head got {tuple(hidden.shape)}, expected all {tuple(labels.shape)} "
                               "positions; this model does not call lm_head once on the final hidden states "
                               "(use model.fused_loss=off)")
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)  # (M, H): only rows with a loss
        # head.weight is read here, inside the module call: under ZeRO-3 it is gathered right now.
        loss = linear_cross_entropy(h, head.weight, targets, IGNORE_INDEX, backend=backend, supervised_only=True)
        produced["loss"] = loss
        return loss

    own = head.__dict__.get("forward")  # an instance-level forward someone else installed, if any
    head.forward = forward
    try:
        yield produced
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def fused_token_loss_sum(model, batch: dict, attn_implementation: str, backend: str = "auto") -> torch.Tensor:
    """`token_loss_sum` without logits (see module docstring); `model` may be a DeepSpeed engine."""
    head = _unwrap(model).get_output_embeddings()
    with _lm_head_computes_loss(head, batch, backend) as produced:
        loss = model(**model_inputs(batch, attn_implementation)).logits
    mine = produced.get("loss")
    # DeepSpeed's hooks may hand back a detached-and-rewired view of our tensor (same storage);
    # anything else means the model transformed lm_head's output and the loss would be wrong.
    if mine is None or loss.shape != () or loss.untyped_storage().data_ptr() != mine.untyped_storage().data_ptr():
        raise RuntimeError("fused loss: the model post-processes lm_head's output; use model.fused_loss=off")
    return loss


def token_loss_sum(model, batch: dict, attn_implementation: str, fused_loss: str = "off") -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropy over positions whose label is not -100.

    Labels are unshifted (labels[t] is the token at t); position t predicts labels[t + 1]. The
    caller divides by the global supervised-token count of the optimizer step. `fused_loss`
    (`model.fused_loss`: auto/on/off) computes the same sum without materializing logits.
    """
    if use_fused_loss(model, fused_loss):
        return fused_token_loss_sum(model, batch, attn_implementation)
    logits = model(**model_inputs(batch, attn_implementation)).logits  # (R, T, V)
    index, targets = supervised_rows(batch)
    # Gather the supervised rows first (index_select, no sync), then upcast only those (M, V).
    picked = logits.reshape(-1, logits.size(-1)).index_select(0, index).float()
    return F.cross_entropy(picked, targets, reduction="sum")
