"""Gradient-similarity features for the ``grad_sim`` predictor: per-example gradients of the mean
answer NLL with respect to the LM head weight, randomly projected to a few hundred dimensions.

The parameter subset is the LM head weight W (V, H) (logits = h W'). Its gradient has a closed
form, so no backward pass and no parameter gathering beyond the forward's are needed: with h_t
the last hidden state at position t - 1 and p_t = softmax(W h_t), the gradient of the mean NLL
over the counted tokens T is G = (1/|T|) sum_t (p_t - e_{y_t}) h_t' = E' H / |T| (V x H). We
never form G: the Kronecker-structured random projection (Gaussian R1 (V, d1), R2 (H, d2),
fixed by ``seed``)

    F = R1' G R2 / sqrt(d1 d2) = (E R1)' (H R2) / (|T| sqrt(d1 d2))      (d1 x d2, flattened)

preserves inner products in expectation (E <F, F'> = <G, G'>), and E R1 = p R1 - R1[y] costs
one (T, V) x (V, d1) product per sequence. Under ZeRO-3 the forward runs the way ``nll.embed``
runs it (``eval.zero.eval_model``: gathered once, or module by module in lockstep across ranks),
so the model is never materialized whole on one rank unless ``eval.gather_params`` asks for it;
the head's weight is gathered only while its own forward runs. This replaces the paper's TRAK
projection of full-model gradients (documented difference: a last-layer subset).

A task's feature is the mean of its training examples' features (like its embedding);
``grad_sim`` is the cosine of task and example features. ``lm_head_gradient_reference`` is the
plain autograd version (parity-tested).

``compute_features(fcfg)``: `remix-ds forgetting features CONFIG` on one process: the base model,
the upstream set, each task's first ``measure.embed_task_examples`` training examples ->
OUT/features.npz (store.save_features).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from remix_ds import models
from remix_ds.data import tokenize
from remix_ds.data.datasets import load_examples
from remix_ds.engine import dist
from remix_ds.eval.config import EvalConfig
from remix_ds.forgetting.config import ForgettingConfig
from remix_ds.forgetting.measure import upstream_for
from remix_ds.forgetting.nll import decoder, gather_by_index, lockstep, pad_right
from remix_ds.forgetting.store import save_features
from remix_ds.eval.zero import eval_model


def projections(vocab: int, hidden: int, dims: tuple[int, int], seed: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(R1 (V, d1), R2 (H, d2)) standard normal, float32, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    r1 = torch.randn(vocab, dims[0], generator=g)
    r2 = torch.randn(hidden, dims[1], generator=g)
    return r1.to(device), r2.to(device)


def _head(m):
    return m.get_output_embeddings()


@torch.no_grad()
def lm_head_gradients(model, pairs: Sequence[tuple[np.ndarray, np.ndarray]], cfg: EvalConfig, pad_id: int,
                      dims: tuple[int, int] = (16, 16), seed: int = 0, batch_size: int = 4, rank: int = 0,
                      world: int = 1) -> np.ndarray:
    """(len(pairs), d1 * d2) float64 projected LM-head gradients of each (prompt_ids, answer_ids)'s
    mean NLL over its answer tokens (see the module docstring); same on every rank."""
    mine = [i for i in range(len(pairs)) if i % world == rank]
    mine.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    batches = [mine[s : s + batch_size] for s in range(0, len(mine), batch_size)]
    n_steps = dist.all_reduce_max(len(batches)) if lockstep(model, cfg) else len(batches)
    out: list[tuple[int, np.ndarray]] = []
    with eval_model(model, gather=cfg.gather_params) as m:
        device = next(m.parameters()).device
        r1 = r2 = None
        for b in range(n_steps):
            idx = batches[b] if b < len(batches) else []
            seqs = [np.concatenate([pairs[i][0], pairs[i][1]]) for i in idx] or [np.array([pad_id, pad_id])]
            starts = [len(pairs[i][0]) for i in idx] or [1]
            ids, mask = pad_right(seqs, pad_id, device)
            hidden = decoder(m)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, T, H)
            logits = _head(m)(hidden).float()  # (B, T, V)
            if r1 is None:
                r1, r2 = projections(logits.shape[-1], hidden.shape[-1], dims, seed, device)
            probs_r1 = torch.softmax(logits, -1) @ r1  # (B, T, d1)
            h_r2 = hidden.float() @ r2  # (B, T, H) x (H, d2) -> (B, T, d2)
            for r, i in enumerate(idx):
                # counted targets: answer tokens at positions start..L-1, predicted from positions start-1..L-2
                lo, hi = max(starts[r], 1), len(seqs[r])
                pos = torch.arange(lo - 1, hi - 1, device=device)
                e_r1 = probs_r1[r, pos] - r1[ids[r, lo:hi]]  # (|T|, d1)
                f = e_r1.T @ h_r2[r, pos] / (len(pos) * np.sqrt(dims[0] * dims[1]))  # (d1, d2)
                out.append((i, f.reshape(-1).double().cpu().numpy()))
    return gather_by_index(out, len(pairs), dims[0] * dims[1])


def lm_head_gradient_reference(model, prompt_ids: np.ndarray, answer_ids: np.ndarray, dims: tuple[int, int],
                               seed: int = 0) -> np.ndarray:
    """The same feature by autograd on the full gradient G (V, H) of one sequence (a plain
    reference for tests: materializes G)."""
    ids = torch.as_tensor(np.concatenate([prompt_ids, answer_ids]).astype(np.int64))[None]
    with torch.no_grad():
        hidden = decoder(model)(input_ids=ids, use_cache=False).last_hidden_state[0].float()  # (L, H)
    W = _head(model).weight.detach().float().clone().requires_grad_(True)  # (V, H)
    lo = max(len(prompt_ids), 1)
    logits = hidden[lo - 1 : -1] @ W.T
    loss = torch.nn.functional.cross_entropy(logits, ids[0, lo:])
    (G,) = torch.autograd.grad(loss, W)
    r1, r2 = projections(W.shape[0], W.shape[1], dims, seed)
    return (r1.T @ G @ r2 / np.sqrt(dims[0] * dims[1])).reshape(-1).double().numpy()


def task_pairs(fcfg: ForgettingConfig, task, tokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
    """The task's first measure.embed_task_examples training examples as (prompt_ids, answer_ids)."""
    examples = load_examples(task, split="train")[: fcfg.measure.embed_task_examples]
    enc = tokenize.encode_prompt_answer(examples, tokenizer, fcfg.finetune.data.prompt_format)
    return [(e.prompt_ids, e.answer_ids) for e in enc]


def compute_features(fcfg: ForgettingConfig, dims: tuple[int, int] = (16, 16), seed: int = 0, log=print) -> Path:
    """OUT/features.npz for the study (one process; see the module docstring)."""
    fcfg.require_tasks()
    t0 = time.perf_counter()
    upstream, tokenizer = upstream_for(fcfg)
    m = fcfg.finetune.model
    model = models.load_for_inference(models.model_source(m), tiny=m.tiny, trust_remote_code=m.trust_remote_code)
    pad = tokenize.pad_id(tokenizer)
    ev, bs = fcfg.finetune.eval, fcfg.measure.embed_batch_size
    up = lm_head_gradients(model, [(it.prompt_ids, it.answer_ids) for it in upstream.items], ev, pad, dims, seed, bs)
    tasks = np.stack([lm_head_gradients(model, task_pairs(fcfg, t, tokenizer), ev, pad, dims, seed, bs).mean(0)
                      for t in fcfg.tasks])
    path = Path(fcfg.output_dir) / "features.npz"
    save_features(path, fcfg.task_names(), upstream.ids, tasks, up)
    log(f"[forgetting] features: {len(fcfg.tasks)} tasks, {len(upstream)} upstream examples, "
        f"{dims[0] * dims[1]} dims ({time.perf_counter() - t0:.1f}s)")
    return path
