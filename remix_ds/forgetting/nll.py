"""Per-example NLL (the fused evaluator's pass) and base-model embeddings, on all ranks together.

``score_nll`` is ``remix_ds.eval.runner.evaluate`` reduced to what the matrix needs: items are
sharded round-robin over ranks, each rank runs ``score_fused`` (one teacher-forced pass, mean NLL
over each item's ``answer_ids``) on the gathered model, and the (N,) array is all-gathered, so
every rank returns the same values. For instruction examples it equals ``evaluate(...)`` rows'
``answer_nll`` (tested).

``embed``: an example's embedding is the mean, over all its tokens (prompt and answer, or the
whole window), of the base model's last hidden state (the decoder's ``last_hidden_state``: for
Llama-family models the final-norm output the LM head reads, equal to ``hidden_states[-1]``).
A task's embedding is the mean of its training examples' embeddings.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from remix_ds.engine import dist
from remix_ds.eval.config import EvalConfig
from remix_ds.eval.fused import num_fused_batches, score_fused
from remix_ds.eval.items import EvalItem
from remix_ds.eval.zero import eval_model, is_zero3, unwrap


def gather_by_index(pairs: list[tuple[int, np.ndarray]], n: int, width: int | None = None) -> np.ndarray:
    """Put (index, value) pairs of all ranks into one array in index order (same on all ranks)."""
    out = np.full((n,) if width is None else (n, width), np.nan)
    for part in dist.all_gather_objects(pairs):
        for i, v in part:
            out[i] = v
    return out


def lockstep(model, cfg: EvalConfig) -> bool:
    """True when every rank must run the same number of forward passes (a partitioned ZeRO-3 model across ranks)."""
    module, _ = unwrap(model)
    return (not cfg.gather_params) and is_zero3(module) and dist.world_size() > 1


def _fused_shard(model, items: Sequence[EvalItem], cfg: EvalConfig, pad_id: int, rank: int, world: int):
    """This rank's share of ``items`` through the fused pass (all ranks in lockstep under partitioned ZeRO-3)."""
    shard = [it for it in items if it.index % world == rank]
    n_steps = None
    if lockstep(model, cfg):
        module, _ = unwrap(model)
        n_steps = dist.all_reduce_max(num_fused_batches(module, shard, cfg.max_seq_len, cfg.max_batch_tokens))
    with eval_model(model, gather=cfg.gather_params) as m:
        return score_fused(m, shard, cfg.max_seq_len, cfg.max_batch_tokens, pad_id, n_steps=n_steps)


def score_nll(model, items: Sequence[EvalItem], cfg: EvalConfig, pad_id: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """(len(items),) float64 mean NLL over each item's counted tokens; ``items[c].index == c``."""
    results = _fused_shard(model, items, cfg, pad_id, rank, world)
    return gather_by_index([(r.index, r.answer_nll) for r in results], len(items))


def score_nll_em(model, items: Sequence[EvalItem], cfg: EvalConfig, pad_id: int, rank: int = 0,
                 world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``score_nll`` plus the fused pass's exact-match verdict of each item (argmax == gold at every
    counted position; the evaluator's ``fused_correct``) from the same pass: ((N,) NLL, (N,) bool EM).
    The binary forgetting matrix (forgetting/binary.py) is 1 - EM after on the base-correct items."""
    results = _fused_shard(model, items, cfg, pad_id, rank, world)
    both = gather_by_index([(r.index, np.array([r.answer_nll, float(r.correct)])) for r in results], len(items), 2)
    return both[:, 0], both[:, 1] == 1.0


def decoder(model):
    """The transformer under the LM head (its ``last_hidden_state`` is what the head reads).

    NOTE: we call it directly instead of asking the causal LM for ``output_hidden_states``:
    transformers 5 records hidden states with hooks it installs once, and the ZeRO-3 hook
    removal of ``eval_model`` on a bare module restores the hook dicts it saved, dropping them.
    """
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model


def pad_right(seqs: Sequence[np.ndarray], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) token ids padded on the right with ``pad_id`` and their (B, T) attention mask, on ``device``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def embed(model, sequences: Sequence[np.ndarray], cfg: EvalConfig, pad_id: int, batch_size: int = 16,
          rank: int = 0, world: int = 1) -> np.ndarray:
    """(len(sequences), H) float64: mean last hidden state over each sequence's tokens."""
    mine = [i for i in range(len(sequences)) if i % world == rank]
    mine.sort(key=lambda i: -len(sequences[i]))  # similar lengths per batch: little padding
    batches = [mine[s : s + batch_size] for s in range(0, len(mine), batch_size)]
    n_steps = dist.all_reduce_max(len(batches)) if lockstep(model, cfg) else len(batches)
    pairs: list[tuple[int, np.ndarray]] = []
    width = None
    with eval_model(model, gather=cfg.gather_params) as m:
        device = next(m.parameters()).device
        for b in range(n_steps):
            idx = batches[b] if b < len(batches) else []
            seqs = [sequences[i] for i in idx] or [np.array([pad_id])]  # a rank out of work stays in step
            ids, mask = pad_right(seqs, pad_id, device)
            hidden = decoder(m)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state.float()  # (B, T, H)
            mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, H)
            width = hidden.shape[-1]
            pairs += [(i, v) for i, v in zip(idx, mean.cpu().double().numpy())]
    width = dist.all_reduce_max(width or 0)
    return gather_by_index(pairs, len(sequences), width)
