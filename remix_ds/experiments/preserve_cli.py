"""``remix-ds preserve BASE TUNED --bench SET [--bench ...]``: did fine-tuning change the answers?

    remix-ds preserve BASE TUNED --bench NAME_OR_FILE[:heldout] [--bench ...] [--out DIR] [--n N]
                      [--max-new-tokens N] [--data-config RUN] [--set eval.KEY=V|data.KEY=V ...]

BASE and TUNED are HF folders, hub ids, ``tiny``, run folders or checkpoints (as ``remix-ds eval``
takes them; run folders and checkpoints are exported once). Each set (a jsonl with prompt/answer,
or any registered dataset, e.g. ``popqa:heldout``) is answered greedily by both models, one model
in memory at a time, and compared with `remix_ds.experiments.preserve_bench`: identical answers,
EM of each with McNemar's paired test, gold-answer NLL drift, the changed examples.
``--bench generic``: the generic corpus's (built-in by default) held-out preservation passages (never trained: the
grid's `datasets.PRESERVE_SLOTS`) as continuations in the completion format generic mixing trains
(prompt: ``data.mix.prompt_words`` words, gold: the next ``data.mix.answer_words``, capped to the 64
words of a passage: 48 + 16 by default; ``--n`` passages, default 32): identical continuations and the gold continuation's NLL drift.
Named sets load with TUNED's data settings (its run config or remix_ds_data.json) unless
``--data-config`` says otherwise; every set's `data_fingerprint` is in the report.
Writes ``OUT/preserve.json`` and ``OUT/preserve.md`` (default OUT: ``./preserve-out``).
Under a launcher (``deepspeed --num_gpus N --module remix_ds.cli preserve ...``, or torchrun) each
model is loaded partitioned with ZeRO-3 (`remix_ds.eval.zero.load_zero3`: no rank holds it whole)
and every forward of the greedy answers and the NLL pass runs with all ranks taking part (ranks
with fewer examples run placeholder passes, as the evaluator does for ``eval.gather_params=false``);
``--gather`` instead gathers the whole model on each rank once per set (faster when it fits on one
device), ``--replicate`` loads it whole on every rank (small models). Examples are sharded over
ranks either way and rank 0 writes the one report, the same as a single process's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from remix_ds import configtools, models
from remix_ds.configtools import ConfigError
from remix_ds.engine import dist
from remix_ds.eval.commands import resolve_model, resolve_run_config
from remix_ds.eval.config import EvalConfig
from remix_ds.data.fingerprint import data_fingerprint
from remix_ds.data.generic import completion_examples
from remix_ds.eval.data import EvalSet, load_eval_set
from remix_ds.experiments.datasets import ELIGIBLE_WORDS, PRESERVE_SLOTS, corpus_documents
from remix_ds.eval.runner import evaluate
from remix_ds.eval.zero import load_zero3
from remix_ds.experiments.preserve_bench import compare_rows, markdown


def run_preserve(args) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_distributed()
    rank, world = dist.rank(), dist.world_size()
    (base_src, _), (tuned_src, tuned_run) = resolve_model(args.base), resolve_model(args.tuned)
    data_overrides = [o for o in args.overrides if o.startswith("data.")]
    run_cfg, _ = resolve_run_config(args.tuned, tuned_run, tuned_src, args.data_config, data_overrides)
    overrides = [o[len("eval."):] if o.startswith("eval.") else o for o in args.overrides if not o.startswith("data.")]
    base = configtools.to_dict(run_cfg.eval)
    base.update(mode="generate", n=args.n, datasets=list(args.bench), max_new_tokens=args.max_new_tokens,
                key_span_delimiters=list(run_cfg.data.key_span_delimiters))
    cfg: EvalConfig = configtools.from_dict(EvalConfig, configtools.apply_overrides(base, overrides), prefix="eval")
    tokenizer = models.load_tokenizer(base_src)
    if models.load_tokenizer(tuned_src).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"preserve: {args.base} and {args.tuned} have different tokenizers")
    sets = [generic_set(tokenizer, run_cfg.data, cfg.n or GENERIC_N) if spec == "generic"
            else load_eval_set(spec, cfg, run_cfg.data) for spec in cfg.datasets]
    rows: dict[str, list[list[dict]]] = {s.name: [] for s in sets}
    zero3 = world > 1 and not args.replicate
    cfg.gather_params = bool(args.gather)  # read only for a partitioned model
    ds_overrides = _read_ds_config(args.ds_config) if args.ds_config else None
    attn = models.choose_attn_implementation(args.attn)
    for src in (base_src, tuned_src):  # one model in memory at a time
        if zero3:
            model = load_zero3(src, dtype=models.resolve_dtype(args.dtype), attn_implementation=attn,
                               ds_overrides=ds_overrides)
            if rank == 0:
                params = list(model.module.parameters())
                held, total = sum(p.ds_tensor.numel() for p in params), sum(p.ds_numel for p in params)
                print(f"remix-ds preserve: {src} under ZeRO-3 over {world} ranks (rank 0 holds {held} of {total} "
                      f"parameters; {'gathered once per set' if cfg.gather_params else 'partitioned forwards'})",
                      file=sys.stderr)
        else:
            model = models.load_for_inference(src, dtype=args.dtype, device=dist.device(), attn_implementation=attn)
        for s in sets:
            rows[s.name].append(evaluate(model, tokenizer, s.examples, cfg, rank, world,
                                         prompt_format=run_cfg.data.prompt_format).rows)
        if zero3:
            model.destroy()
        del model
        gc.collect()
    if rank != 0:
        dist.shutdown()  # waits for rank 0's report (see dist.shutdown: tear down explicitly)
        return 0
    report = {"base": args.base, "tuned": args.tuned, "max_new_tokens": cfg.max_new_tokens,
              "sets": {s.name: compare_rows(*rows[s.name], fingerprint=s.fingerprint) for s in sets}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "preserve.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "preserve.md").write_text(markdown(report, args.base, args.tuned), encoding="utf-8")
    for name, r in report["sets"].items():
        print(f"{name}: identical={r['identical_frac']:.4f} em_base={r['em_base']:.4f} em_tuned={r['em_tuned']:.4f} "
              f"mcnemar_p={r['mcnemar_p']:.3g} nll_drift={r['nll_drift']:+.4f} changed={r['n_changed']}/{r['n']}")
    print(f"-> {out / 'preserve.json'}, {out / 'preserve.md'}")
    if world > 1:
        dist.shutdown()
    return 0


GENERIC_N = 32
"""Passages of ``--bench generic`` without ``--n`` (the grid's analysis.preservation_n)."""


def generic_set(tokenizer, data, n: int) -> EvalSet:
    """``--bench generic``: the first ``n`` held-out passages of the generic corpus (``data.mix.generic_corpus``,
    built-in by default) as completion rows."""
    if n > PRESERVE_SLOTS:
        raise ConfigError(f"--bench generic: --n must be <= {PRESERVE_SLOTS} (the held-out passages), got {n}")
    # A held-out passage has ELIGIBLE_WORDS (64) words: the run's prompt/answer words, capped to fit.
    p = min(data.mix.prompt_words, ELIGIBLE_WORDS - 16)
    a = min(data.mix.answer_words, ELIGIBLE_WORDS - p)
    fmt = replace(data, mix=replace(data.mix, prompt_words=p, answer_words=a))
    docs = corpus_documents(tokenizer, data, p + a, n)
    examples = completion_examples(docs, fmt, "generic-heldout")
    params = {"corpus": data.mix.generic_corpus, "slots": "preserve", "n": n, "prompt_words": p, "answer_words": a,
              "instruction": data.mix.instruction}
    return EvalSet("generic", examples, data_fingerprint("generic", examples, params))


def _read_ds_config(path: str) -> dict:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--ds-config {path}: not a readable JSON file ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--ds-config {path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def add_preserve_command(subparsers) -> None:
    """Register ``remix-ds preserve`` (sets ``func=run_preserve``)."""
    p = subparsers.add_parser("preserve", help="compare a fine-tuned model's greedy answers with its base model's",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="the model before fine-tuning: HF folder / hub id / tiny / RUN_DIR / checkpoint")
    p.add_argument("tuned", help="the fine-tuned model (same forms)")
    p.add_argument("--bench", action="append", required=True,
                   help="question set: jsonl with prompt/answer, a dataset name, optionally NAME:heldout, or `generic` "
                        "(held-out built-in passages as continuations) (repeatable)")
    p.add_argument("--out", default="preserve-out", help="output folder (default ./preserve-out)")
    p.add_argument("--n", type=int, default=0, help="only the first N examples of each set")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy answer length limit")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--attn", choices=["auto", "flash_attention_2", "sdpa", "eager"], default="auto")
    p.add_argument("--data-config", metavar="RUN_OR_CELL_OR_FILE", help="where named sets' data settings come from")
    p.add_argument("--gather", action="store_true",
                   help="under a launcher: gather the ZeRO-3 model whole on each rank once per set (default: "
                        "partitioned forwards, all ranks in lockstep)")
    p.add_argument("--replicate", action="store_true",
                   help="under a launcher: load each model whole on every rank instead of partitioned (ZeRO-3)")
    p.add_argument("--ds-config", metavar="JSON",
                   help="under a launcher: DeepSpeed settings merged into the ZeRO-3 inference config, e.g. "
                        "{\"zero_optimization\": {\"stage3_param_persistence_threshold\": 0}}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE|data.KEY=VALUE",
                   help="EvalConfig or data override (repeatable)")
    p.set_defaults(func=run_preserve)
