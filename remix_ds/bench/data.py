"""`remix-ds bench data --out FILE.json`: data-pipeline throughput.

Measures, on one process:
  random_words   vectorized RandomWords.sample tokens/s vs a naive loop (random.choice words,
                 join, one tokenizer call per sample), and their ratio;
  shard_read     ShardReader windows and documents tokens/s on the built-in generic corpus;
  mixer          REMIX stage-stream build (tokenize + mix) tokens/s, loader packed tokens/s, and
                 packing efficiency (non-pad fraction) per row kind vs padding to the longest row;
  consumption    loader packed tokens/s / tokens/s the tiny model consumes in forward+backward.
                 The engine's own benchmark (`remix_ds.bench.train`) is not used yet: consumption is
                 a plain-torch forward+backward (sum CE loss, no optimizer step) on the loader's own
                 micro-batches, so the ratio says how many times faster than the trainer the
                 loader is on this machine.

Each rate is the median of `repeats` timed runs. Machine info is included so numbers are
comparable only across the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from remix_ds.config import ModelConfig
from remix_ds.configtools import from_dict
from remix_ds.data import corpus
from remix_ds.data.config import DataConfig
from remix_ds.data.loader import TrainLoader
from remix_ds.data.mixing import StageStream, build_stage_stream
from remix_ds.data.packing import padded_efficiency
from remix_ds.data.random_words import RandomWords, load_words
from remix_ds.models import load_model, load_tokenizer, resolve_dtype


# ----------------------------------------------------------------------------- helpers


def machine_info() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _median_rate(fn, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Run ``fn() -> units`` ``warmup`` untimed times, then ``repeats`` timed; (median units/s, median s)."""
    for _ in range(warmup):
        fn()
    rates, secs = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        units = fn()
        dt = time.perf_counter() - t
        rates.append(units / dt)
        secs.append(dt)
    return statistics.median(rates), statistics.median(secs)


def naive_random_words(tokenizer, words: list[str], n: int, min_words: int, max_words: int, seed: int) -> list[list[int]]:
    """The baseline: per sample, pick words with random.choice, join, call the tokenizer."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        k = rnd.randint(min_words, max_words)
        text = " ".join(rnd.choice(words) for _ in range(k))
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


# ----------------------------------------------------------------------------- parts


def bench_random_words(tokenizer, *, n_fast: int = 20_000, n_naive: int = 1_000, min_words: int = 8,
                       max_words: int = 32, vocab_size: int = 10_000, repeats: int = 3, seed: int = 0) -> dict:
    words, weights = load_words("wordfreq:en", vocab_size)
    t = time.perf_counter()
    gen = RandomWords(tokenizer, words, weights, min_words=min_words, max_words=max_words)
    setup_s = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    # Warm-up calls matter here: the first few touch fresh memory (slow on VMs), then it is reused.
    fast, fast_s = _median_rate(lambda: len(gen.sample(rng, n_fast).ids), 2 * repeats + 1, warmup=3)
    naive, naive_s = _median_rate(
        lambda: sum(map(len, naive_random_words(tokenizer, gen.words, n_naive, min_words, max_words, seed))), repeats
    )
    return {
        "vocab_size": gen.vocab_size,
        "words_per_sequence": [min_words, max_words],
        "setup_s": round(setup_s, 3),
        "vectorized": {"samples": n_fast, "seconds": round(fast_s, 4), "tokens_per_s": round(fast)},
        "naive_loop": {"samples": n_naive, "seconds": round(naive_s, 4), "tokens_per_s": round(naive)},
        "speedup": round(fast / naive, 1),
        "ids_match_tokenizer": gen.agreement(tokenizer, np.random.default_rng(seed + 1), 200),
    }


def bench_shard_read(reader, *, seq_len: int = 512, n_windows: int = 4_000, n_docs: int = 4_000,
                     repeats: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    win, win_s = _median_rate(lambda: reader.sample_windows(rng, n_windows, seq_len).size, repeats)
    docs, docs_s = _median_rate(lambda: sum(len(d) for d in reader.sample_documents(rng, n_docs)), repeats)
    return {
        "corpus": str(reader.path),
        "documents": reader.num_documents,
        "tokens": reader.num_tokens,
        "dtype": reader.dtype.name,
        "random_windows": {"seq_len": seq_len, "count": n_windows, "tokens_per_s": round(win)},
        "random_documents": {"count": n_docs, "tokens_per_s": round(docs)},
    }


def _data_cfg(num_pairs: int, max_seq_len: int, **mix):
    return from_dict(DataConfig, {"dataset": "kvr", "max_seq_len": max_seq_len, "kvr": {"num_pairs": num_pairs},
                                  "mix": mix})


def _loader(stream, micro_batch_size: int, max_seq_len: int, tokenizer):
    return TrainLoader(stream, micro_batch_size=micro_batch_size, rank=0, world_size=1, max_seq_len=max_seq_len,
                       pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)


def _pack_stats(rows, tokenizer, micro_batch_size: int, max_seq_len: int) -> dict:
    """One epoch of `rows` through the loader: packed tokens/s and packing efficiency."""
    loader = _loader(StageStream(dataset=list(rows), seed=0), micro_batch_size, max_seq_len, tokenizer)
    tokens = cells = 0
    pad_longest = []
    t = time.perf_counter()
    for _ in range(loader.batches_per_epoch):
        b = next(loader)
        tokens += b["num_tokens"]
        cells += b["input_ids"].numel()
    dt = time.perf_counter() - t
    for s in range(loader.batches_per_epoch):
        pad_longest.append(padded_efficiency([len(x) for x in loader.rows_for(0, s)]))
    lengths = [len(x) for x in rows]
    return {
        "rows": len(rows),
        "mean_tokens_per_row": round(float(np.mean(lengths)), 1),
        "packed_tokens_per_s": round(tokens / dt),
        "packing_efficiency": round(tokens / cells, 4),
        "pad_to_longest_efficiency": round(float(np.mean(pad_longest)), 4),
    }


def bench_mixer(tokenizer, *, num_pairs: int = 500, micro_batch_size: int = 8, max_seq_len: int = 512,
                seed: int = 0) -> tuple[dict, object]:
    """Two REMIX mixes cover every row kind; returns (results, the first mix's loader for consumption)."""
    out: dict = {"micro_batch_size": micro_batch_size, "max_seq_len": max_seq_len, "kvr_pairs": num_pairs}
    streams = {}
    for name, mix in {
        "completion_generic+raw_random": dict(generic_ratio=1.0, generic_format="completion",
                                              random_ratio=1.0, random_format="raw"),
        "raw_generic+completion_random": dict(generic_ratio=1.0, generic_format="raw",
                                              random_ratio=1.0, random_format="completion"),
    }.items():
        cfg = _data_cfg(num_pairs, max_seq_len, **mix)
        t = time.perf_counter()
        stream = build_stage_stream(cfg, tokenizer, seed)
        dt = time.perf_counter() - t
        rows = stream.epoch_items(0)
        n_tok = sum(len(x) for x in rows)
        out[f"build[{name}]"] = {"rows": len(rows), "tokens": n_tok, "seconds": round(dt, 3),
                                 "tokens_per_s": round(n_tok / dt), "counts": stream.counts()}
        streams[name] = stream
    a, b = streams["completion_generic+raw_random"], streams["raw_generic+completion_random"]
    kinds = {
        "kvr_answer": a.dataset,
        "generic_completion": a.generic,
        "generic_raw": b.generic,
        "random_raw": a.random,
        "random_completion": b.random,
        "remix_mixture(kvr+generic_completion+random_raw)": a.epoch_items(0),
    }
    out["formats"] = {k: _pack_stats(rows, tokenizer, micro_batch_size, max_seq_len) for k, rows in kinds.items()}
    return out, _loader(a, micro_batch_size, max_seq_len, tokenizer)


def bench_consumption(loader, *, steps: int = 6, warmup: int = 2) -> dict:
    """Loader tokens/s vs the tiny model's forward+backward tokens/s on the same micro-batches."""
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(ModelConfig(), resolve_dtype("auto"), "sdpa").to(device)
    model.train()
    batches = [next(loader) for _ in range(steps + warmup)]
    t = time.perf_counter()
    for _ in range(steps + warmup):
        next(loader)
    loader_rate = sum(b["num_tokens"] for b in batches) / (time.perf_counter() - t)

    def step(b):
        ids = b["input_ids"].to(device)
        logits = model(input_ids=ids, position_ids=b["position_ids"].to(device), use_cache=False).logits
        labels = b["labels"].to(device)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100,
                               reduction="sum")
        loss.backward()
        model.zero_grad(set_to_none=True)

    for b in batches[:warmup]:
        step(b)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    if device == "cuda":
        torch.cuda.synchronize()
    train_rate = sum(b["num_tokens"] for b in batches[warmup:]) / (time.perf_counter() - t)
    return {
        "source": "plain torch forward+backward of the tiny model (remix_ds.bench.train not used)",
        "device": device,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "steps": steps,
        "loader_tokens_per_s": round(loader_rate),
        "train_tokens_per_s": round(train_rate),
        "loader_over_train": round(loader_rate / train_rate, 1),
    }


# ----------------------------------------------------------------------------- entry points


def run(out: str | Path | None = None, *, tokenizer: str = "tiny", quick: bool = False, seed: int = 0,
        parts: tuple[str, ...] = ("random_words", "shard_read", "mixer", "consumption")) -> dict:
    """Run the data benchmarks; write JSON to ``out`` if given; return the result dict.

    ``quick`` shrinks every size (for tests); its numbers are noisy.
    """
    tok = load_tokenizer(tokenizer)
    result: dict = {
        "benchmark": "data",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["remix-ds", "bench", "data", *sys.argv[3:]]) if sys.argv[1:3] == ["bench", "data"] else None,
        "tokenizer": tokenizer,
        "quick": quick,
        "machine": machine_info(),
    }
    reps = 1 if quick else 3
    if "random_words" in parts:
        result["random_words"] = bench_random_words(
            tok, n_fast=2_000 if quick else 20_000, n_naive=100 if quick else 1_000, repeats=reps, seed=seed,
            vocab_size=2_000 if quick else 10_000)
    if "shard_read" in parts:
        t = time.perf_counter()
        reader = corpus.generic_corpus(tok, tokenizer_name=tokenizer, progress=not quick)
        open_s = time.perf_counter() - t
        result["shard_read"] = {"corpus_open_or_build_s": round(open_s, 3),
                                **bench_shard_read(reader, n_windows=500 if quick else 4_000,
                                                   n_docs=500 if quick else 4_000, repeats=reps, seed=seed)}
    loader = None
    if "mixer" in parts or "consumption" in parts:
        result["mixer"], loader = bench_mixer(tok, num_pairs=40 if quick else 500, seed=seed)
    if "consumption" in parts:
        result["consumption"] = bench_consumption(loader, steps=1 if quick else 6, warmup=1 if quick else 2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def add_bench_data_command(bsub) -> argparse.ArgumentParser:
    """Register ``bench data`` on the ``bench`` subparsers; sets ``func``."""
    p = bsub.add_parser("data", help="random-word, shard-read, mixer/packing and loader-vs-trainer throughput")
    p.add_argument("--out", default="bench_data.json", help="JSON output file")
    p.add_argument("--tokenizer", default="tiny", help="`tiny`, a hub id or a local tokenizer folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; noisy numbers)")
    p.add_argument("--parts", default="random_words,shard_read,mixer,consumption",
                   help="comma-separated subset of random_words,shard_read,mixer,consumption")
    p.set_defaults(func=_run_cli)
    return p


def _run_cli(args) -> int:
    parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    unknown = set(parts) - {"random_words", "shard_read", "mixer", "consumption"}
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {', '.join(sorted(unknown))}")
    res = run(args.out, tokenizer=args.tokenizer, quick=args.quick, seed=args.seed, parts=parts)
    summary = {k: res[k] for k in ("random_words", "shard_read", "consumption") if k in res}
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0
