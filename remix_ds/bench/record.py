"""`remix-ds bench all --record`: the headline benchmarks, recorded and rendered into docs/benchmarks.md.

Every headline row is remix-ds against the strongest alternative a competent user would pick,
measured in the same process (or alternating fresh processes) with the arms alternated
``--record-repeats`` times; the row keeps each arm's median and min/max over the repetitions, the
median (and min/max) of the per-repetition ratios, the goal, the machine with its load average,
and the date. The JSON goes to ``docs/bench_results/headline.json`` (rows of a partial run,
``--record-parts``, replace only their own rows) and the table between the ``bench-headline``
markers of ``docs/benchmarks.md`` is rewritten from it; ``tests/test_bench_record.py`` fails when
the two disagree. Nothing in the table is typed by hand.

Parts (each a few rows; ~10 min in all on 2 shared CPU cores):

- ``random_words``: `RandomWords.sample` vs the fully vectorized numpy sampler (padded word table,
  one boolean gather), the same draws and ids (asserted), tokens/s.
- ``eval``: fused exact match vs gathered-once batched `generate` (batch 64, KV cache), verdicts
  asserted equal; the tiny model and a 16-layer random-init Llama, one process.
- ``eval_zero3``: the same under ZeRO-3 on 2 ranks (deepspeed launcher, gloo on CPU).
- ``loss``: fused lm_head + CE vs the plain CE that drops unsupervised rows first, 25% supervised,
  vocabulary 128,256, each repetition of each arm a fresh process; seconds and peak memory. A third
  arm times the three matrix products alone (logits, grad_hidden, grad_weight over the supervised
  rows), the floor of any exact fused CE: the check column gives the most it could gain.
- ``packing``: efficiency on the REMIX mixture vs `group_by_length` + pad on the same rows,
  `pack()` tokens/s vs HF `DataCollatorWithFlattening`, and token-budget fill on factoids + long
  passages vs example micro-batches of the same memory bound.
- ``stage``: generic completion rows of a 32k-factoid stage vs decoding every drawn document.
- ``mix``: stage start with ``data.mix.redraw=step`` vs the default ``redraw=stage`` (an option's
  cost, not a rival: no goal).
- ``train``: the engine vs Hugging Face ``Trainer`` + DeepSpeed on the same micro-batches
  (``remix-ds bench train``, a fresh process).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from remix_ds.bench.checkout import CHECKOUT, baseline
from remix_ds.cachedir import write_text_atomic

PARTS = ("random_words", "eval", "eval_zero3", "loss", "packing", "stage", "mix", "train")
BEGIN, END = "<!-- bench-headline:begin -->", "<!-- bench-headline:end -->"
RESULTS = Path("docs") / "bench_results" / "headline.json"
DOC = Path("docs") / "benchmarks.md"


# ---- recording helpers --------------------------------------------------------------------------
def spread(values: list[float]) -> dict:
    """Median, min, max and every value of one arm (or of the per-repetition ratios)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def row(id_: str, metric: str, setting: str, unit: str, ours: tuple[str, list[float]],
        baseline: tuple[str, list[float]], goal: float | None, *, higher_is_better: bool = True,
        goal_on: str = "ratio", check: str = "", load_before: float | None = None) -> dict:
    """One headline row: the ratio is ours / baseline for rates, baseline / ours for times (>1: we win)."""
    o, b = ours[1], baseline[1]
    ratios = [x / y if higher_is_better else y / x for x, y in zip(o, b)]
    r = {"id": id_, "metric": metric, "setting": setting, "unit": unit, "higher_is_better": higher_is_better,
         "ours": {"name": ours[0], **spread(o)}, "baseline": {"name": baseline[0], **spread(b)},
         "ratio": spread(ratios), "goal": goal, "goal_on": goal_on, "check": check,
         "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
         "load_average": [load_before, load()]}
    if goal is not None:
        got = r["ratio"]["median"] if goal_on == "ratio" else r["ours"]["median"]
        r["goal_met"] = got >= goal if (goal_on == "ratio" or higher_is_better) else got <= goal
    return r


def alternate(arms: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each arm, ``repeats`` rounds after ``warmup`` untimed ones, arms alternated (the
    order flips every round so neither arm always runs right after the other)."""
    times: dict[str, list[float]] = {k: [] for k in arms}
    names = list(arms)
    for i in range(repeats + warmup):
        for k in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            arms[k]()
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return times


# ---- parts --------------------------------------------------------------------------------------
def part_random_words(repeats: int) -> list[dict]:
    PaddedTable = baseline("random_words").PaddedTable

    from remix_ds.data.random_words import RandomWords, load_words
    from remix_ds.models import load_tokenizer

    l0 = load()
    n = 100_000  # ~3M tokens a call: long enough that a shared core's preemptions average out
    words, weights = load_words("wordfreq:en", 10_000)
    gen = RandomWords(load_tokenizer("tiny"), words, weights, min_words=8, max_words=32)
    table = PaddedTable(gen)
    a, b = gen.sample(np.random.default_rng(1), 2_000), table.sample(np.random.default_rng(1), 2_000)
    identical = bool(np.array_equal(a.ids, b[0]) and np.array_equal(a.offsets, b[1]))
    if not identical:
        raise RuntimeError("the vectorized numpy sampler drew other ids than RandomWords.sample")
    tokens = {}

    def ours():
        tokens["ours"] = len(gen.sample(np.random.default_rng(2), n).ids)

    def numpy_():
        tokens["numpy"] = len(table.sample(np.random.default_rng(2), n)[0])

    for _ in range(2):  # first touches of fresh memory (slow on VMs), both arms
        ours(), numpy_()
    t = alternate({"ours": ours, "numpy": numpy_}, 4 * repeats + 1)
    return [row("random_words", "random words", f"{n:,} sequences of 8-32 words, 10k-word vocabulary, tiny tokenizer",
                "tokens/s", ("RandomWords.sample", [tokens["ours"] / s for s in t["ours"]]),
                ("vectorized numpy sampler (padded table), same ids", [tokens["numpy"] / s for s in t["numpy"]]),
                3.0, check=f"ids identical: {identical}", load_before=l0)]


def _eval_row(id_, setting, res, goal, l0) -> dict:
    n = res["n"]
    ok = res["generate"]["verdicts_equal"] and res["generate"]["prefixes_equal"]
    if not ok:
        raise RuntimeError(f"{id_}: fused verdicts differ from generate's")
    return row(id_, f"fused EM, {setting}", f"{n} KVR examples, generate batch 64, max_new_tokens "
               f"{res['max_new_tokens']}", "examples/s",
               ("fused pass", [n / s for s in res["fused"]["seconds_all"]]),
               ("batched generate, weights gathered once", [n / s for s in res["generate"]["seconds_all"]]),
               goal, check="verdicts and proven prefixes equal: True", load_before=l0)


def _eval_model(layers: int) -> str:
    from remix_ds.bench.eval import _build_shape

    return _build_shape(SimpleNamespace(layers=layers, hidden=64, model="tiny")) if layers else "tiny"


def part_eval(repeats: int) -> list[dict]:
    from remix_ds import models
    from remix_ds.bench.eval import _load, run_setting

    rows = []
    for layers, sizes in ((0, (64, 256, 1024)), (16, (64, 256))):
        model, tok = _load(_eval_model(layers), models.resolve_dtype("auto"))
        name = "16-layer Llama (16x64)" if layers else "tiny (4x128)"
        for n in sizes:
            l0 = load()
            res = run_setting(model, tok, n, 64, 8192, 0, 1, naive=False, repeats=repeats)
            rows.append(_eval_row(f"eval_{'l16' if layers else 'tiny'}_{n}", f"{name}, 1 process", res, 1.5, l0))
    return rows


def part_eval_zero3(repeats: int) -> list[dict]:
    from remix_ds.bench.eval import run_zero3
    from remix_ds.experiments.scheduler import free_port

    rows = []
    with tempfile.TemporaryDirectory(prefix="remix-bench-record-") as tmp:
        for layers in (0, 16):
            l0 = load()
            res = run_zero3(_eval_model(layers), 64, 64, 8192, 2, Path(tmp) / f"z{layers}.json", free_port(),
                            repeats=repeats, naive=False)
            name = "16-layer Llama (16x64)" if layers else "tiny (4x128)"
            rows.append(_eval_row(f"eval_zero3_{'l16' if layers else 'tiny'}", f"{name}, ZeRO-3 2 ranks", res, 3.0, l0))
    return rows


def part_loss(repeats: int, tokens: int = 2048, vocab: int = 128_256, hidden: int = 256) -> list[dict]:
    import torch

    from remix_ds.bench.loss_worker import available_bytes, spawn_loss_worker

    l0 = load()
    spec = {"tokens": tokens, "vocab": vocab, "hidden": hidden, "supervised": 0.25, "repeats": 2,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "dtype": "bfloat16" if torch.cuda.is_available() else "float32", "backend": "auto"}
    avail = available_bytes()
    spec["max_growth_bytes"] = avail - 2**30 if avail and spec["device"] == "cpu" else None
    got: dict[str, list[dict]] = {"plain_indexed": [], "fused": [], "matmuls": []}
    for i in range(repeats):  # a fresh process per arm and repetition, the order flipping each round
        for path in ("plain_indexed", "fused", "matmuls") if i % 2 == 0 else ("matmuls", "fused", "plain_indexed"):
            r = spawn_loss_worker({**spec, "path": path}, 1800)
            if "error" in r:
                raise RuntimeError(f"loss {path}: {r['error']}")
            got[path].append(r)
    rel = abs(got["fused"][0]["loss"] - got["plain_indexed"][0]["loss"]) / abs(got["plain_indexed"][0]["loss"])
    # The ceiling of any exact fused CE here: the plain arm's time over its three matrix products alone.
    floor = statistics.median(r["seconds"] for r in got["matmuls"])
    plain_s = statistics.median(r["seconds"] for r in got["plain_indexed"])
    setting = f"{tokens:,} tokens, 25% supervised, vocabulary {vocab:,}, hidden {hidden}, {spec['dtype']}, loss + backward"
    names = ("fused lm_head + CE (chunked)", "plain CE on the supervised rows only")
    mem = lambda p: [r["peak_bytes_above_inputs"] / 2**30 for r in got[p]]  # noqa: E731
    return [row("loss_time", "fused CE time", setting, "s", (names[0], [r["seconds"] for r in got["fused"]]),
                (names[1], [r["seconds"] for r in got["plain_indexed"]]), 1.5, higher_is_better=False,
                check=f"loss equal to {rel:.1e} relative; ceiling: the three matmuls alone take {floor:.3g} s, "
                      f"{floor / plain_s:.0%} of the plain arm's median, so an exact fused CE gains at most "
                      f"{plain_s / floor:.2f}x here", load_before=l0),
            row("loss_memory", "fused CE peak memory", setting, "GiB", (names[0], mem("fused")),
                (names[1], mem("plain_indexed")), 2.0 if spec["device"] == "cuda" else None, higher_is_better=False,
                check="CPU: rise of the peak RSS above the inputs, fresh process", load_before=l0)]


def part_packing(repeats: int) -> list[dict]:
    padded_batches = baseline("packing").padded_batches
    from transformers import DataCollatorWithFlattening

    from remix_ds.bench.data import _data_cfg, _loader
    from remix_ds.data import packing
    from remix_ds.data.loader import TrainLoader
    from remix_ds.data.mixing import StageStream, build_stage_stream
    from remix_ds.models import load_tokenizer

    l0 = load()
    tok = load_tokenizer("tiny")
    mix = dict(generic_ratio=1.0, generic_format="completion", random_ratio=1.0, random_format="raw")
    rows = build_stage_stream(_data_cfg(500, 512, **mix), tok, 0).epoch_items(0)
    loader = _loader(StageStream(dataset=list(rows), seed=0), 8, 512, tok)
    tokens = cells = 0
    for _ in range(loader.batches_per_epoch):
        b = next(loader)
        tokens += b["num_tokens"]
        cells += b["input_ids"].numel()
    _, grouped = padded_batches(rows, 8, tok.pad_token_id)
    setting = (f"REMIX mixture ({len(rows)} rows: KVR + generic completion + random raw, ratios 1:1:1), "
               "micro-batch 8, max_seq_len 512, one epoch")
    out = [row("packing_efficiency", "packing efficiency (non-pad cells)", setting, "fraction",
               ("packed micro-batches", [tokens / cells]), ("group_by_length + pad, batch 8", [grouped]), None,
               check="deterministic: one measurement per arm", load_before=l0)]
    # token-budget micro-batches (train.micro_batch_tokens = 8 rows of 512, global batch 32): each
    # step's 32 examples packed together, so rows mix short and long rows of the whole step
    budget = TrainLoader(StageStream(dataset=list(rows), seed=0), micro_batch_size=8, rank=0, world_size=1,
                         max_seq_len=512, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, micro_batch_tokens=4096,
                         step_examples=32)
    b_tokens = b_cells = 0
    for _ in range(budget.batches_per_epoch):
        for b in budget.next_step(1):
            b_tokens += b["num_tokens"]
            b_cells += b["input_ids"].numel()
    out.append(row("packing_efficiency_budget", "packing efficiency (non-pad cells)",
                   setting.replace("micro-batch 8", "train.micro_batch_tokens 4096 (8 rows of 512), global batch 32"),
                   "fraction", ("token-budget micro-batches", [b_tokens / b_cells]),
                   ("group_by_length + pad, batch 8", [grouped]), None, check="deterministic: one measurement per arm",
                   load_before=l0))
    for r in out:
        r["goal"], r["goal_on"] = 0.99, "ours"
        r["goal_met"] = r["ours"]["median"] >= 0.99
    out.append(_fill_row(tok))

    l0 = load()
    exs = build_stage_stream(_data_cfg(512, 2048, generic_ratio=1.0, random_ratio=1.0), tok, 0).epoch_items(0)[:512]
    n_tok = sum(len(x) for x in exs)
    flat = DataCollatorWithFlattening(return_tensors="pt")
    feats = [{"input_ids": x.input_ids.tolist(), "labels": x.labels.tolist()} for x in exs]
    t = alternate({"pack": lambda: packing.pack(exs, 2048, 0), "flat": lambda: flat(feats)}, 2 * repeats + 1)
    r = row("pack_speed", "pack() speed", f"{len(exs)} REMIX-mixture examples into 2,048-token rows", "tokens/s",
            ("remix_ds.data.packing.pack", [n_tok / s for s in t["pack"]]),
            ("HF DataCollatorWithFlattening (one row)", [n_tok / s for s in t["flat"]]), 5e6, goal_on="ours",
            load_before=l0)
    out.append(r)
    return out


def _fill_row(tok, max_seq_len: int = 2048, budget: int = 16384, step: int = 32) -> dict:
    """Token-budget fill on KVR factoids mixed 1:1 with 512-2048-token passages (random ids, lengths
    uniform, seed 0): tokens / (micro-batches x budget) over one epoch, against example micro-batches
    of budget / max_seq_len examples (the same memory bound) on the same epoch order."""
    from remix_ds.bench.data import _data_cfg
    from remix_ds.data.loader import TrainLoader
    from remix_ds.data.mixing import StageStream, build_stage_stream
    from remix_ds.data.tokenize import IGNORE, TokenizedExample

    l0 = load()
    facts = build_stage_stream(_data_cfg(256, max_seq_len), tok, 0).epoch_items(0)
    rng = np.random.default_rng(0)
    passages = []
    for i, n in enumerate(rng.integers(512, max_seq_len + 1, len(facts)).tolist()):
        ids = rng.integers(3, tok.vocab_size, n).astype(np.int32)
        labels = ids.copy()
        labels[0] = IGNORE
        passages.append(TokenizedExample(f"passage-{i}", ids, labels))
    rows = list(facts) + passages

    def loader(**kw):
        return TrainLoader(StageStream(dataset=list(rows), seed=0), rank=0, world_size=1, max_seq_len=max_seq_len,
                           pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, **kw)

    ours = loader(micro_batch_size=1, micro_batch_tokens=budget, step_examples=step)
    tokens = mbs = fewest = 0
    for _ in range(ours.batches_per_epoch):
        info = ours.next_step(1).info
        tokens, mbs, fewest = tokens + info["num_tokens"], mbs + info["real_micro_batches"], \
            fewest + -(-info["num_tokens"] // budget)
    per = budget // max_seq_len
    ex = loader(micro_batch_size=per)
    ex_tokens = ex_mbs = 0
    for _ in range(ex.batches_per_epoch):
        ex_tokens, ex_mbs = ex_tokens + next(ex)["num_tokens"], ex_mbs + 1
    fill, bound = tokens / (mbs * budget), tokens / (fewest * budget)
    setting = (f"KVR factoids + 512-2,048-token passages 1:1 ({len(rows)} rows), max_seq_len {max_seq_len:,}, "
               f"train.micro_batch_tokens {budget:,} ({per} rows), global batch {step}, 1 rank, one epoch; "
               "fill = tokens / (micro-batches x micro_batch_tokens)")
    r = row("token_budget_fill", "token-budget fill", setting, "fraction", ("token-budget micro-batches", [fill]),
            (f"example micro-batches of {per} (same memory bound)", [ex_tokens / (ex_mbs * budget)]), 0.95,
            goal_on="ours", check=f"deterministic; the fewest whole-example micro-batches per step allow at most "
            f"{bound:.3f}", load_before=l0)
    return r


def part_stage(repeats: int, factoids: int = 32_000) -> list[dict]:
    decode_all_generic_rows = baseline("stage").decode_all_generic_rows

    from remix_ds.bench.data import _data_cfg
    from remix_ds.data.generic import generic_rows
    from remix_ds.models import load_tokenizer

    l0 = load()
    tok = load_tokenizer("tiny")
    cfg = _data_cfg(factoids, 2048, generic_ratio=1.0, generic_format="completion")
    generic_rows(cfg, tok, 8)  # corpus open, tables
    got = {}

    def arm(name, fn):
        return lambda: got.__setitem__(name, fn(cfg, tok, factoids)[0])

    # seconds per call: the warm-up call above is enough
    t = alternate({"ours": arm("ours", generic_rows), "decode": arm("decode", decode_all_generic_rows)}, repeats, 0)
    same = [x.input_ids.tolist() for x in got["ours"]] == [x.input_ids.tolist() for x in got["decode"]]
    return [row("stage_build", "stage build, generic rows", f"{factoids:,} generic completion rows (a {factoids:,}-factoid "
                "stage at ratio 1), tiny tokenizer", "s", ("word cache, each drawn document once (remix_ds.data.generic.generic_rows)", t["ours"]),
                ("decode every drawn document, tokenize rows", t["decode"]), 3.0, higher_is_better=False,
                goal_on="ours", check=f"rows identical: {same}", load_before=l0), _stage_full_row(repeats, factoids)]


def _stage_full_row(repeats: int, factoids: int) -> dict:
    """The whole stage (`build_stage_stream`: KVR facts, their tokens, the generic rows at ratio 1)
    with ids read straight from the Rust tokenizer, against the same build through the HF
    tokenizer's ``__call__`` (`data.tokenize.rust_backend` answering None, as for a slow tokenizer)."""
    from unittest import mock

    from remix_ds.bench.data import _data_cfg
    from remix_ds.data import tokenize
    from remix_ds.data.mixing import build_stage_stream
    from remix_ds.models import load_tokenizer

    l0 = load()
    tok = load_tokenizer("tiny")
    cfg = _data_cfg(factoids, 2048, generic_ratio=1.0, generic_format="completion")
    got = {}

    def wrapper():
        with mock.patch.object(tokenize, "rust_backend", lambda tokenizer: None):
            got["wrapper"] = build_stage_stream(cfg, tok, 0).epoch_items(0)

    def rust():
        got["rust"] = build_stage_stream(cfg, tok, 0).epoch_items(0)

    t = alternate({"rust": rust, "wrapper": wrapper}, repeats)
    same = [x.input_ids.tolist() for x in got["rust"]] == [x.input_ids.tolist() for x in got["wrapper"]]
    return row("stage_build_full", "stage build, whole stage", f"{factoids:,} KVR facts + {factoids:,} generic completion "
               "rows (build_stage_stream), tiny tokenizer", "s", ("ids straight from the Rust tokenizer", t["rust"]),
               ("the same build through the HF tokenizer call", t["wrapper"]), 3.0, higher_is_better=False,
               goal_on="ours", check=f"rows identical: {same}", load_before=l0)


def part_train(repeats: int) -> list[dict]:
    """The engine vs Hugging Face `Trainer` on the same model, packed micro-batches and ZeRO-3 JSON
    (`remix-ds bench train`, a fresh process so its process group is its own)."""
    import subprocess
    import sys

    l0 = load()
    overrides = ["data.kvr.num_pairs=512", "train.global_batch_size=16", "train.micro_batch_size=16"]
    with tempfile.TemporaryDirectory(prefix="remix-bench-record-") as tmp:
        out = Path(tmp) / "train.json"
        cmd = [sys.executable, "-m", "remix_ds.cli", "bench", "train", str(CHECKOUT / "configs" / "tiny.yaml"),
               *overrides, "--steps", "12", "--warmup", "3", "--repeats", str(repeats), "--hf-trainer", "on",
               "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=3600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(f"bench train: {tail[-1] if tail else f'exit {proc.returncode}'}")
        res = json.loads(out.read_text())
    return [row("train", "training throughput", "built-in tiny Llama (1.25M parameters), ZeRO-3 JSON, "
                "world size 1, 16 KVR examples a step packed, 12 timed steps after 3", "tokens/s",
                ("remix-ds engine (Trainer.train_step)", res["remix_ds_tokens_per_s_all"]),
                ("HF transformers.Trainer + DeepSpeed, same micro-batches", res["hf_trainer_tokens_per_s_all"]),
                None, check="same model, micro-batches and ds_configs/zero3.json", load_before=l0)]


def part_mix(repeats: int, pairs: int = 2000) -> list[dict]:
    """Stage start (`remix-ds bench mix`): seconds to the first optimizer step in hand with
    data.mix.redraw=step against the default redraw=stage (the whole pool drawn up front)."""
    from remix_ds.bench.mix import MIXES, _loader
    from remix_ds.data import corpus
    from remix_ds.models import load_tokenizer

    tok = load_tokenizer("tiny")
    corpus.generic_corpus(tok, tokenizer_name="tiny", progress=False)  # built/cached before timing
    rows = []
    for name, mix in MIXES.items():
        l0 = load()
        arms = {r: (lambda r=r: _loader(tok, pairs, {**mix, "redraw": r}).next_step(4)) for r in ("step", "stage")}
        t = alternate(arms, repeats)
        rows.append(row(f"mix_{name}", "stage start", f"{pairs:,} KVR facts, {name.replace('_', ' ')} at ratio 2, "
                        "global batch 32, micro-batch 8, max_seq_len 512: seconds to the first step's batches",
                        "s", ("data.mix.redraw=step (the first step's rows only)", t["step"]),
                        ("data.mix.redraw=stage, the default (every mixing row drawn and tokenized up front)",
                         t["stage"]), None, higher_is_better=False, load_before=l0))
    return rows


RUNNERS = {"random_words": part_random_words, "eval": part_eval, "eval_zero3": part_eval_zero3, "loss": part_loss,
           "packing": part_packing, "stage": part_stage, "train": part_train, "mix": part_mix}


# ---- rendering ----------------------------------------------------------------------------------
def _num(x: float, unit: str) -> str:
    if unit == "fraction":
        return f"{x:.3f}"
    if unit in ("s", "GiB"):
        return f"{x:.3g}"
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e4:
        return f"{x / 1e3:.3g}k"
    return f"{x:.3g}"


def _arm(a: dict, unit: str) -> str:
    if a["min"] == a["max"]:
        return f"{a['name']}: {_num(a['median'], unit)}"
    return f"{a['name']}: {_num(a['median'], unit)} [{_num(a['min'], unit)}, {_num(a['max'], unit)}]"


def _goal(r: dict) -> str:
    if r.get("goal") is None:
        return "-"
    if r["goal_on"] == "ratio":
        want = f">= {r['goal']:g}x"
    else:
        want = f"{'>=' if r['higher_is_better'] else '<='} {_num(r['goal'], r['unit'])} {r['unit']}"
    return f"{want}: {'met' if r['goal_met'] else 'missed'}"


def _ratio(r: dict) -> str:
    q = r["ratio"]
    word = "" if q["median"] >= 1.0 else " (baseline ahead)"
    if q["min"] == q["max"]:
        return f"{q['median']:.2f}x{word}"
    return f"{q['median']:.2f}x [{q['min']:.2f}, {q['max']:.2f}]{word}"


def render(recorded: dict) -> str:
    """The headline table of docs/benchmarks.md, from the recorded JSON."""
    m = recorded["machine"]
    lines = [f"Recorded by `{recorded['command']}` (last run; machine: {m['summary']}). Arms, alternated "
             "(3 repetitions by default, every value in the JSON): median [min, max]; ratio: median "
             "[min, max] of the per-repetition ratios, > 1 when remix-ds is ahead; load: 1-minute load average "
             "before / after the row.", "",
             "| metric | setting | remix-ds | strongest baseline | remix-ds vs baseline | goal | check | machine, date, load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in recorded["rows"]:
        la = r["load_average"]
        lines.append(f"| {r['metric']} ({r['unit']}) | {r['setting']} | {_arm(r['ours'], r['unit'])} | "
                     f"{_arm(r['baseline'], r['unit'])} | {_ratio(r)} | {_goal(r)} | {r['check'] or '-'} | "
                     f"{r.get('machine', m['short'])}, {r['date']}, load {la[0]} / {la[1]} |")
    return "\n".join(lines)


def rewrite_doc(doc: Path, table: str) -> None:
    """Replace the text between the headline markers of ``doc`` with ``table``."""
    text = doc.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"{doc}: needs exactly one {BEGIN} and one {END} line")
    head, rest = text.split(BEGIN)
    write_text_atomic(doc, head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1])


def machine_summary() -> dict:
    from remix_ds.bench.data import machine_info

    info = machine_info()
    short = f"{info['cuda'] or 'CPU'}, {info['cpus_usable']} cores"
    return {**info, "short": short,
            "summary": f"{info['cpu']}, {info['cpus_usable']} usable cores"
                       + (f", {info['cuda']}" if info["cuda"] else "")
                       + f", OMP_NUM_THREADS={info['omp_num_threads']}, torch {info['torch']}, numpy {info['numpy']}"}


def record(parts: tuple[str, ...], repeats: int, root: Path = CHECKOUT, command: str = "remix-ds bench all --record") -> dict:
    """Run ``parts``, merge their rows into ``root``/docs/bench_results/headline.json (rows of parts
    not run are kept) and rewrite the table in ``root``/docs/benchmarks.md."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--record-parts: unknown part(s) {', '.join(sorted(unknown))}; parts: {', '.join(PARTS)}")
    path = root / RESULTS
    recorded = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    if not (root / DOC).is_file() or (root / DOC).read_text().count(BEGIN) != 1:
        raise SystemExit(f"{root / DOC}: needs exactly one {BEGIN} and one {END} line")
    order = {p: i for i, p in enumerate(PARTS)}
    errors = {}
    for p in parts:  # each part's rows are written as soon as it ends: an interrupted run keeps them
        t = time.perf_counter()
        try:
            got = RUNNERS[p](repeats)
        except Exception as e:  # keep the other parts' rows; say which part failed
            got, errors[p] = [], f"{type(e).__name__}: {e}"
        print(f"[bench record] {p}: {time.perf_counter() - t:.0f} s{' FAILED ' + errors[p] if p in errors else ''}",
              flush=True)
        short = machine_summary()["short"]
        for r in got:
            r["part"], r["machine"] = p, short
        ids = {r["id"] for r in got}
        rows = [r for r in recorded["rows"] if r["id"] not in ids] + got
        rows.sort(key=lambda r: order.get(r.get("part", ""), 0))
        recorded = {"command": command, "repeats": repeats, "machine": machine_summary(),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows, "errors": errors}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(recorded, indent=2) + "\n")
        rewrite_doc(root / DOC, render(recorded))
    print(f"wrote {path} and the table in {root / DOC}")
    return recorded
