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
prints the supervised fraction; the same for every replay entry trained in `surprise` mode (its
rows as the stage stream builds them, masked against the stage's starting model, so a replayed
fact the model still predicts costs no update). Every rank computes the same file (the base model whole on each
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
from remix_ds.data.replay_rows import replay_pool
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


def _file_identity(path: str) -> dict:
    import hashlib

    return {"path": str(Path(path).resolve()), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def prepare_surprise_mask(cfg: RunConfig, log=print) -> Path | None:
    """Compute (or find) the stage's surprise masks and point ``cfg.data.surprise_mask`` (and each
    surprise-mode replay entry's ``surprise_mask``) at them; returns the stage data's mask path."""
    d = cfg.data
    stage = d.loss_mode == "surprise" and not d.surprise_mask
    replays = [(i, r) for i, r in enumerate(d.replay) if (r.loss_mode or d.loss_mode) == "surprise" and not r.surprise_mask]
    if not (stage or replays):
        return Path(d.surprise_mask) if d.surprise_mask else None
    if cfg.model.init_from and models.is_deepspeed_checkpoint(cfg.model.init_from):
        from remix_ds.configtools import ConfigError

        raise ConfigError("data.loss_mode=surprise: model.init_from is a DeepSpeed checkpoint; "
                          "export it first (`remix-ds export CKPT OUT`) and start from OUT")
    source = models.model_source(cfg.model)
    tokenizer = models.load_tokenizer(cfg.model.tokenizer or source, cfg.model.tiny, cfg.model.trust_remote_code)
    common = {"model": _model_identity(source), "tokenizer": cfg.model.tokenizer or source,
              "threshold": d.surprise_threshold, "eos": d.surprise_eos, "prompt_format": d.prompt_format,
              "max_seq_len": d.max_seq_len}
    loaded = []  # the base model, loaded once for every mask not in the cache

    def mask(name: str, data_key: dict, rows) -> Path:
        path = mask_path(name, {"data": data_key, **common})
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_name(f".{path.name}.lock")):  # ranks, jobs and grids sharing it compute it once
            if not path.is_file():
                toks = rows()
                if not loaded:
                    loaded.append(models.load_for_inference(source, dtype=cfg.model.dtype, tiny=cfg.model.tiny,
                                                            trust_remote_code=cfg.model.trust_remote_code))
                keeps = surprise_keep(loaded[0], tokenizer, toks, d.surprise_threshold, d.surprise_eos)
                total = sum(len(k) for k in keeps)
                kept = int(sum(int(k.sum()) for k in keeps))
                write_mask(path, [t.id for t in toks], keeps, {"data": data_key, **common, "supervised": kept,
                                                                "answer_tokens": total,
                                                                "fraction": kept / total if total else 0.0})
        return path

    def report(what: str, path: Path) -> None:
        _, _, meta = read_mask(path)
        if os.environ.get("RANK", "0") == "0":
            log(f"[remix-ds] surprise mask {what}{path}: {meta['supervised']} of {meta['answer_tokens']} answer tokens "
                f"supervised ({meta['fraction']:.1%}; the base model already predicts the rest)")

    path = None
    if stage:
        examples = load_examples(d.source(), d.kvr, "train")
        path = mask(d.dataset, data_fingerprint(d.dataset, examples, source_params(d.source(), d.kvr, "train")),
                    lambda: tokenize_examples(examples, tokenizer, mode="answer", prompt_format=d.prompt_format,
                                              max_len=d.max_seq_len).examples)
        report("", path)
        d.surprise_mask = str(path)
    for i, r in replays:
        # NOTE: the replayed rows exactly as the stage stream builds them (replay_pool), masked
        # against the model this stage starts from: only what it no longer predicts is replayed.
        if Path(r.dataset).suffix.lower() == ".npz":
            key = {"windows": _file_identity(r.dataset)}
        else:
            examples = load_examples(r.source(), d.kvr, "train")
            key = data_fingerprint(r.dataset, examples, source_params(r.source(), d.kvr, "train"))
        rpath = mask(r.dataset, key, lambda: replay_pool(d, r, tokenizer, f"data.replay[{i}]")[0])
        report(f"for data.replay[{i}] ", rpath)
        r.surprise_mask = str(rpath)
    if loaded:
        del loaded[0]
        gc.collect()
    return path if path is not None else (Path(d.surprise_mask) if d.surprise_mask else None)
