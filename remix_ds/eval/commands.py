"""``remix-ds eval``: score a model or a training run on one or more datasets.

    remix-ds eval MODEL_OR_RUN --data NAME_OR_FILE [--data ...] [--mode auto|fused|generate] [--out DIR]
                  [--n N] [--data-config RUN_OR_CELL_OR_FILE] [--set eval.KEY=VALUE|data.KEY=VALUE ...]

MODEL_OR_RUN is a Hugging Face folder or hub id, ``tiny``, a run folder (its ``final/`` export,
else its newest checkpoint) or a ``RUN_DIR/checkpoint-N`` folder (ZeRO shards are exported once
to ``RUN_DIR/eval-export-checkpoint-N``). For a run folder, ``RUN_DIR/config.json`` supplies how
named datasets are loaded (the stage's data settings, kvr generator, prompt format), so
``--data kvr`` scores exactly what the run trained on. An exported model folder carries the same
settings in ``remix_ds_data.json`` (written by every export), so ``remix-ds eval MODEL_DIR --data kvr``
scores the KVR variant the model was trained on. ``--data-config`` takes the data settings
explicitly, as training does: a run folder, an experiment cell (``OUT/cells/CELL``, its stage 2),
a run/stage config file or a ``remix_ds_data.json``; ``--set data.kvr.num_pairs=48`` (any
``data.*`` key) overrides them. Without any of these eval says, in one line, that it uses the
default data settings. Every output records the scored set's ``data_fingerprint`` (dataset,
parameters, count, sha256 of the sorted example ids).

Under ``torchrun --nproc_per_node N -m remix_ds.cli eval ...`` (or ``deepspeed --no_local_rank``) examples are
sharded over ranks (each holds the whole model) and rank 0 writes the results.
Writes ``OUT/<set>.jsonl`` (one row per example) and ``OUT/<set>.metrics.json``, prints metrics.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from remix_ds import configtools, models
from remix_ds.config import RunConfig
from remix_ds.configtools import ConfigError
from remix_ds.data.fingerprint import short
from remix_ds.engine import dist
from remix_ds.engine.checkpoint import latest_checkpoint
from remix_ds.engine.export import DATA_CONFIG_FILE, export_checkpoint
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


def _data_config_file(target: Path) -> Path | None:
    """The file holding a run's data settings in a run folder, an experiment cell, a stage or model folder."""
    if target.is_file():
        return target
    for name in ("config.json", "stage_config.json", DATA_CONFIG_FILE):
        path = target / name
        if path.is_file() and "data" in configtools.read_config_file(path):
            return path
    if (target / "stage2").is_dir():  # an experiment cell: its stage-2 run
        return _data_config_file(target / "stage2")
    if (target / "final").is_dir():
        return _data_config_file(target / "final")
    return None


def resolve_run_config(model_target: str, run_dir: Path | None, source: str, data_config: str | None,
                       data_overrides: list[str]) -> tuple[RunConfig, str | None]:
    """The run config whose data (and eval.sources) settings say how named sets load, and where it came from.

    Order: ``--data-config``; the run folder's config.json; the model folder's remix_ds_data.json;
    else defaults (None as the origin). ``data_overrides`` (``data.KEY=VALUE``) apply on top."""
    path = None
    if data_config:
        path = _data_config_file(Path(data_config))
        if path is None:
            raise ConfigError(f"--data-config {data_config}: no config.json, stage_config.json or {DATA_CONFIG_FILE} "
                              f"with a 'data' section there")
    elif run_dir is not None and (run_dir / "config.json").is_file():
        path = run_dir / "config.json"
    elif Path(source).is_dir() and (Path(source) / DATA_CONFIG_FILE).is_file():
        path = Path(source) / DATA_CONFIG_FILE
    raw = configtools.read_config_file(path) if path else {}
    if path is not None and path.name == DATA_CONFIG_FILE:
        raw = {"data": raw.get("data", {}), "eval": raw.get("eval", {})}
    try:
        raw = configtools.apply_overrides(raw, data_overrides)
        cfg = configtools.from_dict(RunConfig, raw, source=str(path) if path else None)
    except ConfigError as e:
        raise ConfigError(f"{e} (data settings for {model_target})") from None
    return cfg, (str(path) if path else None)


def run_eval(args) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under a launcher; otherwise stay a plain process
        dist.init_distributed()
    rank, world = dist.rank(), dist.world_size()
    source, run_dir = resolve_model(args.model)
    data_overrides = [o for o in args.overrides if o.startswith("data.")]
    run_cfg, origin = resolve_run_config(args.model, run_dir, source, args.data_config, data_overrides)
    if rank == 0:
        if origin is None:
            print(f"remix-ds eval: warning: no data settings recorded for {args.model} (no --data-config, "
                  f"RUN_DIR/config.json or {DATA_CONFIG_FILE}); named datasets load with the default data "
                  f"settings{' plus ' + ' '.join(data_overrides) if data_overrides else ''}", file=sys.stderr)
        else:
            print(f"remix-ds eval: data settings from {origin}"
                  f"{' plus ' + ' '.join(data_overrides) if data_overrides else ''}", file=sys.stderr)
    data = {"mode": args.mode, "n": args.n, "datasets": list(args.data)}
    if args.batch_size:
        data["batch_size"] = args.batch_size
    if args.max_new_tokens:
        data["max_new_tokens"] = args.max_new_tokens
    overrides = [o[len("eval."):] if o.startswith("eval.") else o for o in args.overrides if not o.startswith("data.")]
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
        summary[s.name] = {**result.metrics, "data_fingerprint": s.fingerprint}
        if rank == 0:
            path = write_results(result, out, s.name, fingerprint=s.fingerprint,
                                 extra={"model": args.model, "data": spec, "mode": cfg.mode, "data_settings": origin})
            m = result.metrics
            spans = (f"span_acc={m['span_acc']:.4f} span_nll={m['span_nll']:.4f} n_spans={int(m['n_spans'])} "
                     if "span_acc" in m else "")
            print(f"{s.name}: em={result.metrics['em']:.4f} answer_nll={result.metrics['answer_nll']:.4f} {spans}"
                  f"n={int(result.metrics['n'])} data={short(s.fingerprint)} -> {path}")
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
    p.add_argument("--data-config", metavar="RUN_OR_CELL_OR_FILE",
                   help="where the data settings come from: a run folder, an experiment cell, a run/stage config "
                        "file or a remix_ds_data.json (default: the run's or exported model's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE|data.KEY=VALUE",
                   help="EvalConfig or data override (repeatable), e.g. --set eval.matcher=contains "
                        "--set data.kvr.num_pairs=48 --set data.dataset=path.jsonl")
    p.set_defaults(func=run_eval)
