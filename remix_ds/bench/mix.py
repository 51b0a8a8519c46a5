"""`remix-ds bench mix --out FILE.json`: what data.mix.redraw / data.mix.schedule cost.

Measures, on one process, the paper's stage (2,000 kvr facts, ratio 2.0, global batch 32,
max_seq_len 512) on the built-in generic corpus and the tiny tokenizer:
  stage_start  seconds from `build_train_loader` to the first optimizer step in hand, per
               mixing source, for redraw=stage (today: the whole pool of mixing rows drawn and
               tokenized up front, the rival) vs redraw=step (no pool: the first step's rows only)
               and redraw=epoch (the first epoch's rows at the first step); arms alternate, medians.
  loader       packed tokens/s over one epoch of micro-batches for each (schedule, redraw),
               drawing included, against the tokens/s the tiny model consumes in forward+backward
               (`remix_ds.bench.data.bench_consumption`, plain torch on the same micro-batches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from remix_ds.bench.data import _data_cfg, bench_consumption, machine_info, write_result
from remix_ds.data import corpus
from remix_ds.data.loader import build_train_loader
from remix_ds.models import load_tokenizer

MIXES = {
    "generic_completion": dict(generic_ratio=2.0, generic_format="completion"),
    "random_raw": dict(random_ratio=2.0, random_format="raw"),
}


def _loader(tok, pairs: int, mix: dict, *, micro: int = 8, step: int = 32, seed: int = 0):
    cfg = _data_cfg(pairs, 512, **mix)
    return build_train_loader(cfg, tok, micro_batch_size=micro, rank=0, world_size=1, seed=seed, step_examples=step)


def bench_stage_start(tok, *, pairs: int, repeats: int, micro: int = 8, step: int = 32) -> dict:
    out = {}
    units = step // micro
    for name, mix in MIXES.items():
        times: dict[str, list[float]] = {"stage": [], "epoch": [], "step": []}
        for _ in range(repeats):
            for redraw in times:  # alternate the arms within each repeat
                t = time.perf_counter()
                loader = _loader(tok, pairs, {**mix, "redraw": redraw}, micro=micro, step=step)
                loader.next_step(units)
                times[redraw].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[name] = {"seconds_median": {k: round(v, 3) for k, v in med.items()},
                     "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
                     "stage_over_step": round(med["stage"] / med["step"], 1),
                     "stage_over_epoch": round(med["stage"] / med["epoch"], 2)}
    return out


def _epoch_rate(loader) -> float:
    tokens, t = 0, time.perf_counter()
    for _ in range(loader.batches_per_epoch):
        tokens += next(loader)["num_tokens"]
    return tokens / (time.perf_counter() - t)


def bench_loader(tok, *, pairs: int, repeats: int, consumption_steps: int) -> dict:
    mix = {**MIXES["generic_completion"], "random_ratio": 1.0}
    arms = {"pooled+stage": ("pooled", "stage"), "pooled+step": ("pooled", "step"),
            "stratified+step": ("stratified", "step"), "stratified+epoch": ("stratified", "epoch")}
    loaders = {k: _loader(tok, pairs, {**mix, "schedule": s, "redraw": r}) for k, (s, r) in arms.items()}
    rates: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for k, loader in loaders.items():  # each repeat is the next epoch: fresh rows are drawn again
            rates[k].append(_epoch_rate(loader))
    train = bench_consumption(_loader(tok, pairs, {**mix, "redraw": "step"}), steps=consumption_steps)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"mix": mix, "loader_tokens_per_s": {k: round(v) for k, v in med.items()},
            "train_tokens_per_s": train["train_tokens_per_s"], "train_device": train["device"],
            "loader_over_train": {k: round(v / train["train_tokens_per_s"], 1) for k, v in med.items()},
            "step_over_stage": round(med["pooled+step"] / med["pooled+stage"], 2)}


def run(out: str | Path | None = None, *, quick: bool = False, tokenizer: str = "tiny") -> dict:
    tok = load_tokenizer(tokenizer)
    corpus.generic_corpus(tok, tokenizer_name=tokenizer, progress=not quick)  # built/cached before timing
    pairs, reps = (60, 1) if quick else (2000, 3)
    result = {
        "benchmark": "mix",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["remix-ds", "bench", "mix", *sys.argv[3:]]) if sys.argv[1:3] == ["bench", "mix"] else None,
        "tokenizer": tokenizer, "quick": quick, "kvr_pairs": pairs, "global_batch": 32, "micro_batch": 8,
        "machine": machine_info(),
        "stage_start": bench_stage_start(tok, pairs=pairs, repeats=reps),
        "loader": bench_loader(tok, pairs=pairs, repeats=reps, consumption_steps=1 if quick else 6),
    }
    write_result(result, out)
    return result


def add_bench_mix_command(bsub) -> argparse.ArgumentParser:
    """Register ``bench mix`` on the ``bench`` subparsers; sets ``func``."""
    p = bsub.add_parser("mix", help="stage-start time and loader tokens/s of data.mix.redraw / schedule")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests; noisy numbers)")
    p.add_argument("--tokenizer", default="tiny")
    p.set_defaults(func=lambda a: (print(json.dumps(run(a.out, quick=a.quick, tokenizer=a.tokenizer), indent=2)), 0)[1])
    return p
