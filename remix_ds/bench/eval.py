"""`remix-ds bench eval`: examples/s of the fused evaluator vs Hugging Face ``generate``.

    remix-ds bench eval [--model tiny] [--examples 64] [--ranks 2] [--out bench_eval.json]

Same KVR examples, same model, three measurements per setting:

- ``fused``: one teacher-forced forward per packed batch (ZeRO-3: parameters gathered once).
- ``generate``: our generation path, HF ``generate`` with KV cache (ZeRO-3: gathered once).
- ``generate_naive`` (ZeRO-3 only): ``model.generate`` on the *partitioned* engine module with
  ``synced_gpus=True``, i.e. DeepSpeed all-gathers every layer for every generated token.

Settings: one process, and ``--ranks`` ranks under ZeRO-3 (the command relaunches itself through
the ``deepspeed`` launcher; gloo on CPU). Generation runs ``max_new_tokens`` = the longest gold
answer + EOS (the least that decides every verdict). Verdicts are checked to agree: fused
``correct`` == generated text matches the gold, and the generated tokens start with the prefix
the fused pass proves (gold prefix + first wrong argmax).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from remix_ds import models
from remix_ds.data.config import KVRConfig
from remix_ds.data.datasets import generate_kvr
from remix_ds.data.tokenize import pad_id
from remix_ds.engine import dist
from remix_ds.eval.fused import score_fused
from remix_ds.eval.generate import generate_greedy
from remix_ds.eval.items import make_items
from remix_ds.eval.matchers import is_correct
from remix_ds.eval.zero import eval_model


def _examples(n: int):
    return generate_kvr(KVRConfig(num_pairs=n, seed=1))


def _check(items, fused, gens) -> dict:
    """Verdict agreement between the fused results and generations (both sorted by index)."""
    by = {g.index: g for g in gens}
    same_verdict = same_prefix = 0
    for it, f in zip(items, fused):
        g = by[it.index]
        same_verdict += f.correct == is_correct(g.text, it.gold, "exact")
        toks = g.token_ids + [int(it.answer_ids[-1])]  # EOS was cut off the generation
        same_prefix += toks[: len(f.greedy_prefix)] == f.greedy_prefix
    return {"verdicts_equal": same_verdict == len(items), "prefixes_equal": same_prefix == len(items),
            "em": sum(f.correct for f in fused) / max(1, len(fused))}


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run_setting(model, tok, n: int, batch_size: int, max_batch_tokens: int, rank: int, world: int,
                naive: bool, repeats: int = 1) -> dict:
    """Time fused / generate (/ naive generate) on this rank's shard of n KVR examples; fused and
    generate alternate ``repeats`` times (medians; every repetition's seconds in ``seconds_all``)."""
    examples = _examples(n)
    items = make_items(examples, tok)
    mine = [it for it in items if it.index % world == rank]
    max_new = max(len(it.answer_ids) for it in items)
    pad = pad_id(tok)
    res: dict = {"n": n, "ranks": world, "max_new_tokens": max_new, "repeats": repeats}

    # Warm-up (first-call overheads), untimed.
    with eval_model(model) as m:
        score_fused(m, mine[:2], 0, max_batch_tokens, pad)
        generate_greedy(m, tok, mine[:2], batch_size, 2)
    dist.barrier()
    t_fs, t_gs = [], []
    for _ in range(repeats):
        with eval_model(model) as m:  # gathers once under ZeRO-3
            fused, t_f = _timed(lambda: score_fused(m, mine, 0, max_batch_tokens, pad))
            dist.barrier()
        t_fs.append(max(dist.all_gather_objects(t_f)))
        with eval_model(model) as m:
            gens, t_g = _timed(lambda: generate_greedy(m, tok, mine, batch_size, max_new))
            dist.barrier()
        t_gs.append(max(dist.all_gather_objects(t_g)))
    t_f, t_g = statistics.median(t_fs), statistics.median(t_gs)
    res["fused"] = {"seconds": t_f, "examples_per_s": n / t_f, "seconds_all": t_fs}
    res["generate"] = {"seconds": t_g, "examples_per_s": n / t_g, "seconds_all": t_gs, **_agree(mine, fused, gens)}
    if naive:
        module = model.module if hasattr(model, "module") else model
        module.eval()
        steps = max(dist.all_gather_objects(-(-len(mine) // batch_size)))
        # HF generate on the partitioned module: every forward all-gathers each layer, so ranks
        # must step together (synced_gpus) and run the same number of generate calls.
        naive_gens, t_n = _timed(lambda: generate_greedy(module, tok, mine, batch_size, max_new,
                                                         n_steps=steps, synced=True))
        t_n = max(dist.all_gather_objects(t_n))
        res["generate_naive"] = {"seconds": t_n, "examples_per_s": n / t_n, **_agree(mine, fused, naive_gens)}
        res["fused_speedup_vs_naive_generate"] = t_n / t_f
    res["fused_speedup_vs_generate"] = t_g / t_f
    return res


def _agree(items, fused, gens) -> dict:
    """Agreement on this rank's shard, reduced over ranks."""
    parts = dist.all_gather_objects(_check(items, fused, gens))
    return {"verdicts_equal": all(p["verdicts_equal"] for p in parts),
            "prefixes_equal": all(p["prefixes_equal"] for p in parts)}


def _load(model_name: str, dtype):
    """Model (left on the device from_pretrained chose; under the worker's HfDeepSpeedConfig,
    partitioned) and tokenizer."""
    model = models.load_for_inference(model_name, dtype=dtype, device=None, outside_zero3=False)
    return model, models.load_tokenizer(models.resolve_path(model_name))


def _worker(args) -> None:
    """One rank of the ZeRO-3 setting (started by the deepspeed launcher)."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    dist.init_distributed()
    rank, world = dist.rank(), dist.world_size()
    dtype = models.resolve_dtype("auto")
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "bf16": {"enabled": dtype == torch.bfloat16},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": True}},
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}, "steps_per_print": 10**9}
    keep = HfDeepSpeedConfig(ds)  # noqa: F841  # from_pretrained partitions under zero.Init
    model, tok = _load(args.model, dtype)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    res = run_setting(engine, tok, args.n, args.batch_size, args.max_batch_tokens, rank, world, naive=not args.no_naive,
                      repeats=args.repeats)
    if rank == 0:  # the result is safe on disk before any teardown
        Path(args.worker).write_text(json.dumps(res))
    dist.shutdown(engine)


def _build_shape(args) -> str:
    """--layers/--hidden: a random-init Llama of that shape with the tiny tokenizer, saved once so
    every rank loads the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = models.cache_root() / "bench" / f"eval-llama-{args.layers}x{args.hidden}"
    if not (out / "config.json").is_file():
        tok = models.load_tokenizer(args.model)
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                          num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
        LlamaForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


def run_zero3(model: str, n: int, batch_size: int, max_batch_tokens: int, ranks: int, out: Path,
              master_port: int, repeats: int = 1, naive: bool = True) -> dict:
    """The ZeRO-3 setting: ``ranks`` workers through the deepspeed launcher; rank 0's JSON."""
    launcher = Path(sys.executable).with_name("deepspeed")
    cmd = [str(launcher if launcher.exists() else "deepspeed"), "--num_gpus", str(ranks),
           "--master_port", str(master_port), "--module", "remix_ds.bench.eval", "--worker", str(out),
           "--model", model, "--examples", str(n), "--batch-size", str(batch_size),
           "--max-batch-tokens", str(max_batch_tokens), "--repeats", str(repeats), *([] if naive else ["--no-naive"])]
    out.unlink(missing_ok=True)
    proc = subprocess.run(cmd)
    if not out.is_file():
        raise SystemExit(f"bench eval: the ZeRO-3 worker wrote no {out} (launcher exit {proc.returncode})")
    res = json.loads(out.read_text())
    if proc.returncode:  # rank 0 finished and wrote its JSON; keep it, say how the launcher ended
        res["launcher_exit_code"] = proc.returncode
    return res


def run(args) -> int:
    if args.layers:
        args.model = _build_shape(args)
    dtype = models.resolve_dtype("auto")
    model, tok = _load(args.model, dtype)
    if torch.cuda.is_available():
        model = model.cuda()
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
                   f"torch threads {torch.get_num_threads()}"
                   + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "model": args.model,
        "params": sum(p.numel() for p in model.parameters()),
        "command": "remix-ds bench eval " + " ".join(sys.argv[3:]),
        "single": run_setting(model, tok, args.n, args.batch_size, args.max_batch_tokens, 0, 1, naive=False,
                              repeats=args.repeats),
    }
    if args.ranks > 1:
        report["zero3"] = run_zero3(args.model, args.n, args.batch_size, args.max_batch_tokens, args.ranks,
                                    Path(args.out).with_suffix(".zero3.json"), args.master_port, args.repeats)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _add_args(p) -> None:
    p.add_argument("--model", default="tiny", help="model folder / hub id / tiny")
    p.add_argument("--examples", dest="n", type=int, default=64, help="number of KVR examples")
    p.add_argument("--batch-size", type=int, default=64,
                   help="generation prompts per batch (64: the gathered-once batched-generate baseline)")
    p.add_argument("--max-batch-tokens", type=int, default=8192, help="fused tokens per forward")
    p.add_argument("--repeats", type=int, default=1, help="alternated fused/generate timings (medians)")


def add_bench_eval_command(subparsers) -> None:
    """Register ``remix-ds bench eval`` (sets ``func=run``)."""
    p = subparsers.add_parser("eval", help="fused evaluator vs HF generate, examples/s (1 process and ZeRO-3)")
    _add_args(p)
    p.add_argument("--ranks", type=int, default=2, help="ranks of the ZeRO-3 setting (1: skip it)")
    p.add_argument("--layers", type=int, default=0, help="bench a random-init Llama with this many layers instead")
    p.add_argument("--hidden", type=int, default=64, help="width of the --layers model")
    p.add_argument("--master-port", type=int, default=29511)
    p.add_argument("--out", default="bench_eval.json")
    p.set_defaults(func=run)


if __name__ == "__main__":  # the ZeRO-3 worker, under the deepspeed launcher
    parser = argparse.ArgumentParser()
    _add_args(parser)
    parser.add_argument("--worker", required=True, help="JSON written by rank 0")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive ZeRO-3 generate")
    _worker(parser.parse_known_args()[0])
