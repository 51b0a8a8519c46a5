"""`remix-ds bench forgetting --out FILE.json`: cost of a forgetting-matrix study.

Two measurements, one process:

  row        one task row as `forgetting measure` runs it: Trainer start (DeepSpeed ZeRO-3 engine),
             ``--steps`` fine-tuning steps, and the fused NLL pass over ``--upstream`` N upstream
             windows of ``--window-tokens`` tokens (built-in generic corpus). Reported separately,
             plus the row time extrapolated to ``--extrapolate-steps`` steps (label: extrapolated).
  complete   a synthetic ``--rows`` x ``--cols`` matrix (rank 5 + biases + noise): fit each
             predictor on the rows minus ``--heldout`` held-out rows and fold those in from
             ``--revealed`` entries; seconds per fit and per fold-in, and RMSE on hidden entries.

Machine info is recorded; numbers are comparable only on the same machine.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_row(args) -> dict:
    from remix_ds.forgetting.config import ForgettingConfig, TaskConfig, UpstreamConfig
    from remix_ds.forgetting.measure import RowProbe, run_with_probe, task_run_config, upstream_for
    from remix_ds.data.tokenize import pad_id

    work = Path(tempfile.mkdtemp(prefix="bench-forgetting-"))
    task = work / "task.jsonl"
    rng = np.random.default_rng(0)
    with open(task, "w") as f:
        for i in range(256):
            a, b = rng.integers(0, 1000, 2)
            f.write(json.dumps({"prompt": f"What is {a} plus {b}?", "answer": str(a + b)}) + "\n")
    fcfg = ForgettingConfig(output_dir=str(work), upstream=UpstreamConfig(num_examples=args.upstream,
                                                                          window_tokens=args.window_tokens),
                            tasks=[TaskConfig(dataset=str(task))])
    fcfg.measure.steps, fcfg.measure.lr = args.steps, 1e-4
    fcfg.finetune.model.name_or_path = args.model
    fcfg.finetune.train.global_batch_size = args.batch
    fcfg.finetune.train.micro_batch_size = args.batch
    fcfg.finetune.train.progress_bar = False
    fcfg.finetune.train.tensorboard = False
    t = time.perf_counter()
    upstream, tokenizer = upstream_for(fcfg)
    upstream_s = time.perf_counter() - t
    from remix_ds.engine import dist

    dist.init_distributed("auto")
    rows = []
    for _ in range(args.repeats + 1):  # the first start also builds DeepSpeed ops: reported, not timed
        cfg = task_run_config(fcfg, fcfg.tasks[0], work / "run")
        probe = RowProbe(upstream.items, fcfg.finetune.eval, pad_id(tokenizer), set(), args.steps, 0, 1)
        start = {}
        t0 = time.perf_counter()
        info = run_with_probe(cfg, probe, lambda tr: start.setdefault("init_s", time.perf_counter() - t0) and {})
        rows.append({"total_s": time.perf_counter() - t0, "init_s": start["init_s"], **info})
    timed = rows[1:]
    med = {k: statistics.median(r[k] for r in timed) for k in ("total_s", "init_s", "train_seconds", "nll_seconds")}
    step_s = med["train_seconds"] / args.steps
    return {
        "model": args.model, "upstream": args.upstream, "window_tokens": args.window_tokens, "steps": args.steps,
        "global_batch_size": args.batch, "repeats": args.repeats, "upstream_load_s": upstream_s,
        "first_start_s": rows[0]["init_s"],
        "trainer_start_s": med["init_s"], "train_s": med["train_seconds"], "step_s": step_s,
        "nll_pass_s": med["nll_seconds"], "nll_examples_per_s": args.upstream / med["nll_seconds"],
        "nll_tokens_per_s": args.upstream * (args.window_tokens - 1) / med["nll_seconds"],
        "row_s": med["total_s"],
        "extrapolated_steps": args.extrapolate_steps,
        "row_s_extrapolated": med["init_s"] + step_s * args.extrapolate_steps + med["nll_seconds"],
    }


def synthetic_matrix(m: int, n: int, rank: int = 5, sigma: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.lognormal(0, 0.5, (m, rank))
    b = rng.normal(0, 0.3, (n, rank))
    return 0.2 + 0.5 * a @ b.T / np.sqrt(rank) + rng.normal(0, 0.1, (m, 1)) + rng.normal(0, 0.1, (1, n)) \
        + rng.normal(0, sigma, (m, n))


def bench_complete(args) -> dict:
    from remix_ds.forgetting.complete import make_predictor
    from remix_ds.forgetting.predict import reveal

    sigma = 0.05
    Z = synthetic_matrix(args.rows, args.cols, sigma=sigma)
    held = np.arange(args.rows - args.heldout, args.rows)
    train = Z[: args.rows - args.heldout]
    out = {"rows": args.rows, "cols": args.cols, "heldout": args.heldout, "revealed": args.revealed,
           "noise_sigma": sigma, "methods": {}}
    for name in ("row_mean", "col_mean", "additive", "knn", "mf"):
        fits, folds, errs = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            p = make_predictor(name).fit(train)
            fits.append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in held.tolist():
                cols = reveal(args.cols, args.revealed, 0, i)
                pred = p.fold_in(cols, Z[i, cols])
                hidden = np.setdiff1d(np.arange(args.cols), cols)
                errs.append(float(np.sqrt(np.mean((pred[hidden] - Z[i, hidden]) ** 2))))
            folds.append((time.perf_counter() - t) / len(held))
        out["methods"][name] = {"fit_s": statistics.median(fits), "fold_in_s_per_row": statistics.median(folds),
                                "rmse_hidden": float(np.mean(errs))}
    return out


def run(args) -> int:
    from remix_ds.bench.data import machine_info

    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "command": "remix-ds bench forgetting"}
    if not args.skip_complete:
        report["complete"] = bench_complete(args)
        for name, r in report["complete"]["methods"].items():
            print(f"complete {args.rows}x{args.cols} {name}: fit {r['fit_s']:.3f}s, fold-in "
                  f"{1e3 * r['fold_in_s_per_row']:.2f} ms/row, RMSE {r['rmse_hidden']:.4f}", flush=True)
    if not args.skip_row:
        r = report["row"] = bench_row(args)
        print(f"row ({args.model}, N={args.upstream} x {args.window_tokens} tokens, {args.steps} steps): "
              f"{r['row_s']:.1f}s = start {r['trainer_start_s']:.1f}s + train {r['train_s']:.1f}s "
              f"({r['step_s']:.3f} s/step) + NLL {r['nll_pass_s']:.1f}s ({r['nll_examples_per_s']:.0f} examples/s); "
              f"extrapolated to {args.extrapolate_steps} steps: {r['row_s_extrapolated']:.0f}s", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


def add_bench_forgetting_command(subparsers) -> None:
    """Register ``remix-ds bench forgetting`` (sets ``func=run``)."""
    p = subparsers.add_parser("forgetting", help="forgetting matrices: one task row, completion of a 100 x 10,000 matrix")
    p.add_argument("--model", default="tiny", help="base model (HF folder / hub id / tiny)")
    p.add_argument("--upstream", type=int, default=1000, help="N upstream windows scored per row")
    p.add_argument("--window-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="fine-tuning steps timed per row")
    p.add_argument("--extrapolate-steps", type=int, default=1000, help="report the row time at this many steps too")
    p.add_argument("--batch", type=int, default=8, help="global (= micro) batch size of the fine-tune")
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--cols", type=int, default=10000)
    p.add_argument("--heldout", type=int, default=10, help="rows folded in (the rest train the predictor)")
    p.add_argument("--revealed", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-row", action="store_true")
    p.add_argument("--skip-complete", action="store_true")
    p.add_argument("--out", default="bench_forgetting.json")
    p.set_defaults(func=run)
