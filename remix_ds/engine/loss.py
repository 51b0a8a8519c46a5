"""The training loss: summed token cross-entropy over supervised positions of a packed batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def model_inputs(batch: dict, attn_implementation: str) -> dict:
    """Forward kwargs for a packed micro-batch.

    NOTE: `use_cache=False` is load-bearing. transformers 5 turns reset `position_ids` into a
    block-diagonal mask for sdpa/eager only when no KV cache is created; with a cache, packed
    examples silently attend to each other. Flash-attention takes the precomputed varlen
    boundaries instead.
    """
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if attn_implementation == "flash_attention_2":
        kwargs.update({k: batch[k] for k in FLASH_KWARGS})
    return kwargs


def token_loss_sum(model, batch: dict, attn_implementation: str) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropy over positions whose label is not -100.

    Labels are unshifted (labels[t] is the token at t); position t predicts labels[t + 1]. The
    caller divides by the global supervised-token count of the optimizer step.
    """
    logits = model(**model_inputs(batch, attn_implementation)).logits  # (R, T, V)
    logits = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum")
