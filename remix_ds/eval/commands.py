"""``remix-ds eval``: score a model or a training run on one or more datasets.

    remix-ds eval MODEL_OR_RUN --data NAME_OR_FILE [--data ...] [--mode auto|fused|generate] [--out DIR]
                  [--n N] [--set eval.KEY=VALUE ...]

MODEL_OR_RUN is a Hugging Face folder or hub id, ``tiny``, a run folder (its ``final/`` export,
else its newest checkpoint) or a ``RUN_DIR/checkpoint-N`` folder (ZeRO shards are exported once
to ``RUN_DIR/eval-export-checkpoint-N``). For a run folder, ``RUN_DIR/config.json`` supplies how
named datasets are loaded (the stage's data settings, kvr generator, prompt format), so
``--data kvr`` scores exactly what the run trained on.

Under ``torchrun --nproc_per_node N -m remix_ds.cli eval ...`` (or ``deepspeed --no_local_rank``) examples are
sharded over ranks (each holds the whole model) and rank 0 writes the results.
Writes ``OUT/<set>.jsonl`` (one row per example) and ``OUT/<set>.metrics.json``, prints metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from remix_ds import configtools, models
from remix_ds.config import RunConfig, load_config
from remix_ds.configtools import ConfigError
from remix_ds.engine import dist
from remix_ds.engine.checkpoint import latest_checkpoint
from remix_ds.engine.export import export_checkpoint
from remix_ds.eval.config import EvalConfig
from remix_ds.eval.data import load_eval_set
from remix_ds.eval.runner import evaluate, write_results


def resolve_model(target: str) -> tuple[str, Path | None]:
    """(HF folder or hub id to load, run folder or None)."""
    path = Path(target)
    if path.is_dir():
        if models.is_deepspeed_checkpoint(path):
            run_dir = path.parent
            out = run_dir / f"eval-export-{path.name}"
            if not (out / "config.json").is_file() and int(os.environ.get("RANK", "0")) == 0:
                export_checkpoint(path, out)
            dist.barrier()
            return str(out), run_dir
        if (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
            run_dir = path.parent if (path.parent / "config.json").is_file() and path.name == "final" else None
            return str(path), run_dir
        if (path / "final" / "config.json").is_file():
            return str(path / "final"), path
        ckpt = latest_checkpoint(path)
        if ckpt is not None:
            return resolve_model(str(ckpt))[0], path
        raise ConfigError(f"{target}: not a model folder, run folder (final/ or checkpoint-N) or checkpoint")
    return models.resolve_path(target), None


def run_eval(args) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under a launcher; otherwise stay a plain process
        dist.init_distributed()
    rank, world = dist.rank(), dist.world_size()
    source, run_dir = resolve_model(args.model)
    run_cfg = load_config(run_dir / "config.json") if run_dir and (run_dir / "config.json").is_file() else RunConfig()
    data = {"mode": args.mode, "n": args.n, "datasets": list(args.data)}
    if args.batch_size:
        data["batch_size"] = args.batch_size
    if args.max_new_tokens:
        data["max_new_tokens"] = args.max_new_tokens
    overrides = [o[len("eval."):] if o.startswith("eval.") else o for o in args.overrides]
    base = configtools.to_dict(run_cfg.eval)
    base.update(data)
    cfg: EvalConfig = configtools.from_dict(EvalConfig, configtools.apply_overrides(base, overrides), prefix="eval")

    device = dist.device()
    tokenizer = models.load_tokenizer(source)
    model = models.load_for_inference(source, dtype=args.dtype, device=device,
                                      attn_implementation=models.choose_attn_implementation(args.attn))
    out = Path(args.out or (run_dir / "eval" if run_dir else "eval-out"))
    summary = {}
    for spec in cfg.datasets:
        s = load_eval_set(spec, cfg, run_cfg.data)
        result = evaluate(model, tokenizer, s.examples, cfg, rank, world, prompt_format=run_cfg.data.prompt_format)
        summary[s.name] = result.metrics
        if rank == 0:
            path = write_results(result, out, s.name, extra={"model": args.model, "data": spec, "mode": cfg.mode})
            print(f"{s.name}: em={result.metrics['em']:.4f} answer_nll={result.metrics['answer_nll']:.4f} "
                  f"n={int(result.metrics['n'])} -> {path}")
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def add_eval_command(subparsers) -> None:
    """Register ``remix-ds eval`` (sets ``func=run_eval``)."""
    p = subparsers.add_parser("eval", help="exact-match eval of a model or run (fused or generation path)",
                              description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("model", help="HF folder / hub id / tiny / RUN_DIR / RUN_DIR/checkpoint-N")
    p.add_argument("--data", action="append", required=True,
                   help="dataset name or file, optionally NAME:heldout (repeatable)")
    p.add_argument("--mode", choices=["auto", "fused", "generate"], default="auto",
                   help="fused: teacher-forced token EM; generate: greedy decoding + matcher; auto: fused where exact")
    p.add_argument("--out", help="output folder (default RUN_DIR/eval or ./eval-out)")
    p.add_argument("--n", type=int, default=0, help="score only the first N examples of each set")
    p.add_argument("--batch-size", type=int, default=0, help="generation prompts per batch")
    p.add_argument("--max-new-tokens", type=int, default=0, help="generation length limit")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--attn", choices=["auto", "flash_attention_2", "sdpa", "eager"], default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="EvalConfig override (repeatable), e.g. --set eval.matcher=contains --set eval.normalize=true")
    p.set_defaults(func=run_eval)
