"""Count device -> host synchronizations in steady-state training steps and in an evaluation (CUDA).

    from remix_ds.bench.syncdebug import run_sync_debug
    report = run_sync_debug(overrides=["train.micro_batch_tokens=256"])   # a dict, see below

Builds the real Trainer (tiny model by default), runs `warmup` optimizer steps normally (first-step
allocations, lazy initialization), then `steps` steps that are *not* log steps and one evaluation
through the trainer's eval hook, each under `torch.cuda.set_sync_debug_mode(mode)`:

- ``mode="warn"`` (default): every synchronizing CUDA call becomes a Python warning attributed to
  the frame that made it; they are tallied by ``file:line``. Sites inside remix-ds (``remix_ds/``,
  ``kernels/``) are counted apart from third-party ones (DeepSpeed's ZeRO-3 step, transformers).
- ``mode="error"``: the first synchronizing call raises; its message and the innermost remix-ds
  frame are reported.

Returned dict: ``device``, ``steps``, ``step_syncs_remix`` / ``step_syncs_other`` (counts),
``step_sites`` (``{"file:line": count}``), ``eval_examples``, ``eval_syncs_remix``, ``eval_sites``,
``error`` (mode error only, else None) and ``ok`` (no remix-ds sync in the steps and fewer remix-ds
syncs in the evaluation than examples, i.e. none per example). Skips (``{"skipped": reason}``)
without CUDA. The GPU check script calls this; tests/test_loader_background.py does not need it.
"""

from __future__ import annotations

import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from remix_ds.baselines import build_regularizers
from remix_ds.config import load_config

OURS = ("/remix_ds/", "/kernels/")
DEFAULTS = ("data.kvr.num_pairs=64", "data.max_seq_len=128", "train.global_batch_size=32",
            "train.micro_batch_tokens=256", "eval.datasets=[kvr]", "eval.mode=fused")
"""The tiny model on KVR with token-budget micro-batches and a fused evaluation (used when overrides is None)."""


def _ours(filename: str) -> bool:
    return any(part in filename.replace("\\", "/") for part in OURS)


def _site(filename: str, line: int) -> str:
    parts = filename.replace("\\", "/").split("/")
    return f"{'/'.join(parts[-2:])}:{line}"


def _run(fn, mode: str) -> tuple[Counter, Counter, str | None]:
    """(our sites, other sites, error) of the syncs `fn()` makes under sync debug `mode`."""
    ours, other, error = Counter(), Counter(), None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(mode)
        try:
            fn()
        except RuntimeError as e:
            if "synchroniz" not in str(e):
                raise
            frames = [f for f in traceback.extract_tb(e.__traceback__) if _ours(f.filename)]
            where = _site(frames[-1].filename, frames[-1].lineno) if frames else "?"
            error = f"{where}: {str(e).splitlines()[0]}"
            (ours if frames else other)[where] += 1
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message):
            (ours if _ours(w.filename) else other)[_site(w.filename, w.lineno)] += 1
    return ours, other, error


def run_sync_debug(config: str | None = None, overrides: Sequence[str] | None = None, steps: int = 3,
                   warmup: int = 2, mode: str = "warn") -> dict:
    """See the module docstring. Call in a world of one (or on every rank of a launch)."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    from remix_ds.engine.trainer import Trainer
    from remix_ds.eval.hook import build_eval_hooks

    with tempfile.TemporaryDirectory(prefix="remix-syncdebug-") as tmp:
        cfg = load_config(config, list(DEFAULTS if overrides is None else overrides))
        cfg.train.output_dir, cfg.train.resume = tmp, "none"
        cfg.train.max_steps, cfg.train.log_every = warmup + steps + 1, 10**9
        cfg.train.progress_bar = cfg.train.tensorboard = False
        trainer = Trainer(cfg, eval_hooks=build_eval_hooks(cfg), regularizers=build_regularizers(cfg))
        try:
            for _ in range(warmup):
                trainer.train_step(trainer._next_step_batches())
                trainer.step += 1

            def train():
                for _ in range(steps):
                    trainer.train_step(trainer._next_step_batches())
                    trainer.step += 1

            s_ours, s_other, s_err = _run(train, mode)
            trainer._evaluate()  # warm the evaluation path once (gathers, caches)
            n_eval = sum(len(s.examples) for h in trainer.eval_hooks for s in getattr(h, "sets", []))
            e_ours, e_other, e_err = _run(lambda: trainer._evaluate(), mode)
        finally:
            trainer.engine.destroy()
            trainer.close()
    report = {
        "device": torch.cuda.get_device_name(0),
        "mode": mode,
        "steps": steps,
        "step_syncs_remix": sum(s_ours.values()),
        "step_syncs_other": sum(s_other.values()),
        "step_sites": dict(s_ours + s_other),
        "eval_examples": n_eval,
        "eval_syncs_remix": sum(e_ours.values()),
        "eval_syncs_other": sum(e_other.values()),
        "eval_sites": dict(e_ours + e_other),
        "error": s_err or e_err,
    }
    report["ok"] = report["step_syncs_remix"] == 0 and not (s_err and s_ours) and (
        not n_eval or report["eval_syncs_remix"] < n_eval)
    return report


def _main() -> int:  # python -m remix_ds.bench.syncdebug [CONFIG] [overrides...]
    import json
    import sys

    args = sys.argv[1:]
    config = args.pop(0) if args and Path(args[0]).suffix in (".yaml", ".yml", ".json") else None
    print(json.dumps(run_sync_debug(config, args or None), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
