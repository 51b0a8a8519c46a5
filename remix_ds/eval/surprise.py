"""Compute `loss_mode: surprise` masks with the frozen base model's fused pass (once, before training).

An `answer`-mode supervised token (answer tokens and EOS) stays supervised when the base model
does not already predict it under teacher forcing: its argmax is not the gold token, or
p(gold) < `data.surprise_threshold`; with `data.surprise_eos` every EOS stays supervised too.
The pass is the evaluator's (`eval.fused.score_fused`): each training sequence is one item whose
"answer" is everything after its first token, and every supervised position is a one-token span,
so a span's verdict is "argmax == gold" and its NLL is -log p(gold) at that position.

`prepare_surprise_mask(cfg)` is what entry points call before building the Trainer: it computes
the mask unless the cache (`data.surprise.mask_path`, keyed by the data fingerprint, the base
model, the tokenizer and the settings) already holds it, sets `cfg.data.surprise_mask`, and
prints the supervised fraction. Every rank computes the same file (the base model whole on each
rank, freed before the engine is built); the atomic rename makes concurrent writes safe.
"""

from __future__ import annotations

import gc
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from filelock import FileLock

from remix_ds import models
from remix_ds.config import RunConfig
from remix_ds.data.datasets import load_examples
from remix_ds.data.fingerprint import data_fingerprint, source_params
from remix_ds.data.surprise import mask_path, read_mask, write_mask
from remix_ds.data.tokenize import IGNORE, TokenizedExample, eos_id, pad_id, tokenize_examples
from remix_ds.eval.fused import score_fused
from remix_ds.eval.items import EvalItem


def surprise_keep(model, tokenizer, examples: Sequence[TokenizedExample], threshold: float, keep_eos: bool,
                  max_batch_tokens: int = 8192) -> list[np.ndarray]:
    """Per example, one bool per supervised position: True where the base model does not predict it."""
    items = []
    for i, ex in enumerate(examples):
        ids = ex.input_ids.astype(np.int64)
        sup = np.flatnonzero(ex.labels != IGNORE)
        items.append(EvalItem(index=i, id=ex.id, source="", prompt="", gold="", aliases=(), prompt_ids=ids[:1],
                              answer_ids=ids[1:], spans=tuple((int(j) - 1, int(j)) for j in sup)))
    longest = max((it.length for it in items), default=1)
    results = score_fused(model, items, 0, max(max_batch_tokens, longest), pad_id(tokenizer))
    # p(gold) < threshold  <=>  nll > -log(threshold)
    limit = math.inf if threshold <= 0 else -math.log(threshold)
    eos = eos_id(tokenizer)
    out = []
    for ex, r in zip(examples, results):
        wrong = ~np.asarray(r.span_correct, dtype=bool)
        unsure = np.asarray(r.span_nll, dtype=np.float64) > limit
        keep = wrong | unsure
        if keep_eos:
            keep |= ex.input_ids[ex.labels != IGNORE] == eos
        out.append(keep)
    return out


def _model_identity(source: str) -> dict:
    path = Path(source)
    if (path / "config.json").is_file():
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        return {"path": str(path.resolve()), "weights": [(w.name, w.stat().st_size, int(w.stat().st_mtime)) for w in weights]}
    return {"path": source}


def _compute_mask(cfg: RunConfig, source: str, tokenizer, examples, key: dict, path: Path) -> None:
    d = cfg.data
    toks = tokenize_examples(examples, tokenizer, mode="answer", prompt_format=d.prompt_format,
                             max_len=d.max_seq_len).examples
    model = models.load_for_inference(source, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code,
                                      tiny=cfg.model.tiny)
    keeps = surprise_keep(model, tokenizer, toks, d.surprise_threshold, d.surprise_eos)
    del model
    gc.collect()
    total = sum(len(k) for k in keeps)
    kept = int(sum(int(k.sum()) for k in keeps))
    write_mask(path, [t.id for t in toks], keeps, {**key, "supervised": kept, "answer_tokens": total,
                                                    "fraction": kept / total if total else 0.0})


def prepare_surprise_mask(cfg: RunConfig, log=print) -> Path | None:
    """Compute (or find) the stage's surprise mask and point ``cfg.data.surprise_mask`` at it."""
    d = cfg.data
    if d.loss_mode != "surprise" or d.surprise_mask:
        return Path(d.surprise_mask) if d.surprise_mask else None
    if cfg.model.init_from and models.is_deepspeed_checkpoint(cfg.model.init_from):
        from remix_ds.configtools import ConfigError

        raise ConfigError("data.loss_mode=surprise: model.init_from is a DeepSpeed checkpoint; "
                          "export it first (`remix-ds export CKPT OUT`) and start from OUT")
    source = models.model_source(cfg.model)
    tokenizer = models.load_tokenizer(cfg.model.tokenizer or source, cfg.model.tiny, cfg.model.trust_remote_code)
    examples = load_examples(d.source(), d.kvr, "train")
    key = {"data": data_fingerprint(d.dataset, examples, source_params(d.source(), d.kvr, "train")),
           "model": _model_identity(source), "tokenizer": cfg.model.tokenizer or source,
           "threshold": d.surprise_threshold, "eos": d.surprise_eos, "prompt_format": d.prompt_format,
           "max_seq_len": d.max_seq_len}
    path = mask_path(d.dataset, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):  # ranks, jobs and grids sharing it compute it once
        if not path.is_file():
            _compute_mask(cfg, source, tokenizer, examples, key, path)
    _, _, meta = read_mask(path)
    if os.environ.get("RANK", "0") == "0":
        log(f"[remix-ds] surprise mask {path}: {meta['supervised']} of {meta['answer_tokens']} answer tokens "
            f"supervised ({meta['fraction']:.1%}; the base model already predicts the rest)")
    d.surprise_mask = str(path)
    return path
