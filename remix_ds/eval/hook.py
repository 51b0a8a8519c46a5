"""The trainer's eval hook: score `eval.datasets` every `train.eval_every` steps.

    hook = build_eval_hook(run_cfg)                                # None when nothing to score
    trainer = Trainer(run_cfg, eval_hooks=[hook])                  # setup(trainer): its tokenizer, rank, world
    # or, without a trainer:
    hook = build_eval_hook(run_cfg, tokenizer, rank, world_size)
    metrics = hook(model, step=N, out_dir=RUN_DIR / "eval")        # on ALL ranks together

It implements `remix_ds.engine.hooks.EvalHook`: under a Trainer, ``setup(trainer)`` binds the
trainer's tokenizer, rank and world size (so the tokenizer is loaded once, by the trainer).

``model`` may be the HF module or the DeepSpeed engine, ZeRO-3-partitioned or not. The hook puts
it in eval mode and back in its previous mode, returns
``{"eval/<set>/em": ..., "eval/<set>/answer_nll": ..., ...}`` (the same dict on every rank) and,
with ``eval.write_rows``, rank 0 writes ``OUT_DIR/step-N/<set>.jsonl`` + ``<set>.metrics.json``.
Examples are loaded and tokenized once, when the hook is built.
"""

from __future__ import annotations

from pathlib import Path

from remix_ds.eval.data import EvalSet, load_eval_sets
from remix_ds.eval.runner import evaluate, step_dir, write_results


class EvalSetsHook:
    """Scores eval sets: ``(model, step, out_dir) -> dict[str, float]``; see the module docstring."""

    def __init__(self, sets: list[EvalSet], cfg, tokenizer=None, rank: int = 0, world_size: int = 1,
                 prompt_format: str = "plain"):
        self.sets, self.cfg, self.tokenizer = sets, cfg, tokenizer
        self.rank, self.world_size, self.prompt_format = rank, world_size, prompt_format

    def setup(self, trainer) -> None:
        self.tokenizer, self.rank, self.world_size = trainer.tokenizer, trainer.rank, trainer.world

    def __call__(self, model, step: int, out_dir: str | Path) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for s in self.sets:
            result = evaluate(model, self.tokenizer, s.examples, self.cfg, self.rank, self.world_size, self.prompt_format)
            for key in ("em", "answer_nll", "answer_logprob"):
                metrics[f"eval/{s.name}/{key}"] = result.metrics[key]
            if "fused_generate_agreement" in result.metrics:
                metrics[f"eval/{s.name}/fused_generate_agreement"] = result.metrics["fused_generate_agreement"]
            if self.cfg.write_rows and self.rank == 0:
                write_results(result, step_dir(out_dir, step), s.name, extra={"step": step},
                              fingerprint=s.fingerprint)
        return metrics


def build_eval_hook(run_cfg, tokenizer=None, rank: int = 0, world_size: int = 1) -> EvalSetsHook | None:
    """The eval hook of ``run_cfg.eval`` (sets loaded now), or None when ``eval.datasets`` is empty.

    ``tokenizer``, ``rank`` and ``world_size`` are for use without a Trainer; a Trainer sets them
    in ``setup``."""
    cfg = run_cfg.eval
    if not cfg.datasets:
        return None
    sets = load_eval_sets(cfg, run_cfg.data)
    return EvalSetsHook(sets, cfg, tokenizer, rank, world_size, prompt_format=run_cfg.data.prompt_format)


def build_eval_hooks(run_cfg) -> list[EvalSetsHook]:
    """``[build_eval_hook(run_cfg)]``, or ``[]`` when nothing to score: ``Trainer(cfg, eval_hooks=...)``."""
    hook = build_eval_hook(run_cfg)
    return [hook] if hook is not None else []
