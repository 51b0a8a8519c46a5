"""Generation evaluator: batched greedy decoding (Hugging Face ``generate``, KV cache, left padding).

Used where a string matcher needs the generated text (normalization, aliases, WebQA containment,
GSM8K/MATH extraction) and as the cross-check of the fused path. Prompts are the same token ids
the fused path scores (`EvalItem.prompt_ids`). Decoding stops at the tokenizer's EOS (the token
training appends to every answer), at a stop string, or after ``max_new_tokens``.

The model must be whole on this rank (see ``zero.gathered_for_eval``), except with
``synced=True``, where every rank runs the same number of ``generate`` calls and steps
(HF ``synced_gpus``) so a partitioned ZeRO-3 model can gather its layers on every forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from remix_ds.data.tokenize import pad_id
from remix_ds.eval.items import EvalItem, dummy_item


@dataclass
class Generation:
    """Greedy output for one example."""

    index: int
    token_ids: list[int]
    """New tokens up to (not including) the first EOS."""
    text: str
    """Decoded new tokens (special tokens skipped), cut before the first stop string."""
    stop_reason: str
    """`eos`, `stop_string` or `length`."""


def _generation_config(tokenizer, max_new_tokens: int, stop_strings: Sequence[str], eos_ids: Sequence[int]):
    from transformers import GenerationConfig

    # A fresh config: the model's own may ask for sampling (temperature/top_p) or other EOS ids.
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_id(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        stop_strings=list(stop_strings) or None,
        use_cache=True,  # the trainer turns the model's use_cache off
    )


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def cut_output(tokens: list[int], tokenizer, eos_ids: Sequence[int], stop_strings: Sequence[str]) -> Generation:
    """Cut new tokens at the first EOS, then the text at the earliest stop string."""
    reason = "length"
    ends = [i for i, t in enumerate(tokens) if t in eos_ids]
    if ends:
        tokens = tokens[: ends[0]]
        reason = "eos"
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    hits = [text.find(s) for s in stop_strings if s and s in text]
    if hits:
        text = text[: min(hits)]
        reason = "stop_string"
    return Generation(index=-1, token_ids=tokens, text=text, stop_reason=reason)


@torch.no_grad()
def generate_greedy(model, tokenizer, items: Sequence[EvalItem], batch_size: int, max_new_tokens: int,
                    stop_strings: Sequence[str] = (), n_steps: int | None = None, synced: bool = False,
                    eos_ids: Sequence[int] | None = None) -> list[Generation]:
    """Greedy outputs for ``items``, sorted by ``index``.

    eos_ids: tokens that end an answer (default: the tokenizer's EOS).
    n_steps: run exactly this many ``generate`` calls (repeat a placeholder, results dropped);
    with ``synced`` each call also keeps stepping until every rank is done (HF ``synced_gpus``).
    """
    device = next(model.parameters()).device
    eos_ids = list(eos_ids) if eos_ids else [tokenizer.eos_token_id]
    gen_cfg = _generation_config(tokenizer, max_new_tokens, stop_strings, eos_ids)
    pad_id = gen_cfg.pad_token_id
    # Similar prompt lengths per batch: less left padding.
    order = sorted(items, key=lambda it: (len(it.prompt_ids), it.index))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if n_steps is not None:
        batches += [[dummy_item(tokenizer.eos_token_id)]] * (n_steps - len(batches))
    out: list[Generation] = []
    for batch in batches:
        ids, mask = _left_pad([it.prompt_ids.tolist() for it in batch], pad_id, device)
        seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                              tokenizer=tokenizer if stop_strings else None, synced_gpus=synced)
        new = seqs[:, ids.shape[1] :].tolist()  # (B, <= max_new_tokens)
        for it, toks in zip(batch, new):
            if it.index < 0:
                continue  # placeholder
            g = cut_output(toks, tokenizer, eos_ids, stop_strings)
            g.index = it.index
            out.append(g)
    return sorted(out, key=lambda g: g.index)
