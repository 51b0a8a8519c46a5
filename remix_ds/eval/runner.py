"""Evaluate a model on a set of examples: shard over ranks, fused and/or generation path,
gather on rank 0, rows + metrics.

Contract of :func:`evaluate` (called on *all* ranks together):

- examples are sharded round-robin (example i on rank ``i % world_size``), every rank scores its
  shard, rows are gathered on rank 0 and put back in input order, so the rows equal a
  single-process run's (verdicts exactly; NLLs up to float reduction order);
- ``EvalResult.rows`` is the full list on rank 0 and empty elsewhere; ``metrics`` is the same
  dict on every rank.

Row fields (one per example, also the JSONL schema): ``id``, ``source``, ``prompt``, ``gold``,
``prediction``, ``correct``, ``answer_nll`` (mean NLL per answer token incl. EOS),
``answer_logprob`` (sum), ``n_answer_tokens``, ``verdict`` (`fused` or `generate`: which path
decided ``correct``), ``matcher``, ``fused_correct``, ``first_error``, ``min_margin``, and for
generated rows ``generated_correct`` and ``stop_reason``. Examples with marked key spans
(``[[...]]``, `eval.key_span_delimiters`) are scored without the markers and add ``span_correct``
and ``span_nll`` (one entry per span; the fused verdict teacher-forced up to the span's start, and
the span's mean token NLL); the metrics then add ``span_acc``, ``span_nll`` and ``n_spans``.

``prediction`` is the generated text for generated rows. For fused rows it is the greedy
prefix the fused pass proves: the gold answer when correct, else the gold prefix plus the first
wrong argmax token (greedy decoding would continue past it; run `generate` for the full text).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from remix_ds.data.fingerprint import short
from remix_ds.data.records import Example
from remix_ds.data.tokenize import pad_id
from remix_ds.engine import dist
from remix_ds.eval import matchers
from remix_ds.eval.config import EvalConfig
from remix_ds.eval.fused import FusedResult, num_fused_batches, score_fused
from remix_ds.eval.generate import Generation, generate_greedy
from remix_ds.eval.items import EvalItem, make_items, stop_token_ids
from remix_ds.eval.zero import eval_model, is_zero3, unwrap


@dataclass
class EvalResult:
    rows: list[dict]
    """Per-example rows in input order (rank 0; empty on other ranks)."""
    metrics: dict[str, float]
    """Aggregates, identical on every rank: em, answer_nll, answer_logprob, n, ..."""


def roundtrip_ok(item: EvalItem, tokenizer) -> bool:
    """Do the gold answer tokens decode back to the gold string (after strip().lower())? If not
    (lossy tokenizer normalization), a fused "correct" would not be a string match."""
    text = tokenizer.decode(item.answer_ids[:-1].tolist(), skip_special_tokens=True)
    return matchers.remix_normalize(text) == matchers.remix_normalize(item.gold)


def uses_generation(item: EvalItem, cfg: EvalConfig, tokenizer) -> tuple[str, bool]:
    """(matcher, whether generation decides the verdict) for one item. ``auto`` uses the fused
    verdict only where it is exact: single-gold REMIX EM and gold tokens that round-trip."""
    kind = matchers.matcher_for_source(item.source, cfg.matcher)
    if cfg.mode == "generate":
        return kind, True
    if cfg.mode == "fused":
        return kind, False
    aliases = [a for a in item.aliases if a != item.gold] if cfg.use_aliases else []
    return kind, not (matchers.fused_is_exact(kind, aliases, cfg.normalize) and roundtrip_ok(item, tokenizer))


def _row(item: EvalItem, fused: FusedResult, gen: Generation | None, kind: str, cfg: EvalConfig, tokenizer) -> dict:
    row = {
        "id": item.id,
        "source": item.source,
        "prompt": item.prompt,
        "gold": item.gold,
        "prediction": None,
        "correct": fused.correct,
        "answer_nll": fused.answer_nll,
        "answer_logprob": fused.answer_logprob,
        "n_answer_tokens": len(item.answer_ids),
        "verdict": "fused",
        "matcher": "token" if gen is None else kind,
        "fused_correct": fused.correct,
        "first_error": fused.first_error,
        "min_margin": fused.min_margin,
    }
    if item.spans:
        row.update(span_correct=fused.span_correct, span_nll=fused.span_nll)
    if gen is None:
        row["prediction"] = tokenizer.decode(fused.greedy_prefix, skip_special_tokens=True)
    else:
        aliases = item.aliases if cfg.use_aliases else ()
        ok = matchers.is_correct(gen.text, item.gold, kind, aliases, cfg.normalize)
        row.update(prediction=gen.text, correct=ok, verdict="generate", generated_correct=ok, stop_reason=gen.stop_reason)
    return row


def metrics_of(rows: Sequence[dict]) -> dict[str, float]:
    """em, answer_nll (mean over examples of the per-token mean), answer_logprob, n, and the
    fused/generation agreement where both ran."""
    n = len(rows)
    if n == 0:
        return {"n": 0.0}
    out = {
        "em": sum(r["correct"] for r in rows) / n,
        "answer_nll": sum(r["answer_nll"] for r in rows) / n,
        "answer_logprob": sum(r["answer_logprob"] for r in rows) / n,
        "fused_em": sum(r["fused_correct"] for r in rows) / n,
        "n": float(n),
    }
    spans = [(c, nll) for r in rows for c, nll in zip(r.get("span_correct", ()), r.get("span_nll", ()))]
    if spans:
        # NOTE: over spans, not examples: an answer with three facts counts three times.
        out["span_acc"] = sum(c for c, _ in spans) / len(spans)
        out["span_nll"] = sum(nll for _, nll in spans) / len(spans)
        out["n_spans"] = float(len(spans))
    gen = [r for r in rows if r["verdict"] == "generate"]
    if gen:
        out["n_generated"] = float(len(gen))
        out["fused_generate_agreement"] = sum(r["fused_correct"] == r["correct"] for r in gen) / len(gen)
    return out


def evaluate(model, tokenizer, examples: Sequence[Example], cfg: EvalConfig, rank: int = 0, world_size: int = 1,
             prompt_format: str = "plain") -> EvalResult:
    """Score ``examples`` with ``model`` (HF module or DeepSpeed engine, ZeRO-3 or not) on all ranks."""
    shard = [(i, ex) for i, ex in enumerate(examples) if i % world_size == rank]
    items = make_items([ex for _, ex in shard], tokenizer, prompt_format, key_span_delimiters=cfg.key_span_delimiters)
    for (i, _), it in zip(shard, items):
        it.index = i
    # Stop tokens and generation decisions must be the same on all ranks: derive from all items'
    # final tokens on this rank, then union across ranks.
    stops = _union_over_ranks(stop_token_ids(items, tokenizer))
    decide = [uses_generation(it, cfg, tokenizer) for it in items]
    gen_items = [it for it, (_, g) in zip(items, decide) if g]
    pad = pad_id(tokenizer)

    module, _ = unwrap(model)
    # A partitioned model that stays partitioned all-gathers inside every forward: ranks must
    # run the same number of forward passes (and generation steps).
    lockstep = (not cfg.gather_params) and is_zero3(module) and world_size > 1
    n_fused = dist.all_reduce_max(num_fused_batches(module, items, cfg.max_seq_len, cfg.max_batch_tokens)) if lockstep else None
    n_gen_local = math.ceil(len(gen_items) / cfg.batch_size)
    n_gen = dist.all_reduce_max(n_gen_local) if lockstep else n_gen_local
    with eval_model(model, gather=cfg.gather_params) as m:
        fused = score_fused(m, items, cfg.max_seq_len, cfg.max_batch_tokens, pad, n_steps=n_fused)
        gens: list[Generation] = []
        if n_gen:
            gens = generate_greedy(m, tokenizer, gen_items, cfg.batch_size, cfg.max_new_tokens, cfg.stop_strings,
                                   n_steps=n_gen if lockstep else None, synced=lockstep, eos_ids=stops)
    by_index = {g.index: g for g in gens}
    rows = [(it.index, _row(it, f, by_index.get(it.index), kind, cfg, tokenizer))
            for it, f, (kind, _) in zip(items, fused, decide)]
    all_rows = _gather_rows(rows)
    # Every rank holds all rows after the all-gather, so metrics are computed identically everywhere.
    return EvalResult(rows=all_rows if rank == 0 else [], metrics=metrics_of(all_rows))


def _union_over_ranks(ids: list[int]) -> list[int]:
    return sorted(set().union(*dist.all_gather_objects(ids)))


def _gather_rows(rows: list[tuple[int, dict]]) -> list[dict]:
    merged = [r for part in dist.all_gather_objects(rows) for r in part]
    return [r for _, r in sorted(merged, key=lambda x: x[0])]


# ---- a run's eval results: RUN/eval/step-N/NAME.jsonl (written by the eval hook, read by the grid) ----
def step_dir(eval_dir: str | Path, step: int) -> Path:
    """The folder of step `step`'s results under a run's eval folder (RUN/eval): ``step-N``."""
    return Path(eval_dir) / f"step-{step}"


def rows_file(folder: str | Path, name: str) -> Path:
    """The per-example rows file of set `name` in a results folder (what `write_results` writes)."""
    return Path(folder) / f"{name.replace('/', '_').replace(':', '_')}.jsonl"


def eval_steps(run_dir: str | Path, name: str) -> list[tuple[int, Path]]:
    """(step, rows file) of every eval of set `name` in a run folder, by step."""
    found = ((int(p.name.split("-")[1]), rows_file(p, name)) for p in (Path(run_dir) / "eval").glob("step-*"))
    return sorted((step, f) for step, f in found if f.is_file())


def read_rows(path: str | Path) -> list[dict]:
    """The per-example rows of a rows file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def latest_eval_rows(run_dir: str | Path, name: str) -> tuple[int, list[dict]]:
    """(step, per-example rows) of the newest eval of set `name` in a run folder."""
    steps = eval_steps(run_dir, name)
    if not steps:
        raise FileNotFoundError(f"no eval rows of {name!r} under {run_dir}/eval")
    step, path = steps[-1]
    return step, read_rows(path)


def write_results(result: EvalResult, out_dir: str | Path, name: str, extra: dict | None = None,
                  fingerprint: dict | None = None) -> Path:
    """``OUT/NAME.jsonl`` (one row per example) and ``OUT/NAME.metrics.json``. Call on rank 0.

    fingerprint: the scored set's `data_fingerprint`; recorded whole in the metrics file
    (``data_fingerprint``) and in short form on every row (``data_fingerprint``: NAME:COUNT:HASH12).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = rows_file(out, name)
    tag = {"data_fingerprint": short(fingerprint)} if fingerprint else {}
    with path.open("w", encoding="utf-8") as f:
        for row in result.rows:
            f.write(json.dumps({**row, **tag}, ensure_ascii=False) + "\n")
    meta = {**(extra or {}), **({"data_fingerprint": fingerprint} if fingerprint else {})}
    path.with_name(f"{path.stem}.metrics.json").write_text(json.dumps({**meta, **result.metrics}, indent=2) + "\n")
    return path
