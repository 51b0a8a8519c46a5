"""``remix-ds filter-known``: keep the factoids the base model does not know yet.

    remix-ds filter-known MODEL --data NAME_OR_FILE [--data NAME=DATA_FILE ...] --out DIR
                          [--few-shot K] [--mode fused|auto|generate] [--n N] [--set data.KEY=V | eval.KEY=V ...]

REMIX studies memorizing facts the model does not already know, so candidate factoids are
scored with the base model first (exact match through `remix_ds.eval.runner.evaluate`, the same
verdicts the experiments report) and split by the verdict. ``--few-shot K`` prepends the first K
examples of each set as solved question/answer pairs to every prompt while scoring (the
reference scored its candidates with a few-shot prompt); those K are not written out.

A base model does not stop after its answer (``OJRUQLTW`` -> ``OJRUQLTWP7OE`` or ``Paris\nQ: ...``),
so by default (``--mode generate``) the greedy answer (at most ``--max-new-tokens``, 20 as in the
reference) is cut at the first ``--stop`` string (default: a newline) before the matcher sees it.
``--mode fused`` (teacher-forced answer + EOS) is only right for models trained to stop. With
``--data NAME=DATA_DIR/NAME.jsonl`` from `remix-ds prepare-data`, the split and its counts are
also recorded in DATA_DIR/manifest.json (``sets.NAME.filtered``), which an experiment with
``data_dir: DATA_DIR`` then trains on as D_A.

``--data`` is a registered name (``kvr``, ``popqa``, ...), ``NAME=FILE`` (a registered dataset
read from a local file with its own fields) or a .jsonl/.json/.parquet file; every example is
scored (no held-out split, file order). MODEL is anything ``remix-ds eval`` accepts.

Writes, per set LABEL (the dataset name or the file's stem):

    DIR/unknown/LABEL.jsonl           "yet to learn" (wrong answers): train on these
    DIR/known/LABEL.jsonl             answered correctly already
    DIR/scores/LABEL.jsonl            the evaluator's per-example rows (+ .metrics.json)
    DIR/filter_known.json             model, settings and counts per set

Output rows use the generic local schema (``id``, ``prompt``, ``answer``, ``aliases`` or
``messages``), so ``data.dataset=DIR/unknown/LABEL.jsonl`` trains on them, and
``data.require_filtered=true`` makes a run insist on such a file. Under ``torchrun`` examples
are sharded over ranks (each holds the whole model); rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from remix_ds import configtools, models
from remix_ds.config import RunConfig
from remix_ds.data.config import SourceConfig
from remix_ds.data.datasets import load_all
from remix_ds.data.fingerprint import data_fingerprint, source_params
from remix_ds.engine import dist
from remix_ds.eval.commands import resolve_model
from remix_ds.eval.data import set_label
from remix_ds.eval.runner import evaluate, write_results

MANIFEST = "filter_known.json"


def parse_data_arg(text: str) -> tuple[str, str | None]:
    """``NAME``, ``NAME=FILE`` or ``FILE`` -> (dataset, data_files)."""
    if "=" in text:
        name, files = text.split("=", 1)
        return name, files
    return text, None


def few_shot_prefix(shots) -> str:
    """Solved examples, one ``prompt\\nanswer`` block each, separated by blank lines (a prompt that
    ends in a space, like PopQA's ``...\\nThe answer is: ``, is followed by its answer directly)."""
    return "".join(f"{ex.prompt}{'' if ex.prompt.endswith(' ') else chr(10)}{ex.answer}\n\n" for ex in shots)


def with_prefix(examples, prefix: str):
    if not prefix:
        return list(examples)
    return [dataclasses.replace(ex, prompt=prefix + ex.prompt) if ex.messages is None else ex for ex in examples]


def record(ex) -> dict:
    """An Example in the generic local schema (what `data.dataset=FILE` reads back)."""
    if ex.messages is not None:
        return {"id": ex.id, "messages": ex.messages}
    return {"id": ex.id, "prompt": ex.prompt, "answer": ex.answer, "aliases": list(ex.aliases)}


def split_known(model, tokenizer, examples, eval_cfg, rank: int = 0, world: int = 1, prompt_format: str = "plain",
                few_shot: int = 0):
    """(scored examples, EvalResult, known, unknown): verdicts of `evaluate` on every example after the first `few_shot`.

    known/unknown are filled on rank 0 (the rows live there); the EvalResult metrics on every rank.
    """
    shots, scored = examples[:few_shot], examples[few_shot:]
    result = evaluate(model, tokenizer, with_prefix(scored, few_shot_prefix(shots)), eval_cfg, rank, world,
                      prompt_format=prompt_format)
    known, unknown = [], []
    for ex, row in zip(scored, result.rows):
        assert row["id"] == ex.id, (row["id"], ex.id)
        (known if row["correct"] else unknown).append(ex)
    return scored, result, known, unknown


def _write_jsonl(path: Path, examples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(record(ex), ensure_ascii=False) + "\n")


def run_filter_known(args) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under a launcher; otherwise stay a plain process
        dist.init_distributed()
    rank, world = dist.rank(), dist.world_size()
    source, run_dir = resolve_model(args.model)
    base = configtools.to_dict(RunConfig())
    if run_dir is not None and (run_dir / "config.json").is_file():
        base = json.loads((run_dir / "config.json").read_text())
    base["eval"]["mode"] = args.mode
    if args.mode != "fused":  # a base model runs on past its answer: cut it before matching
        stops = ["\n"] if args.stop is None else args.stop
        base["eval"]["stop_strings"] = [decode_escapes(t) for t in stops if t]
        base["eval"]["max_new_tokens"] = args.max_new_tokens
    cfg = configtools.from_dict(RunConfig, configtools.apply_overrides(base, list(args.overrides)))

    device = dist.device()
    tokenizer = models.load_tokenizer(source)
    model = models.load_for_inference(source, dtype=args.dtype, device=device,
                                      attn_implementation=models.choose_attn_implementation(args.attn))
    out = Path(args.out)
    manifest = {"model": args.model, "mode": cfg.eval.mode, "few_shot": args.few_shot, "datasets": {},
                "stop_strings": list(cfg.eval.stop_strings), "max_new_tokens": cfg.eval.max_new_tokens}
    for spec in args.data:
        name, files = parse_data_arg(spec)
        examples = load_all(SourceConfig(dataset=name, data_files=files, subsample_seed=None), cfg.data.kvr)
        if args.n:
            examples = examples[: args.n + args.few_shot]
        label = set_label(name)
        scored, result, known, unknown = split_known(model, tokenizer, examples, cfg.eval, rank, world,
                                                     cfg.data.prompt_format, args.few_shot)
        if rank != 0:
            continue
        _write_jsonl(out / "unknown" / f"{label}.jsonl", unknown)
        _write_jsonl(out / "known" / f"{label}.jsonl", known)
        params = {**source_params(SourceConfig(dataset=name, data_files=files, subsample_seed=None), cfg.data.kvr),
                  "n": args.n, "few_shot": args.few_shot}
        fp = data_fingerprint(label, scored, params)
        write_results(result, out / "scores", label, extra={"model": args.model, "data": spec}, fingerprint=fp)
        manifest["datasets"][label] = {
            "data": spec, "n": len(scored), "known": len(known), "unknown": len(unknown),
            "data_fingerprint": fp, "known_fingerprint": data_fingerprint(f"{label}-known", known),
            "unknown_fingerprint": data_fingerprint(f"{label}-unknown", unknown),
            "few_shot_ids": [ex.id for ex in examples[: args.few_shot]],
            "files": {"unknown": f"unknown/{label}.jsonl", "known": f"known/{label}.jsonl"},
        }
        if files is not None:
            record_in_data_manifest(name, files, out, label, manifest, args.manifest)
        print(f"{label}: {len(scored)} scored, {len(known)} known, {len(unknown)} yet to learn -> "
              f"{out / 'unknown' / (label + '.jsonl')}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


def decode_escapes(text: str) -> str:
    r"""`--stop '\n'` as typed in a shell -> a newline."""
    return text.encode("utf-8").decode("unicode_escape") if "\\" in text else text


def record_in_data_manifest(name: str, files: str, out: Path, label: str, manifest: dict, explicit: str | None) -> None:
    """Write the known / yet-to-learn split and its counts into the prepare-data manifest that lists `files`.

    `--manifest PATH`, else DATA_DIR/manifest.json when FILE is DATA_DIR/NAME.jsonl of a prepare-data folder.
    """
    from remix_ds.data.prepare import MANIFEST as DATA_MANIFEST
    from remix_ds.data.prepare import read_manifest, sha256_file, write_manifest

    path = Path(explicit) if explicit else Path(files).parent / DATA_MANIFEST
    if not path.is_file():
        return
    data_dir = path.parent
    data = read_manifest(data_dir)
    entry = data["sets"].get(name)
    if entry is None or Path(files).resolve() != (data_dir / entry["file"]).resolve():
        return
    info = manifest["datasets"][label]
    rel = {k: os.path.relpath(out / v, data_dir) for k, v in info["files"].items()}
    entry["filtered"] = {
        "model": manifest["model"], "mode": manifest["mode"], "few_shot": manifest["few_shot"],
        "stop_strings": manifest["stop_strings"], "max_new_tokens": manifest["max_new_tokens"],
        "scored": info["n"], "known": info["known"], "unknown": info["unknown"], "files": rel,
        "sha256": sha256_file(data_dir / rel["unknown"]), "source_sha256": entry.get("sha256"),
    }
    write_manifest(data_dir, data)
    print(f"{label}: recorded the split in {path}")


def add_filter_known_command(subparsers) -> None:
    """Register ``remix-ds filter-known`` (sets ``func=run_filter_known``)."""
    import argparse

    p = subparsers.add_parser("filter-known", help="split candidate factoids into known / yet to learn by the base model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="HF folder / hub id / tiny / RUN_DIR / RUN_DIR/checkpoint-N")
    p.add_argument("--data", action="append", required=True, help="NAME, NAME=DATA_FILE or FILE (repeatable)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--few-shot", type=int, default=0, help="prepend the first K examples of each set as solved pairs")
    p.add_argument("--mode", choices=["auto", "fused", "generate"], default="generate",
                   help="generate (default): greedy decoding, the answer cut at --stop, then the matcher (right on base "
                        "models); fused: teacher-forced token EM incl. EOS (only for models trained to stop); auto: fused where exact")
    p.add_argument("--stop", action="append", default=None, metavar="STR",
                   help="cut the generated answer at the first of these strings before matching (repeatable; "
                        "default: a newline; --stop '' disables)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="generation budget per answer (the reference: 20)")
    p.add_argument("--manifest", default=None,
                   help="prepare-data manifest.json to record the split in (default: the one next to NAME=FILE)")
    p.add_argument("--n", type=int, default=0, help="score only the first N examples of each set (after the shots)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--attn", choices=["auto", "flash_attention_2", "sdpa", "eager"], default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="run-config override (repeatable), e.g. --set data.kvr.num_pairs=500 --set eval.matcher=contains")
    p.set_defaults(func=run_filter_known)
