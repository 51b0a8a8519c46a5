"""`remix-ds bench data --out FILE.json`: data-pipeline throughput.

Measures, on one process:
  random_words   vectorized RandomWords.sample tokens/s vs a naive loop (random.choice words,
                 join, one tokenizer call per sample) and vs the strong baseline (numpy
                 Generator.choice over a pre-tokenized word table, one concatenate);
  shard_read     ShardReader windows and documents tokens/s on the built-in generic corpus;
  mixer          REMIX stage-stream build (tokenize + mix) tokens/s, loader packed tokens/s, and
                 packing efficiency (non-pad fraction) per row kind vs padding to the longest row;
  pack           512 REMIX-mixture examples into 2,048-token rows: this packer vs the previous one
                 (benchmarks/packing.py), HF DataCollatorWithFlattening (one row, efficiency 1.00 by construction)
                 and group_by_length-style padded batches; rows, efficiency, attention cells;
  stage          (only with --parts stage) generic completion rows of a 32k-factoid stage, before
                 (decode every drawn document) vs the word-cache build, same rows asserted;
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
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from remix_ds.bench.checkout import baseline
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


def write_result(result: dict, out: str | None) -> None:
    """Write a benchmark's JSON result to ``out`` (no-op when None), creating its folder."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


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


# ----------------------------------------------------------------------------- parts


def bench_random_words(tokenizer, *, n_fast: int = 20_000, n_naive: int = 1_000, min_words: int = 8,
                       max_words: int = 32, vocab_size: int = 10_000, repeats: int = 3, seed: int = 0) -> dict:
    rw = baseline("random_words")
    naive_random_words, numpy_choice_random_words, word_table = rw.naive_random_words, rw.numpy_choice_random_words, rw.word_table

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
    table = word_table(gen)
    strong, strong_s = _median_rate(lambda: numpy_choice_random_words(gen, table, rng, n_fast), 2 * repeats + 1)
    return {
        "vocab_size": gen.vocab_size,
        "words_per_sequence": [min_words, max_words],
        "setup_s": round(setup_s, 3),
        "vectorized": {"samples": n_fast, "seconds": round(fast_s, 4), "tokens_per_s": round(fast)},
        "naive_loop": {"samples": n_naive, "seconds": round(naive_s, 4), "tokens_per_s": round(naive)},
        "numpy_choice_table": {"samples": n_fast, "seconds": round(strong_s, 4), "tokens_per_s": round(strong)},
        "speedup": round(fast / naive, 1),
        "speedup_vs_numpy_choice_table": round(fast / strong, 2),
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


def _layout_stats(row_lens: list[list[int]], cells: int, seconds: float) -> dict:
    """Rows of sequences -> efficiency, rows, and what attention costs on them: `dense_attention_cells`
    (sum over rows of T^2: SDPA/eager with a block mask computes every cell) and
    `varlen_attention_cells` (sum of sequence_length^2: flash-attn varlen computes only these)."""
    tokens = sum(map(sum, row_lens))
    width = cells // max(1, len(row_lens))
    return {"tokens_per_s": round(tokens / seconds), "seconds": round(seconds, 5), "rows": len(row_lens),
            "efficiency": round(tokens / cells, 4), "dense_attention_cells": len(row_lens) * width * width,
            "varlen_attention_cells": sum(n * n for r in row_lens for n in r)}


def bench_pack(rows, *, n_examples: int = 512, max_seq_len: int = 2048, group_batch: int = 8,
               repeats: int = 5, old: bool = True) -> dict:
    """Pack `n_examples` rows of the REMIX mixture into `max_seq_len` rows, side by side (alternating,
    medians): this packer, the previous packer (`old`, benchmarks/packing.py), HF `DataCollatorWithFlattening`
    (everything in one row: efficiency 1.00 by construction) and `group_by_length`-style batches
    (sort by length, `group_batch` examples per padded batch)."""
    from transformers import DataCollatorWithFlattening

    from remix_ds.data import packing

    old_balanced_bins = baseline("packing").old_balanced_bins

    exs = list(rows)[:n_examples]
    lengths = [len(x) for x in exs]
    flat = DataCollatorWithFlattening(return_tensors="pt")
    feats = [{"input_ids": x.input_ids.tolist(), "labels": x.labels.tolist()} for x in exs]

    def ours():
        return packing.pack(exs, max_seq_len, 0)

    def before():
        return old_balanced_bins(lengths, max_seq_len)

    def flattening():
        return flat(feats)

    def grouped():
        import torch

        order = sorted(range(len(exs)), key=lambda i: -lengths[i])
        out = []
        for s in range(0, len(order), group_batch):
            g = order[s : s + group_batch]
            t = max(lengths[i] for i in g)
            ids = torch.zeros((len(g), t), dtype=torch.long)
            for r, i in enumerate(g):
                ids[r, : lengths[i]] = torch.from_numpy(exs[i].input_ids.astype(np.int64))
            out.append(ids)
        return out

    fns = {"remix_ds_pack": ours, "flattening_collator": flattening, "group_by_length": grouped}
    if old:
        fns["before_issue14_pack"] = before
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats + 1):  # alternate; the first round is a warm-up
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    b = ours()
    bins = packing.balanced_bins(lengths, max_seq_len)
    out: dict = {"examples": len(exs), "tokens": sum(lengths), "max_seq_len": max_seq_len, "repeats": repeats}
    out["remix_ds_pack"] = _layout_stats([[lengths[i] for i in bb] for bb in bins], b["input_ids"].numel(),
                                         med["remix_ds_pack"])
    out["remix_ds_pack"]["min_seconds"] = round(min(times["remix_ds_pack"][1:]), 5)
    out["flattening_collator"] = _layout_stats([lengths], sum(lengths), med["flattening_collator"])
    groups = [sorted(lengths, reverse=True)[s : s + group_batch] for s in range(0, len(lengths), group_batch)]
    out["group_by_length"] = {**_layout_stats([[n] for g in groups for n in g], sum(len(g) * max(g) for g in groups),
                                              med["group_by_length"]), "group_batch": group_batch}
    out["group_by_length"]["dense_attention_cells"] = sum(len(g) * max(g) ** 2 for g in groups)
    if old:
        ob = before()
        width = max(sum(lengths[i] for i in bb) for bb in ob)
        out["before_issue14_pack"] = _layout_stats([[lengths[i] for i in bb] for bb in ob], len(ob) * width,
                                                   med["before_issue14_pack"])
        out["speedup_vs_before"] = round(med["before_issue14_pack"] / med["remix_ds_pack"], 1)
    out["speed_vs_flattening_collator"] = round(med["flattening_collator"] / med["remix_ds_pack"], 2)
    return out


def bench_stage(tokenizer, *, factoids: int = 32_000, generic_ratio: float = 1.0, repeats: int = 1) -> dict:
    """Generic completion rows of a REMIX stage (`factoids` x `generic_ratio`), decode-every-document build vs the word-cache build,
    alternating; asserts both give the same rows."""
    from remix_ds.data.generic import generic_rows

    decode_all_generic_rows = baseline("stage").decode_all_generic_rows

    cfg = _data_cfg(factoids, 2048, generic_ratio=generic_ratio, generic_format="completion")
    count = int(factoids * generic_ratio)
    generic_rows(cfg, tokenizer, 8)  # warm: corpus open, tables
    times: dict[str, list[float]] = {"after": [], "before": []}
    for _ in range(repeats):
        for name, fn in (("after", generic_rows), ("before", decode_all_generic_rows)):
            t = time.perf_counter()
            rows, _ = fn(cfg, tokenizer, count)
            times[name].append(time.perf_counter() - t)
            if name == "after":
                after_rows = rows
    same = all(a.input_ids.tolist() == b.input_ids.tolist() and a.labels.tolist() == b.labels.tolist()
               for a, b in zip(after_rows, rows)) and len(after_rows) == len(rows)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"factoids": factoids, "generic_rows": count, "repeats": repeats,
           "before_s": round(med["before"], 3), "after_s": round(med["after"], 3),
           "speedup": round(med["before"] / med["after"], 1), "rows_identical": same}
    out["tokenize_rows"] = bench_completion_tokenize(cfg, tokenizer, min(count, 8000), repeats)
    return out


def bench_completion_tokenize(cfg, tokenizer, count: int, repeats: int = 1) -> dict:
    """The tokenizing step alone, on the same generic word rows, alternating: per-word units
    (`CompletionRows`, a fresh cache each time) vs the formatted rows through the batched Rust
    tokenizer (`tokenize_examples`, what the stage build did before, the strongest plain rival)."""
    from remix_ds.data.generic import completion_examples, open_generic_corpus
    from remix_ds.data.tokenize import tokenize_for
    from remix_ds.data.word_cache import CompletionRows

    reader = open_generic_corpus(cfg, tokenizer)
    need = cfg.mix.prompt_words + cfg.mix.answer_words
    docs = reader.sample_documents(np.random.default_rng([cfg.mix.seed, 1]), 6 * count)
    rows = [w[:need] for w in (t.split() for t in tokenizer.batch_decode(docs, skip_special_tokens=True))
            if len(w) >= need][:count]
    p, a = cfg.mix.prompt_words, cfg.mix.answer_words
    fns = {"units": lambda: CompletionRows(tokenizer, cfg.mix.instruction).rows(rows, p, a, "generic", cfg.max_seq_len),
           "whole_rows": lambda: tokenize_for(completion_examples(rows, cfg, "generic"), cfg, tokenizer, "answer")}
    times: dict[str, list[float]] = {k: [] for k in fns}
    got = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            got[k] = fn()[0]
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    same = [(x.input_ids.tolist(), x.labels.tolist()) for x in got["units"]] == \
           [(x.input_ids.tolist(), x.labels.tolist()) for x in got["whole_rows"]]
    return {"rows": len(rows), "units_s": round(med["units"], 3), "whole_rows_s": round(med["whole_rows"], 3),
            "speedup": round(med["whole_rows"] / med["units"], 1), "rows_identical": same,
            "fast_path": CompletionRows(tokenizer, cfg.mix.instruction).reason or "exact"}


# ----------------------------------------------------------------------------- entry points


def run(out: str | Path | None = None, *, tokenizer: str = "tiny", quick: bool = False, seed: int = 0,
        parts: tuple[str, ...] = ("random_words", "shard_read", "mixer", "consumption", "pack"),
        stage_factoids: int = 32_000, stage_repeats: int = 1) -> dict:
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
    if "pack" in parts:
        mix = build_stage_stream(_data_cfg(64 if quick else 512, 2048, generic_ratio=1.0, random_ratio=1.0), tok, seed)
        result["pack"] = bench_pack(mix.epoch_items(0), n_examples=64 if quick else 512, repeats=1 if quick else 7)
    if "stage" in parts:
        result["stage"] = bench_stage(tok, factoids=200 if quick else stage_factoids, repeats=stage_repeats)
    write_result(result, out)
    return result


def add_bench_data_command(bsub) -> argparse.ArgumentParser:
    """Register ``bench data`` on the ``bench`` subparsers; sets ``func``."""
    p = bsub.add_parser("data", help="random-word, shard-read, mixer/packing and loader-vs-trainer throughput")
    p.add_argument("--out", default="bench_data.json", help="JSON output file")
    p.add_argument("--tokenizer", default="tiny", help="`tiny`, a hub id or a local tokenizer folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; noisy numbers)")
    p.add_argument("--parts", default="random_words,shard_read,mixer,consumption,pack",
                   help="comma-separated subset of random_words,shard_read,mixer,consumption,pack,stage "
                        "(stage: generic-row build, decode-every-document vs word cache; minutes at 32k factoids)")
    p.add_argument("--stage-factoids", type=int, default=32_000, help="stage part: dataset rows (generic ratio 1)")
    p.add_argument("--stage-repeats", type=int, default=1, help="stage part: alternating before/after rounds (medians)")
    p.set_defaults(func=_run_cli)
    return p


def _run_cli(args) -> int:
    parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    unknown = set(parts) - {"random_words", "shard_read", "mixer", "consumption", "pack", "stage"}
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {', '.join(sorted(unknown))}")
    res = run(args.out, tokenizer=args.tokenizer, quick=args.quick, seed=args.seed, parts=parts,
              stage_factoids=args.stage_factoids, stage_repeats=args.stage_repeats)
    summary = {k: res[k] for k in ("random_words", "shard_read", "consumption", "pack", "stage") if k in res}
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0
