"""`remix-ds bench all --out bench_all.json`: every benchmark in one JSON, fast paths vs their references.

    remix-ds bench all                                   # CPU: a few minutes with the small defaults
    remix-ds bench all --loss-tokens 8192 --loss-vocab 128256 --loss-hidden 1024 --skip train,data,eval

Sections:
- `machine`: CPU/GPU model, library versions, which kernels are installed.
- `fused_loss`: lm_head + cross-entropy, fused (remix_ds.kernels.linear_cross_entropy, `auto`
  backend) vs the plain path, on (tokens x hidden) states and a (vocab x hidden) lm_head, loss and
  backward. Each path runs in its own fresh subprocess; time is the median over repeats after the
  first; peak memory is, on CUDA, `torch.cuda.max_memory_allocated` above what the inputs take,
  and on CPU the rise of the process's peak resident set size (`ru_maxrss`) above its resident
  size just before the loss. glibc serves the big tensors with mmap and unmaps them on free, so
  RSS follows live tensor bytes; the number includes the gradients both paths return (hidden and
  weight) and any allocator slack. The child lets its address space (RLIMIT_AS) grow by at most
  the memory available when it starts, less 1 GiB, so an oversized plain run fails with an error instead of waking the
  OOM killer on a shared machine.
- `attention`: the `remix_varlen` dispatch (remix_ds.kernels.attention; flash-attn / torch varlen /
  flex on CUDA, the SDPA reference on CPU) vs the SDPA block-diagonal reference on the same packed
  rows, forward + backward, with the max output difference.
- `train`: `bench train` (tokens/s, supervised tokens/s, TFLOP/s; MFU and peak memory on GPU)
  with the fused loss on and off.
- `data`, `eval`: `bench data --quick` and `bench eval` with small sizes, when importable.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from remix_ds.bench.loss_worker import available_bytes, spawn_loss_worker
from remix_ds.bench.record import PARTS

SECTIONS = ("fused_loss", "attention", "train", "data", "eval")


# ---- machine ------------------------------------------------------------------------------------
def machine() -> dict:
    from remix_ds.bench.train import machine_info
    from remix_ds.kernels import attention, linear_cross_entropy

    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    for pkg in ("flash_attn", "liger_kernel"):
        try:
            info[pkg] = __import__(pkg).__version__
        except Exception:  # optional
            info[pkg] = None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    info["attention_backend"] = attention.choose_backend(device, dtype)
    info["linear_cross_entropy_backend"] = linear_cross_entropy.choose_backend(device)
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


# ---- fused loss ---------------------------------------------------------------------------------
def bench_fused_loss(tokens: int = 2048, vocab: int = 32_000, hidden: int = 256, supervised: float = 1.0,
                     repeats: int = 3, timeout: float = 1800) -> dict:
    """Fused vs plain lm_head + summed cross-entropy (forward + backward), each in a fresh process."""
    cuda = torch.cuda.is_available()
    spec = {"tokens": tokens, "vocab": vocab, "hidden": hidden, "supervised": supervised, "repeats": repeats,
            "device": "cuda" if cuda else "cpu", "dtype": "bfloat16" if cuda else "float32", "backend": "auto"}
    if not cuda:
        avail = available_bytes()
        spec["max_growth_bytes"] = avail - 2**30 if avail else None  # keep 1 GiB for everyone else
    from remix_ds.kernels.linear_cross_entropy import choose_backend, chunk_rows

    out = {"tokens": tokens, "vocab": vocab, "hidden": hidden, "supervised_fraction": supervised,
           "dtype": spec["dtype"], "fused_backend": choose_backend(spec["device"]), "chunk_rows": chunk_rows(vocab),
           "full_logits_fp32_gib": tokens * vocab * 4 / 2**30}
    # plain: full logits for every row (naive); plain_indexed: supervised rows selected first, the
    # strongest plain path (a competent user's; equal to plain when every row is supervised)
    for path in ("plain", "plain_indexed", "fused"):
        out[path] = spawn_loss_worker({**spec, "path": path}, timeout)
    p, pi, f = out["plain"], out["plain_indexed"], out["fused"]
    if "error" not in p and "error" not in f:
        out["loss_rel_diff"] = abs(p["loss"] - f["loss"]) / abs(p["loss"])
        out["grad_weight_norm_rel_diff"] = abs(p["grad_weight_norm"] - f["grad_weight_norm"]) / p["grad_weight_norm"]
        out["time_ratio_fused_over_plain"] = f["seconds"] / p["seconds"]
        out["peak_memory_ratio_plain_over_fused"] = p["peak_bytes_above_inputs"] / f["peak_bytes_above_inputs"]
        for r in (p, f):
            r["peak_gib_above_inputs"] = r["peak_bytes_above_inputs"] / 2**30
    if "error" not in pi and "error" not in f:
        out["time_ratio_fused_over_plain_indexed"] = f["seconds"] / pi["seconds"]
        out["peak_memory_ratio_plain_indexed_over_fused"] = pi["peak_bytes_above_inputs"] / f["peak_bytes_above_inputs"]
        pi["peak_gib_above_inputs"] = pi["peak_bytes_above_inputs"] / 2**30
    return out


# ---- attention ----------------------------------------------------------------------------------
def _packed_rows(rows: int, row_len: int, seed: int = 0) -> torch.Tensor:
    """(R, T) position ids of rows packed with random-length sequences (20..T/2 tokens), pad tail included."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.empty(rows, row_len, dtype=torch.long)
    for r in range(rows):
        col = 0
        while col < row_len:
            n = min(int(torch.randint(20, max(21, row_len // 2), (1,), generator=g)), row_len - col)
            pos[r, col : col + n] = torch.arange(n)
            col += n
    return pos


def bench_attention(rows: int = 2, row_len: int = 1024, heads: int = 8, kv_heads: int = 2, head_dim: int = 64,
                    repeats: int = 5) -> dict:
    """`remix_varlen` dispatch vs the SDPA reference on the same packed rows, forward + backward."""
    from remix_ds.kernels import attention as A

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    pos = _packed_rows(rows, row_len).to(device)
    cu, max_len = A.cu_seqlens_from_position_ids(pos)
    seg = A.segment_ids(cu, rows * row_len).view(rows, row_len)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(rows, heads, row_len, head_dim, generator=g, device=device, dtype=dtype)
    k, v = (torch.randn(rows, kv_heads, row_len, head_dim, generator=g, device=device, dtype=dtype) for _ in range(2))
    scale = head_dim**-0.5
    module = torch.nn.Module()

    def dispatch(q, k, v):
        return A.remix_varlen_attention_forward(module, q, k, v, None, scaling=scale, cu_seq_lens_q=cu,
                                                max_length_q=max_len)[0]

    def reference(q, k, v):
        return A.block_causal_sdpa(q, k, v, seg, scale).transpose(1, 2)

    def timed(fn):
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        times, peak = [], None
        for i in range(repeats + 1):
            for x in leaves:
                x.grad = None
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = fn(*leaves)
            out.float().square().mean().backward()
            if cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated()
            if i:
                times.append(time.perf_counter() - t0)
        return out.detach(), statistics.median(times), peak

    o_ref, t_ref, m_ref = timed(reference)
    o_fast, t_fast, m_fast = timed(dispatch)
    result = {"rows": rows, "row_len": row_len, "sequences": int(cu.numel() - 1), "heads": heads,
              "kv_heads": kv_heads, "head_dim": head_dim, "dtype": str(dtype).replace("torch.", ""),
              "backend": A.choose_backend(device, dtype),
              "reference_seconds": t_ref, "dispatch_seconds": t_fast, "speedup_dispatch_over_reference": t_ref / t_fast,
              "max_abs_diff": (o_fast.float() - o_ref.float()).abs().max().item()}
    if cuda:
        result.update(reference_peak_gib=m_ref / 2**30, dispatch_peak_gib=m_fast / 2**30,
                      peak_memory_ratio_reference_over_dispatch=m_ref / m_fast)
    return result


# ---- the engine and the colleagues' benchmarks ------------------------------------------------------
def bench_train(config: str | None, overrides: list[str], steps: int, warmup: int) -> dict:
    from remix_ds.bench import train

    runs = {}
    for mode in ("off", "on"):
        res = train.run(config, [*overrides, f"model.fused_loss={mode}"], steps=steps, warmup=warmup, hf_trainer=False)
        runs[f"fused_loss_{mode}"] = res["remix_ds"]
    off, on = runs["fused_loss_off"], runs["fused_loss_on"]
    runs["tokens_per_s_ratio_fused_over_plain"] = on["tokens_per_s"] / off["tokens_per_s"]
    runs["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return runs


def bench_data() -> dict:
    from remix_ds.bench import data

    return data.run(None, quick=True)


def bench_eval(examples: int, ranks: int) -> dict:
    from remix_ds.bench import eval as eval_bench

    parser = argparse.ArgumentParser()
    eval_bench.add_bench_eval_command(parser.add_subparsers())
    with tempfile.TemporaryDirectory(prefix="remix-bench-eval-") as tmp:
        args = parser.parse_args(["eval", "--examples", str(examples), "--ranks", str(ranks),
                                  "--out", str(Path(tmp) / "eval.json")])
        args.func(args)
        return json.loads((Path(tmp) / "eval.json").read_text())


def _section(result: dict, name: str, fn) -> None:
    """Run one section; a failing section (e.g. a colleague's unfinished benchmark) is recorded, not fatal."""
    t0 = time.perf_counter()
    try:
        result[name] = fn()
    except ImportError as e:
        result[name] = {"skipped": f"not importable: {e}"}
    except Exception as e:  # keep the other sections' numbers
        result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
    print(f"[bench all] {name}: {result['section_seconds'][name]} s", flush=True)


def run(args) -> dict:
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--skip: unknown section(s) {', '.join(sorted(unknown))}; sections: {', '.join(SECTIONS)}")
    result = {"benchmark": "all", "command": "remix-ds bench all " + " ".join(sys.argv[3:]), "machine": machine()}
    if "fused_loss" not in skip:
        _section(result, "fused_loss", lambda: bench_fused_loss(args.loss_tokens, args.loss_vocab, args.loss_hidden,
                                                                args.loss_supervised, args.loss_repeats))
    if "attention" not in skip:
        _section(result, "attention", lambda: bench_attention(args.attn_rows, args.attn_row_len))
    if "train" not in skip:
        _section(result, "train", lambda: bench_train(args.config, args.overrides, args.train_steps, args.train_warmup))
    if "data" not in skip:
        _section(result, "data", bench_data)
    if "eval" not in skip:
        _section(result, "eval", lambda: bench_eval(args.eval_examples, args.eval_ranks))
    return result


def _main(args) -> int:
    from remix_ds.engine import dist

    if args.record:
        from remix_ds.bench import record

        parts = tuple(x.strip() for x in args.record_parts.split(",") if x.strip())
        record.record(parts, args.record_repeats, command="remix-ds bench all " + " ".join(sys.argv[3:]))
        return 0
    result = run(args)
    if dist.is_main():
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        summary = {k: v for k, v in result.get("fused_loss", {}).items() if "ratio" in k}
        summary.update({f"attention_{k}": v for k, v in result.get("attention", {}).items() if "ratio" in k or "speedup" in k})
        print(json.dumps(summary, indent=2))
        print(f"wrote {args.out}")
    return 0


def add_bench_all_command(bsub) -> None:
    p = bsub.add_parser("all", help="every benchmark in one JSON; fast paths vs references (fused loss, attention)")
    p.add_argument("config", nargs="?", help="run config for the train section (default: built-in tiny)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the train section")
    p.add_argument("--out", default="bench_all.json", help="JSON output path")
    p.add_argument("--record", action="store_true",
                   help="run the headline benchmarks instead (remix_ds/bench/record.py): write "
                        "docs/bench_results/headline.json and the table in docs/benchmarks.md")
    p.add_argument("--record-parts", default=",".join(PARTS),
                   help="headline parts to run with --record (rows of the others are kept)")
    p.add_argument("--record-repeats", type=int, default=3, help="alternated repetitions per arm with --record")
    p.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    p.add_argument("--loss-tokens", type=int, default=1024, help="tokens (rows) of the loss benchmark")
    p.add_argument("--loss-vocab", type=int, default=128_256, help="vocabulary of the loss benchmark (Llama-3's)")
    p.add_argument("--loss-hidden", type=int, default=128, help="hidden size of the loss benchmark")
    p.add_argument("--loss-supervised", type=float, default=1.0, help="fraction of rows with a label (answer-only < 1)")
    p.add_argument("--loss-repeats", type=int, default=2, help="loss runs per path (time: median after the first)")
    p.add_argument("--attn-rows", type=int, default=2, help="packed rows of the attention benchmark")
    p.add_argument("--attn-row-len", type=int, default=1024, help="row length of the attention benchmark")
    p.add_argument("--train-steps", type=int, default=3, help="timed optimizer steps per train run")
    p.add_argument("--train-warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--eval-examples", type=int, default=32, help="KVR examples of the eval section")
    p.add_argument("--eval-ranks", type=int, default=1, help="ZeRO-3 ranks of the eval section (1: one process only)")
    p.set_defaults(func=_main)

