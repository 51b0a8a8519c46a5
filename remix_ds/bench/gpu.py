"""`remix-ds bench gpu`: the GPU validation run, every step in its own subprocess under its own timeout.

    remix-ds bench gpu [--out-dir gpu_check] [--budget 480] [--steps attention,linear_ce,train,eval,syncdebug]
    remix-ds bench gpu --cpu              # the dry run at toy sizes (CPU only; the test suite runs it)

`launch/gpu_check.sh` wraps this (installs the carried wheels first); docs/gpu_check.md says how
to run it on a lent GPU machine. Steps (sizes on CUDA; `--cpu` shrinks every one):

- `attention`: every attention backend that imports (flash-attn, torch varlen, flex with a document
  mask; remix_ds.kernels.attention) against an fp64 per-sequence reference, bf16 and fp32, forward
  and backward, GQA, odd lengths and reset positions; pass rule (flash-attn's): the backend's error
  is at most 2x the SDPA reference's own error in that dtype + 1e-3. Then packed vs unpacked
  logits of a small Llama in train mode through the auto-chosen attention implementation (and
  `remix_varlen`).
- `linear_ce`: lm_head + cross-entropy at vocab 128,256, 16,384 tokens, hidden 4096, bf16:
  chunked (and Liger if installed) vs the plain path, all and 25% supervised: loss and gradient
  errors, peak `torch.cuda.max_memory_allocated` above the inputs, median time of fwd + bwd.
- `train`: an 8192^3 bf16 matmul (the measured peak), then `bench train` (remix_ds/bench/train.py:
  the real Trainer on DeepSpeed ZeRO-3, then HF Trainer on the same micro-batches and DeepSpeed
  template) on a Llama-3-8B-shaped random-init model (hidden 4096, MLP 14336, 32/8 heads, vocab
  128,256) with as many layers as fit (capped by `--train-layers`), packed rows of 2,048 tokens:
  tokens/s, TFLOP/s, MFU against the datasheet peak and the measured matmul, peak memory.
- `eval`: fused EM vs gathered-once batched generate (remix_ds/bench/eval.py `run_setting`) on a
  32-layer narrow Llama at batch 64: examples/s and whether verdicts and greedy prefixes agree.
- `syncdebug`: `remix_ds.bench.syncdebug.run_sync_debug` in warn then error mode (skipped without CUDA).

Each step runs as `python -m remix_ds.bench.gpu --step NAME --result FILE` in a new process
session, killed (the whole group) at its timeout, so a hang or a CUDA crash costs that step only.
After every step `gpu_check.json` and `gpu_check.md` are rewritten atomically (temp + os.replace):
a run cut off at any point still holds every finished step. A step's `status` is `passed`,
`failed` (a check's numbers are out of tolerance, or it raised: `error` says what), `timeout`, or
`skipped` (with `reason`: a missing optional package, no budget left).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from remix_ds import models
from remix_ds.bench import train as bench_train
from remix_ds.bench.eval import run_setting
from remix_ds.cachedir import write_text_atomic
from remix_ds.config import TrainConfig
from remix_ds.data.packing import pack
from remix_ds.data.tokenize import TokenizedExample
from remix_ds.engine.loss import model_inputs
from remix_ds.errors import RemixError
from remix_ds.kernels import attention as A
from remix_ds.kernels import linear_cross_entropy as L

STEPS = ("attention", "linear_ce", "train", "eval", "syncdebug")
# Seconds per step on CUDA; they sum to the 8-minute window (model construction included).
DEFAULT_TIMEOUTS = {"attention": 95, "linear_ce": 45, "train": 175, "eval": 85, "syncdebug": 80}
DEFAULT_BUDGET = 480
NOMINAL_PEAK_TFLOPS = 989.0  # H100/H200 SXM dense bf16 (datasheet)

# Llama-3-8B's shape (fewer layers: see `llama8b_layers`).
L3_HIDDEN, L3_INTER, L3_HEADS, L3_KV, L3_VOCAB = 4096, 14336, 32, 8, 128256


class Skip(Exception):
    """Raised by a step that cannot run here; the message is the reason."""


# ---- small helpers --------------------------------------------------------------------------------
def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp32 (0 when both are 0)."""
    a, b = a.float(), b.float()
    den = b.norm().item()
    return (a - b).norm().item() / den if den else float((a - b).norm().item())


def _median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # a broken optional install counts as missing
        return False
    return True


# ---- a. attention parity --------------------------------------------------------------------------
def _qkv(lengths, hq, hkv, d, device, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    qkv = [torch.randn(n, h, d, generator=g, dtype=torch.float64).to(device) for h in (hq, hkv, hkv)]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return qkv, cu


def _per_sequence(q, k, v, cu):
    """Causal SDPA on each sequence alone (the definition), GQA by repeating kv heads."""
    import torch.nn.functional as F

    groups = q.shape[1] // k.shape[1]
    outs = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1))
    return torch.cat(outs)


def _out_and_grads(fn, qkv, cu, dout, backward: bool):
    xs = [x.detach().clone().requires_grad_(backward) for x in qkv]
    out = fn(*xs, cu)
    if not backward:
        return [out.detach()]
    out.backward(dout.to(out.dtype))
    return [out.detach()] + [x.grad.detach() for x in xs]


def attention_kernels(toy: bool) -> list[dict]:
    device = "cpu" if toy else "cuda"
    lengths = [1, 7, 33, 100] if toy else [1, 7, 33, 100, 257, 1000, 613]  # odd, a 1-token sequence
    d = 16 if toy else 128
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for hq, hkv in ((8, 8), (8, 2)):
            qkv64, cu = _qkv(lengths, hq, hkv, d, device, seed=hq * 10 + hkv)
            max_len = max(lengths)
            dout = torch.randn(qkv64[0].shape, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64).to(device)
            exact = _out_and_grads(_per_sequence, qkv64, cu, dout, True)
            low = [x.to(dtype) for x in qkv64]
            base = _out_and_grads(lambda *a: A.varlen_attention(*a, max_len, backend="sdpa"), low, cu, dout, True)
            backends = A.available_backends(device, dtype)
            if device == "cpu" and "flex" not in backends and A._flex_installed():
                backends.insert(0, "flex")  # forward only on CPU
            for name in backends:
                backward = not (device == "cpu" and name == "flex")
                try:
                    got = _out_and_grads(lambda *a, n=name: A.varlen_attention(*a, max_len, backend=n), low, cu,
                                         dout, backward)
                except Exception as e:  # one backend failing must not hide the others
                    rows.append({"backend": name, "dtype": str(dtype)[6:], "hq": hq, "hkv": hkv, "ok": False,
                                 "error": f"{type(e).__name__}: {e}"[:300]})
                    continue
                row = {"backend": name, "dtype": str(dtype)[6:], "hq": hq, "hkv": hkv, "backward": backward,
                       "ok": True}
                for what, e, b, g in zip(("out", "dq", "dk", "dv"), exact, base, got):
                    err = (g.double() - e).abs().max().item()
                    ref_err = (b.double() - e).abs().max().item()
                    row[f"{what}_max_err"], row[f"{what}_ref_err"] = err, ref_err
                    row["ok"] &= bool(err <= 2 * ref_err + 1e-3) and g.dtype == dtype
                rows.append(row)
    return rows


def _packed_examples(toy: bool):
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = [2, 7, 33, 100, 20, 61] if toy else [2, 7, 33, 100, 257, 1000, 613, 1500, 41]
    examples = []
    for i, n in enumerate(lengths):
        ids = rng.integers(3, 2000, n).astype(np.int32)
        labels = ids.copy()
        labels[: n // 2] = -100
        examples.append(TokenizedExample(str(i), ids, labels))
    return examples, (128 if toy else 2048)


def packed_vs_unpacked(toy: bool, attn: str, dtype: torch.dtype) -> dict:
    """Logits of each example inside packed rows (reset positions) vs the example alone, train mode."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    A.register()
    device = "cpu" if toy else "cuda"
    width, heads = (64, 4) if toy else (1024, 8)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn).to(device)
    model.train()  # the training path; Llama has no dropout, so logits are deterministic
    examples, row_len = _packed_examples(toy)
    batch = pack(examples, row_len, pad_id=0)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        packed = model(**model_inputs(batch, attn)).logits.reshape(-1, cfg.vocab_size)  # (R*T, V)
        by_ids = {tuple(ex.input_ids.tolist()): ex for ex in examples}
        flat = batch["input_ids"].reshape(-1)
        cu = batch["cu_seq_lens_q"].tolist()
        worst_abs, worst_rel, matched = 0.0, 0.0, 0
        for s, e in zip(cu, cu[1:]):
            ex = by_ids.get(tuple(flat[s:e].tolist()))
            if ex is None:
                continue  # the all-pad tail
            alone = model(input_ids=torch.as_tensor(ex.input_ids, device=device).long()[None],
                          use_cache=False).logits[0]
            worst_abs = max(worst_abs, (packed[s:e].float() - alone.float()).abs().max().item())
            worst_rel = max(worst_rel, _rel(packed[s:e], alone))
            matched += 1
    tol = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    return {"attn_implementation": attn, "dtype": str(dtype)[6:], "examples": matched, "rows": int(batch["input_ids"].shape[0]),
            "max_abs_diff": worst_abs, "max_rel_diff": worst_rel, "tol_rel": tol,
            "ok": matched == len(examples) and worst_rel <= tol}


def step_attention(toy: bool) -> dict:
    kernels = attention_kernels(toy)
    auto = models.choose_attn_implementation("auto")
    dtypes = (torch.float32,) if toy else (torch.bfloat16, torch.float32)
    impls = [auto] + (["remix_varlen"] if auto != "remix_varlen" else [])
    logits = [packed_vs_unpacked(toy, impl, dt) for impl in impls for dt in dtypes
              if not (impl == "flash_attention_2" and dt == torch.float32)]
    ok = all(r["ok"] for r in kernels) and all(r["ok"] for r in logits)
    worst = max((r.get("out_max_err", 0.0) for r in kernels), default=0.0)
    return {"passed": ok, "kernels": kernels, "packed_vs_unpacked": logits,
            "summary": f"{len({r['backend'] for r in kernels})} backends x {len(kernels) // max(1, len({r['backend'] for r in kernels}))} "
                       f"cases, worst out err {worst:.2e}; packed vs unpacked worst rel "
                       f"{max(r['max_rel_diff'] for r in logits):.2e} ({auto})"}


# ---- b. fused linear cross-entropy ----------------------------------------------------------------
def step_linear_ce(toy: bool) -> dict:
    device = "cpu" if toy else "cuda"
    n, v, h = (512, 4000, 64) if toy else (16384, L3_VOCAB, L3_HIDDEN)
    dtype = torch.float32 if toy else torch.bfloat16
    reps = 3
    backends = ["reference", "chunked"] + (["liger"] if L.liger_available() else [])
    g = torch.Generator().manual_seed(0)
    hidden0 = (torch.randn(n, h, generator=g) * 1.0).to(device, dtype)
    weight0 = (torch.randn(v, h, generator=g) * h ** -0.5).to(device, dtype)
    cases = []
    for frac in (1.0, 0.25):
        target = torch.randint(0, v, (n,), generator=g)
        target[torch.randperm(n, generator=g)[: int(n * (1 - frac))]] = L.IGNORE_INDEX
        target = target.to(device)
        results = {}
        for name in backends:
            def once():
                hid = hidden0.detach().clone().requires_grad_()
                w = weight0.detach().clone().requires_grad_()
                loss = L.linear_cross_entropy(hid, w, target, backend=name)
                loss.backward()
                return loss.detach(), hid.grad, w.grad

            gc.collect()
            peak = None
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            loss, gh, gw = once()
            if device == "cuda":
                peak = (torch.cuda.max_memory_allocated() - base) / 2**30
            seconds = _median_seconds(once, reps)
            results[name] = (loss, gh, gw, peak, seconds)
        ref = results["reference"]
        tol_loss, tol_grad = (1e-5, 1e-4) if dtype == torch.float32 else (2e-3, 3e-2)
        for name in backends:
            loss, gh, gw, peak, seconds = results[name]
            row = {"backend": name, "supervised": frac, "tokens": n, "vocab": v, "hidden": h,
                   "dtype": str(dtype)[6:], "loss": loss.item(), "seconds": seconds, "peak_gib": peak,
                   "loss_rel_err": abs(loss.item() - ref[0].item()) / abs(ref[0].item()),
                   "grad_hidden_rel_err": _rel(gh, ref[1]), "grad_weight_rel_err": _rel(gw, ref[2])}
            row["ok"] = (row["loss_rel_err"] <= tol_loss and row["grad_hidden_rel_err"] <= tol_grad
                         and row["grad_weight_rel_err"] <= tol_grad)
            if name != "reference":
                row["speedup_vs_reference"] = ref[4] / seconds
                if peak is not None and ref[3]:
                    row["peak_ratio_vs_reference"] = peak / ref[3]
            cases.append(row)
        del results, ref
    fused = [c for c in cases if c["backend"] != "reference"]
    return {"passed": all(c["ok"] for c in cases), "cases": cases, "liger_installed": "liger" in backends,
            "summary": "; ".join(f"{c['backend']} {int(c['supervised'] * 100)}%: x{c.get('speedup_vs_reference', 1):.2f} "
                                 f"time, grad err {c['grad_weight_rel_err']:.1e}"
                                 + (f", peak x{c['peak_ratio_vs_reference']:.2f}" if "peak_ratio_vs_reference" in c else "")
                                 for c in fused)}


# ---- c. bench train on a Llama-3-8B-shaped model --------------------------------------------------
def matmul_tflops(toy: bool) -> dict:
    """Median TFLOP/s of an n^3 matmul (8192 bf16 on CUDA; 512 fp32 on CPU), random inputs."""
    n, device, dtype = (512, "cpu", torch.float32) if toy else (8192, "cuda", torch.bfloat16)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    seconds = _median_seconds(lambda: a @ b, 5 if toy else 20)
    return {"n": n, "dtype": str(dtype)[6:], "seconds": seconds, "tflops_per_s": 2 * n**3 / seconds / 1e12}


def llama8b_layers(gpu_bytes: int, micro_tokens: int, cap: int) -> tuple[int, int]:
    """(layers that fit, layers used = min(fit, cap)) for the 8B-shaped model under ZeRO-3 on one GPU.

    Per parameter 16 bytes: bf16 weight and gradient, fp32 master, AdamW m and v. Activations per
    layer ~34 bytes x hidden x tokens (Korthikanti et al. 2022, flash attention: no s^2 term). A
    fixed 30 GB covers the HF Trainer's full (tokens x 128,256) logits and their fp32 copies, and
    0.7 of the memory is the budget (allocator slack, DeepSpeed buckets).
    """
    per_layer = 2 * L3_HIDDEN * L3_HIDDEN + 2 * L3_HIDDEN * (L3_HIDDEN * L3_KV // L3_HEADS) + 3 * L3_HIDDEN * L3_INTER
    fixed = 2 * L3_VOCAB * L3_HIDDEN
    free = 0.7 * gpu_bytes - 16 * fixed - 30e9
    fit = max(0, int(free // (16 * per_layer + 34 * L3_HIDDEN * micro_tokens)))
    return fit, max(1, min(fit, cap))


def build_llama8b(layers: int, out: Path) -> str:
    """A random-init Llama-3-8B-shaped folder (vocab 128,256) with the tiny tokenizer (ids < 2048 used)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = models.load_tokenizer("tiny")
    cfg = LlamaConfig(vocab_size=L3_VOCAB, hidden_size=L3_HIDDEN, intermediate_size=L3_INTER,
                      num_hidden_layers=layers, num_attention_heads=L3_HEADS, num_key_value_heads=L3_KV,
                      max_position_embeddings=8192, rope_theta=500000.0, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):  # init on the GPU: seconds instead of minutes on CPU
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return str(out)


def step_train(toy: bool, max_layers: int = 4, ds_template: str = "zero3") -> dict:
    matmul = matmul_tflops(toy)
    has_mbt = "micro_batch_tokens" in {f.name for f in dataclasses.fields(TrainConfig)}
    result: dict = {"matmul": matmul}
    with tempfile.TemporaryDirectory(prefix="remix-gpu-check-") as tmp:
        if toy:
            row_len, micro_tokens = 128, 256
            overrides = ["model.name_or_path=tiny", "data.kvr.num_pairs=64", "data.max_seq_len=128",
                         "train.global_batch_size=8", "train.micro_batch_size=4", "model.dtype=fp32"]
            steps, warmup = 2, 1
        else:
            row_len, micro_tokens = 2048, 16384
            fit, layers = llama8b_layers(torch.cuda.get_device_properties(0).total_memory, micro_tokens, max_layers)
            result.update(layers_fit_in_memory=fit, layers=layers)
            t = time.perf_counter()
            folder = build_llama8b(layers, Path(tmp) / "llama8b-shape")
            result["model_build_seconds"] = time.perf_counter() - t
            # KVR examples are ~35 tokens with the tiny tokenizer: 468 fill a ~16k-token micro-batch
            # (8 rows of 2,048); 2 micro-batches per optimizer step.
            overrides = [f"model.name_or_path={folder}", "data.kvr.num_pairs=8192", f"data.max_seq_len={row_len}",
                         "train.global_batch_size=936", "train.micro_batch_size=468", "model.dtype=bf16",
                         f"deepspeed.config={ds_template}"]
            steps, warmup = 3, 1
        if has_mbt:
            overrides.append(f"train.micro_batch_tokens={micro_tokens}")
        result["batching"] = (f"train.micro_batch_tokens={micro_tokens}" if has_mbt else
                              "example-count micro-batches (train.micro_batch_tokens not in RunConfig)")
        result["overrides"] = overrides
        bench = bench_train.run(None, overrides, steps=steps, warmup=warmup, hf_trainer=True, repeats=1)
    remix = bench["remix_ds"]
    result.update(remix_ds=remix, hf_trainer=bench.get("hf_trainer"),
                  tokens_per_s_ratio_remix_over_hf=bench.get("tokens_per_s_ratio_remix_over_hf"),
                  machine=bench["machine"])
    tflops = remix["tflops_per_s"]
    result["mfu_vs_nominal_989"] = None if toy else tflops / NOMINAL_PEAK_TFLOPS
    result["mfu_vs_measured_matmul"] = tflops / matmul["tflops_per_s"]
    ratio = result["tokens_per_s_ratio_remix_over_hf"]
    result["passed"] = remix["tokens_per_s"] > 0 and bool(remix["final_loss"] == remix["final_loss"])  # not NaN
    result["summary"] = (f"{remix['tokens_per_s']:.0f} tok/s, {tflops:.3g} TFLOP/s, MFU "
                         + (f"{result['mfu_vs_nominal_989']:.1%} of 989, " if not toy else "")
                         + f"{result['mfu_vs_measured_matmul']:.1%} of matmul {matmul['tflops_per_s']:.3g}"
                         + (f"; x{ratio:.2f} vs HF Trainer" if ratio else ""))
    return result


# ---- d. fused EM vs generate ----------------------------------------------------------------------
def step_eval(toy: bool) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, width, n, batch = (4, 64, 32, 16) if toy else (32, 256, 512, 64)
    tok = models.load_tokenizer("tiny")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    dtype = models.resolve_dtype("auto")
    model = LlamaForCausalLM(cfg).to("cpu" if toy else "cuda", dtype)
    res = run_setting(model, tok, n, batch, 8192, 0, 1, naive=False)
    gen = res["generate"]
    return {"layers": layers, "hidden": width, "batch_size": batch, "dtype": str(dtype)[6:], **res,
            "passed": bool(gen["verdicts_equal"] and gen["prefixes_equal"]),
            "summary": f"fused {res['fused']['examples_per_s']:.1f} ex/s vs generate {gen['examples_per_s']:.1f} ex/s "
                       f"(x{res['fused_speedup_vs_generate']:.2f}); verdicts equal {gen['verdicts_equal']}, "
                       f"prefixes equal {gen['prefixes_equal']}"}


# ---- e. sync-debug ---------------------------------------------------------------------------------
def step_syncdebug(toy: bool) -> dict:
    """`bench.syncdebug.run_sync_debug` in warn mode (every remix-ds sync site tallied), then in
    error mode (the first sync raises) — the issue's `set_sync_debug_mode("error")` check."""
    from remix_ds.bench.syncdebug import run_sync_debug

    if not torch.cuda.is_available():
        raise Skip("torch.cuda.set_sync_debug_mode needs a CUDA device")
    warn = run_sync_debug(mode="warn")
    error = run_sync_debug(mode="error")
    result = {"warn": warn, "error_mode": error}
    result["passed"] = bool(warn.get("ok")) and bool(error.get("ok"))
    result["summary"] = (f"steps: {warn.get('step_syncs_remix')} remix-ds / {warn.get('step_syncs_other')} other syncs; "
                         f"eval: {warn.get('eval_syncs_remix')} remix-ds syncs for {warn.get('eval_examples')} examples; "
                         f"error mode: {error.get('error') or 'no sync raised'}")
    return result


STEP_FUNCS = {"attention": step_attention, "linear_ce": step_linear_ce, "train": step_train, "eval": step_eval,
              "syncdebug": step_syncdebug}


def run_step(name: str, toy: bool, result_path: Path, hang: bool = False, **kw) -> int:
    """The child: run one step, write its JSON (status, numbers or reason)."""
    if hang:  # testing knob: behave like a wedged kernel
        time.sleep(10**6)
    if not toy and not torch.cuda.is_available():
        out = {"status": "skipped", "reason": "no CUDA device in this process"}
    else:
        try:
            out = STEP_FUNCS[name](toy, **kw)
            out["status"] = "passed" if out.pop("passed") else "failed"
        except Skip as e:
            out = {"status": "skipped", "reason": str(e)}
        except Exception as e:
            out = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
                   "traceback": traceback.format_exc()[-4000:]}
    if torch.cuda.is_available() and not toy:
        out["peak_memory_gib_process"] = torch.cuda.max_memory_allocated() / 2**30
    write_text_atomic(result_path, json.dumps(out, indent=2, default=str) + "\n")
    return 0


# ---- the parent: run steps in subprocesses, write JSON + markdown ---------------------------------
def environment(toy: bool) -> dict:
    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "python": platform.python_version(),
           "torch": torch.__version__, "cpu_count": os.cpu_count(), "mode": "cpu dry run" if toy else "cuda"}
    if not toy and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=p.total_memory / 2**30, cuda=torch.version.cuda,
                   capability=f"{p.major}.{p.minor}")
    env["packages"] = {m: _installed(m) for m in ("deepspeed", "transformers", "flash_attn", "liger_kernel", "datasets")}
    return env


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for k, v in d.items():
        if k in ("summary", "traceback"):
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            items += _flat(v, key + ".")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, x in enumerate(v):
                items += _flat(x, f"{key}[{i}].")
        else:
            items.append((key, v))
    return items


def render_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU check ({env['mode']})", "", f"- date: {env['date']}", f"- command: `{report['command']}`",
             (f"- device: {env['gpu']} ({env['gpu_memory_gib']:.0f} GiB, sm {env['capability']}), torch {env['torch']}, "
              f"CUDA {env['cuda']}" if "gpu" in env else f"- device: CPU ({env['cpu_count']} cores), torch {env['torch']}"), f"- packages: " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                                                    for k, v in env["packages"].items()),
             f"- budget {report['budget_s']} s, used {report['elapsed_s']:.0f} s", "",
             "| step | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for name in report["steps_requested"]:
        s = report["steps"].get(name)
        if s is None:
            lines.append(f"| {name} | pending | | |")
            continue
        note = s.get("summary") or s.get("reason") or s.get("error", "")
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', 0):.1f} | {str(note).replace('|', '/')} |")
    for name, s in report["steps"].items():
        lines += ["", f"## {name}: {s['status']}", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in _flat(s)]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict) -> None:
    write_text_atomic(out_dir / "gpu_check.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(out_dir / "gpu_check.md", render_markdown(report))


def _run_child(cmd: list[str], timeout: float, log: Path, env: dict) -> tuple[int | None, float]:
    """Run in its own process group; on timeout kill the whole group. (returncode or None, seconds)."""
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, time.perf_counter() - t


def run_check(out_dir: Path, toy: bool, steps: list[str], budget: float, timeouts: dict[str, float],
              train_layers: int = 4, ds_template: str = "zero3", hang: str | None = None, command: str = "",
              logs_dir: Path | None = None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = logs_dir or out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = {"command": command, "budget_s": budget, "elapsed_s": 0.0, "steps_requested": steps, "logs_dir": str(logs),
              "timeouts_s": {s: timeouts[s] for s in steps}, "environment": environment(toy), "steps": {}}
    write_report(out_dir, report)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if toy:  # the dry run stays on CPU even on a GPU machine (DeepSpeed then picks its CPU accelerator)
        env.update(CUDA_VISIBLE_DEVICES="")
    for name in steps:
        left = budget - (time.perf_counter() - start)
        if left < 5:
            report["steps"][name] = {"status": "skipped", "reason": f"overall budget of {budget:.0f} s spent",
                                     "seconds": 0.0}
        else:
            result = logs / f"{name}.json"
            result.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "remix_ds.bench.gpu", "--step", name, "--result", str(result),
                   "--train-layers", str(train_layers), "--ds-config", ds_template] + (["--cpu"] if toy else [])
            if hang == name:
                cmd.append("--hang")
            limit = min(timeouts[name], left)
            rc, seconds = _run_child(cmd, limit, logs / f"{name}.log", env)
            if rc is None:
                entry = {"status": "timeout", "reason": f"killed after {limit:.0f} s (see {logs / name}.log)"}
            elif result.is_file():
                entry = json.loads(result.read_text())
            else:
                tail = (logs / f"{name}.log").read_text()[-1500:]
                entry = {"status": "failed", "error": f"step process exited {rc} without a result: {tail}"}
            entry["seconds"] = seconds
            report["steps"][name] = entry
        report["elapsed_s"] = time.perf_counter() - start
        write_report(out_dir, report)
        print(f"[gpu-check] {name}: {report['steps'][name]['status']} ({report['steps'][name]['seconds']:.1f} s)",
              flush=True)
    return report


def _parse_timeouts(items: list[str]) -> dict[str, float]:
    out = dict(DEFAULT_TIMEOUTS)
    for item in items:
        key, _, value = item.partition("=")
        if key not in STEPS or not value:
            raise RemixError(f"--timeout {item!r}: expected STEP=SECONDS with STEP one of {', '.join(STEPS)}")
        try:
            out[key] = float(value)
        except ValueError:
            raise RemixError(f"--timeout {item!r}: {value!r} is not a number of seconds") from None
    return out


def _main(args) -> int:
    steps = [s for s in args.steps.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise RemixError(f"--steps: unknown step {bad[0]!r}; choose from {', '.join(STEPS)}")
    if not args.cpu and not torch.cuda.is_available():
        raise RemixError("bench gpu: no CUDA device here; use --cpu (or DRY_RUN=1 launch/gpu_check.sh) for the dry run")
    timeouts = _parse_timeouts(args.timeout)
    report = run_check(Path(args.out_dir), args.cpu, steps, args.budget, timeouts, args.train_layers, args.ds_config,
                       args.hang_step, command="remix-ds bench gpu " + " ".join(sys.argv[3:]),
                       logs_dir=Path(args.logs_dir) if args.logs_dir else None)
    print(render_markdown(report))
    return 0


def add_bench_gpu_command(bsub) -> None:
    p = bsub.add_parser("gpu", help="GPU validation: attention/loss parity, ZeRO-3 MFU, eval, sync-debug (JSON + md)")
    p.add_argument("--out-dir", default="gpu_check", help="folder for gpu_check.json, gpu_check.md and logs/")
    p.add_argument("--logs-dir", default=None, help="each step's log and result JSON (default OUT_DIR/logs)")
    p.add_argument("--cpu", action="store_true", help="dry run at toy sizes on CPU")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for all steps together")
    p.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                   help=f"per-step limit (defaults {DEFAULT_TIMEOUTS})")
    p.add_argument("--train-layers", type=int, default=4, help="most layers of the 8B-shaped train model")
    p.add_argument("--ds-config", default="zero3", help="DeepSpeed template of the train step (zero3, zero3_offload)")
    p.add_argument("--hang-step", default=None, help="testing: make this step hang (checks the timeout path)")
    p.set_defaults(func=_main)


if __name__ == "__main__":  # one step, in the child process
    parser = argparse.ArgumentParser()
    parser.add_argument("--step", required=True, choices=STEPS)
    parser.add_argument("--result", required=True)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--train-layers", type=int, default=4)
    parser.add_argument("--ds-config", default="zero3")
    a = parser.parse_args()
    extra = {"max_layers": a.train_layers, "ds_template": a.ds_config} if a.step == "train" else {}
    sys.exit(run_step(a.step, a.cpu, Path(a.result), a.hang, **extra))
