"""`remix-ds bench grid`: a grid's wall time, serial vs concurrent cells (scheduler.kind=local).

Measured: the demo grid, reduced by overrides (`REDUCED`, one repetition a few minutes on 2 CPU
cores), run as `remix-ds experiment` subprocesses in fresh output folders, serial (one process,
all cores to one stage: the strongest plain alternative) and `scheduler.kind=local` with
max_concurrent=2 (one thread per job), alternating, medians. Stage 0 and the caches are built
before timing (they are shared by both arms).

Modelled: the paper grid (configs/paper/{kvr,popqa,triviaqa}.yaml) on one 8 x H100 node, serial
on 8 GPUs vs 4 concurrent cells of 2 GPUs, from the FLOP model of docs/replication.md
(`remix_ds.bench.flops.train_flops`, Llama-3-8B, the same token lengths, rows and epochs); the
assumptions are parameters and are written into the JSON.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import remix_ds
from remix_ds.bench.flops import train_flops
from remix_ds.bench.data import write_result
from remix_ds.bench.train import machine_info
from remix_ds.experiments.config import load_experiment, parse_strategy

REDUCED = ["data_b=[{name: kvr_b, dataset: kvr, num_examples: 16}]", "strategies=[none,random@12]",
           "data_a=[{name: kvr_a, dataset: kvr, num_examples: 16}]", "stage1.max_epochs=12", "stage2.epochs=4",
           "analysis.preservation_n=8", "analysis.lens_max_examples=16"]
"""The demo grid cut to 2 cells with 2 stage-1 runs (so two stages can run at once from the start)."""

# ---- measured ---------------------------------------------------------------------------------
def _run_grid(out: Path, overrides: list[str], threads: str | None) -> float:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    cmd = [sys.executable, "-m", "remix_ds.experiments", str(Path(remix_ds.__file__).parent / "demo.yaml"),
           f"output_dir={out}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"grid failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def bench_measured(repeats: int, overrides: list[str], concurrent: int, work: Path) -> dict:
    cores = os.cpu_count() or 1
    arms = {"serial": (["scheduler.kind=serial"], None),
            f"local_{concurrent}": ([f"scheduler.kind=local", f"scheduler.max_concurrent={concurrent}"], None)}
    _run_grid(work / "warmup", overrides + ["scheduler.kind=serial"], None)  # stage 0, tiny model, corpus: cached
    walls: dict[str, list[float]] = {k: [] for k in arms}
    for i in range(repeats):
        for name, (extra, threads) in (arms.items() if i % 2 == 0 else reversed(list(arms.items()))):
            walls[name].append(round(_run_grid(work / f"{name}-{i}", overrides + extra, threads), 1))
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {"overrides": overrides, "cores": cores, "repeats": repeats, "wall_s": walls,
            "median_wall_s": med, f"serial_over_local_{concurrent}": round(med["serial"] / med[f"local_{concurrent}"], 2),
            "threads": "serial: torch default (all cores to one stage); local: OMP_NUM_THREADS = cores / jobs"}


# ---- modelled ---------------------------------------------------------------------------------
LLAMA3_8B = SimpleNamespace(vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, head_dim=128)
N_8B = 8_030_261_248
LEN = {"kvr": 30, "popqa": 30, "triviaqa": 40, "lama": 20, "entityqa": 25, "webqa": 25, "ultrachat": 1100, "evolcode": 450,
       "apps": 600, "gsm8k": 250, "math": 400, "random": 165, "generic": 150}
GENERATED_B = {"ultrachat", "evolcode", "apps", "gsm8k", "math"}


def paper_runs(root: Path, rows: int = 2000, epochs: float = 20) -> list[dict]:
    """Every stage-1 run (once per shared tag) and stage-2 run of the three paper grids: FLOPs,
    optimizer steps (global batch 32), and whether D_B is generation-judged."""
    runs = []
    for name in ("kvr", "popqa", "triviaqa"):
        c = load_experiment(root / "configs" / "paper" / f"{name}.yaml")
        a = c.data_a[0].dataset
        seen = set()
        for spec in c.strategies:
            st = parse_strategy(spec, c.mix_ratio)
            mix1 = [(LEN[a], rows), (LEN["random"], int(rows * st.random[0])), (LEN["generic"], int(rows * st.generic[0]))]
            if st.stage1_tag() not in seen:
                seen.add(st.stage1_tag())
                runs.append(_run(f"{name}/stage1/{st.stage1_tag()}", mix1, epochs, None, False))
            for b in c.data_b:
                mix2 = [(LEN[b.dataset], rows), (LEN["random"], int(rows * st.random[1])),
                        (LEN["generic"], int(rows * st.generic[1])), (LEN[a], int(rows * st.replay))]
                runs.append(_run(f"{name}/{b.name}/{spec}", mix2, epochs, f"{name}/stage1/{st.stage1_tag()}",
                                 b.dataset in GENERATED_B))
    return runs


def _run(key: str, mix: list[tuple[int, int]], epochs: float, dep: str | None, generated: bool) -> dict:
    mix = [m for m in mix if m[1]]
    flops = sum(train_flops(LLAMA3_8B, N_8B, [length] * n) for length, n in mix) * epochs
    return {"key": key, "flops": flops, "steps": sum(n for _, n in mix) / 32 * epochs, "dep": dep, "generated_b": generated}


def run_time(run: dict, gpus: int, a: dict) -> float:
    """Seconds of one run on `gpus` GPUs: max(compute at the MFU, steps x ZeRO-3 floor) + its evals."""
    mfu, floor = (a["mfu_8"], a["floor_8_s"]) if gpus == 8 else (a["mfu_2"], a["floor_2_s"])
    train = max(run["flops"] / (mfu * a["peak_flops"] * gpus), run["steps"] * floor)
    if run["dep"] is None:
        return train
    evals = a["eval_cell_8_s"] + (a["eval_generated_8_s"] if run["generated_b"] else 0.0)
    return train + evals * 8 / gpus * a["eval_scaling"] + (1 - a["eval_scaling"]) * evals


def schedule(runs: list[dict], lanes: int, gpus: int, a: dict) -> float:
    """Makespan of list scheduling on `lanes` groups: stage-1 runs first, a stage 2 once its stage 1 is done."""
    done_at: dict[str, float] = {}
    free = [0.0] * lanes
    heapq.heapify(free)
    for run in sorted(runs, key=lambda r: r["dep"] is not None):  # stage-1 runs first, then cells in plan order
        start = max(heapq.heappop(free), done_at.get(run["dep"], 0.0))
        done_at[run["key"]] = start + run_time(run, gpus, a)
        heapq.heappush(free, done_at[run["key"]])
    return max(done_at.values())


ASSUMPTIONS = {
    "peak_flops": 989e12, "mfu_8": 0.30, "mfu_2": 0.30, "floor_8_s": 0.25, "floor_2_s": 0.25,
    "eval_cell_8_s": 180.0, "eval_generated_8_s": 450.0, "eval_scaling": 1.0,
}
"""docs/replication.md's: 30% MFU on 8 x H100 bf16, 0.25 s per optimizer step floor (ZeRO-3 on small factoid
batches), ~3 min of D_A evals + analyses per cell, ~7.5 min generation-judged D_B eval on the 5 non-factoid
sets; the 2-GPU cell is assumed as efficient per GPU (mfu_2, floor_2_s) and its evals 4x longer
(eval_scaling 1: eval work splits across ranks)."""


def bench_model(root: Path, assumptions: dict) -> dict:
    runs = paper_runs(root)
    out = {"assumptions": assumptions, "stage1_runs": sum(r["dep"] is None for r in runs),
           "stage2_runs": sum(r["dep"] is not None for r in runs),
           "training_eflop": round(sum(r["flops"] for r in runs) / 1e18, 1)}
    scenarios = {"as_assumed": assumptions,
                 "2gpu_floor_0.15s_mfu_0.35": {**assumptions, "floor_2_s": 0.15, "mfu_2": 0.35},
                 "2gpu_mfu_0.25": {**assumptions, "mfu_2": 0.25}}
    for name, a in scenarios.items():
        serial, conc = schedule(runs, 1, 8, a), schedule(runs, 4, 2, a)
        out[name] = {"serial_8gpu_h": round(serial / 3600, 1), "concurrent_4x2gpu_h": round(conc / 3600, 1),
                     "speedup": round(serial / conc, 2)}
    return out


def run(out: str | Path | None = None, *, repeats: int = 2, overrides: list[str] | None = None,
        concurrent: int = 2, measure: bool = True, keep: bool = False) -> dict:
    root = Path(__file__).resolve().parents[2]
    result = {
        "benchmark": "grid",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["remix-ds", "bench", "grid", *sys.argv[3:]]) if sys.argv[1:3] == ["bench", "grid"] else None,
        "machine": machine_info(),
        "paper_grid_model": bench_model(root, ASSUMPTIONS),
    }
    if measure:
        work = Path(tempfile.mkdtemp(prefix="remix-bench-grid-"))
        try:
            result["demo_grid"] = bench_measured(repeats, REDUCED if overrides is None else overrides, concurrent, work)
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
    write_result(result, out)
    return result


def add_bench_grid_command(bsub) -> argparse.ArgumentParser:
    """Register ``bench grid`` on the ``bench`` subparsers; sets ``func``."""
    p = bsub.add_parser("grid", help="grid wall time: serial vs concurrent cells (measured demo, modelled paper grid)")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--repeats", type=int, default=2, help="repetitions per arm (alternating; medians)")
    p.add_argument("--concurrent", type=int, default=2, help="scheduler.max_concurrent of the concurrent arm")
    p.add_argument("--model-only", action="store_true", help="only the paper-grid FLOP model (seconds)")
    p.add_argument("--keep", action="store_true", help="keep the grids' output folders")
    p.add_argument("overrides", nargs="*", help="demo-grid overrides instead of the built-in reduction")
    p.set_defaults(func=lambda a: (print(json.dumps(run(a.out, repeats=a.repeats, overrides=a.overrides or None,
                                                        concurrent=a.concurrent, measure=not a.model_only, keep=a.keep),
                                                    indent=2)), 0)[1])
    return p
