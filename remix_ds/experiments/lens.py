"""Logit lens: at which layer does a memorized factoid's answer become the top-1 prediction?

For each example we run the prompt once, read the residual stream at the last prompt position
(the position whose next-token prediction is the answer's first token) after the embeddings
(layer 0) and after every decoder layer l = 1..L, and project each through the model's final
norm and unembedding (nostalgebraist's logit lens). The last layer's projection is exactly the
model's own logits there, so its top-1 is the model's greedy first answer token.

Per example we record the gold first token's probability and rank-1 flag per layer, the
*recall layer* (the earliest layer from which the gold token stays top-1 through the last layer;
None when it is not top-1 at the end) and the first layer where it is top-1 at all.

Works on any Llama-style HF causal LM (`model.model.layers`, `model.model.norm`,
`get_output_embeddings()`), on a DeepSpeed engine or a ZeRO-3-partitioned module: parameters are
gathered once with the evaluator's `eval_model` context (call on all ranks together).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from remix_ds.data.records import Example
from remix_ds.eval.items import make_items
from remix_ds.eval.zero import eval_model


def _parts(model):
    base = getattr(model, "model", None) or model.get_decoder()
    layers, norm = getattr(base, "layers", None), getattr(base, "norm", None)
    if layers is None or norm is None:
        raise TypeError(f"logit lens needs a Llama-style model with .model.layers and .model.norm, got {type(model).__name__}")
    return layers, norm, model.get_output_embeddings()


@torch.no_grad()
def layer_logits(model, prompts: Sequence[np.ndarray]) -> torch.Tensor:
    """Lens logits (N, L+1, V) at the last position of each prompt; `model` is a plain, whole HF module."""
    layers, norm, head = _parts(model)
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # right padding: a causal model's earlier positions ignore it
        ids[i, : len(p)] = torch.as_tensor(p, dtype=torch.long)
    last = torch.tensor([len(p) - 1 for p in prompts])
    captured: list[torch.Tensor] = []

    def grab(h):
        h = h[0] if isinstance(h, tuple) else h
        captured.append(h[torch.arange(len(prompts)), last.to(h.device)].float())  # (N, H)

    def pre(_, args, kwargs):
        grab(args[0] if args else kwargs["hidden_states"])

    handles = [layers[0].register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [layer.register_forward_hook(lambda _m, _a, out: grab(out)) for layer in layers]
    try:
        logits = model(input_ids=ids.to(device), use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    resid = torch.stack(captured, dim=1)  # (N, L+1, H)
    dtype = head.weight.dtype
    lens = head(norm(resid.to(dtype))).float()  # (N, L+1, V)
    # The last entry is the model's own output at that position (kept exact: take it from the forward).
    lens[:, -1] = logits[torch.arange(len(prompts)), last.to(logits.device)].float()
    return lens


def logit_lens(model, tokenizer, examples: Sequence[Example], prompt_format: str = "plain", batch_size: int = 16,
               gather: bool = True) -> list[dict]:
    """One row per example: id, gold_token, prob (per layer), top1 (per layer), recall_layer, first_top1_layer."""
    items = make_items(list(examples), tokenizer, prompt_format)
    rows = []
    with eval_model(model, gather=gather) as m:
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            lens = layer_logits(m, [it.prompt_ids for it in chunk])
            probs = torch.softmax(lens, dim=-1)
            top = lens.argmax(-1)  # (N, L+1)
            for it, p, t in zip(chunk, probs, top):
                gold = int(it.answer_ids[0])
                hit = (t == gold).tolist()
                recall = None
                if hit[-1]:
                    recall = len(hit) - 1
                    while recall > 0 and hit[recall - 1]:
                        recall -= 1
                rows.append({
                    "id": it.id, "gold_token": gold, "prob": p[:, gold].tolist(), "top1": t.tolist(),
                    "recall_layer": recall, "first_top1_layer": hit.index(True) if any(hit) else None,
                })
    return rows


def summarize(rows: Sequence[dict]) -> dict:
    """Mean and spread of the recall layer over examples recalled at the last layer, mean prob per layer."""
    layers = [r["recall_layer"] for r in rows if r["recall_layer"] is not None]
    n_layers = len(rows[0]["prob"]) if rows else 0
    mean = sum(layers) / len(layers) if layers else math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in layers) / len(layers)) if layers else math.nan
    return {
        "n": len(rows),
        "n_recalled": len(layers),
        "recall_layer_mean": mean,
        "recall_layer_std": std,
        "num_layers": n_layers - 1,
        "mean_prob_per_layer": [float(np.mean([r["prob"][l] for r in rows])) for l in range(n_layers)] if rows else [],
        "top1_rate_per_layer": [float(np.mean([r["top1"][l] == r["gold_token"] for r in rows])) for l in range(n_layers)] if rows else [],
    }
