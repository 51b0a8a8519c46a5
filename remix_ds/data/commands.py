"""``remix-ds build-shards``: text inputs -> tokenized Megatron shards (see ``data/shards.py``).

    remix-ds build-shards INPUT... OUT_DIR --tokenizer T [--text-field text] [--workers N]

INPUT is a ``.jsonl``/``.json`` file (one object per line, or a JSON array), a ``.parquet``
file, a ``.txt``/``.md`` file, any of those gzipped (``.gz``), a directory (its supported files,
sorted), or ``hf:NAME[:CONFIG]`` for a Hugging Face hub dataset (``datasets.load_dataset`` in
streaming mode, ``--split``). Documents keep their input order whatever ``--workers`` is, so a
build is reproducible byte for byte.

Python API: ``remix_ds.data.shard_builder`` (:func:`build_shards`, :func:`tokenize_to_shards`);
this module is only the command line.
"""

from __future__ import annotations

import argparse
import os

from remix_ds.data.shard_builder import build_shards
from remix_ds.models import load_tokenizer


def load_tokenizer_spec(spec: str):
    """``tiny`` (the built-in tokenizer), a hub id or a local folder."""
    return load_tokenizer(spec)


def add_build_shards_command(subparsers) -> argparse.ArgumentParser:
    """Register ``build-shards`` on an argparse subparsers object; sets ``func=run_build_shards``."""
    p = subparsers.add_parser(
        "build-shards",
        help="tokenize text into memory-mapped Megatron .bin/.idx shards",
        description=__doc__.split("\n\nPython API")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="jsonl/json/parquet/txt files, directories or hf:NAME")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (manifest.json + shard_*.bin/.idx)")
    p.add_argument("--tokenizer", required=True, help="`tiny`, a hub id or a local tokenizer folder")
    p.add_argument("--text-field", default="text", help="JSON key / parquet column / hub column holding the text")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                   help="tokenizer processes (default: CPU count - 1)")
    p.add_argument("--split", default="train", help="split of a hub dataset")
    p.add_argument("--text-docs", choices=["blank-line", "line", "file"], default="blank-line",
                   help="what one document is in a .txt/.md file")
    p.add_argument("--max-tokens-per-shard", type=int, default=1 << 30,
                   help="at most this many tokens per .bin/.idx pair: a new pair starts at the document that would pass it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build in OUT_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-documents", type=int, default=0,
                   help="read only the first N documents (a hub stream stops there; reference: 20000)")
    p.add_argument("--min-words", type=int, default=0,
                   help="skip documents with fewer whitespace words (reference: 100)")
    p.set_defaults(func=run_build_shards)
    return p


def run_build_shards(args: argparse.Namespace) -> int:
    """The ``build-shards`` command: prints a one-line summary, returns the exit code."""
    if args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    tokenizer = load_tokenizer_spec(args.tokenizer)
    manifest = build_shards(
        args.inputs, args.out_dir, tokenizer, tokenizer_name=args.tokenizer, text_field=args.text_field,
        split=args.split, text_docs=args.text_docs, workers=args.workers,
        max_tokens_per_shard=args.max_tokens_per_shard, overwrite=args.overwrite, progress=not args.no_progress,
        max_documents=args.max_documents, min_words=args.min_words,
    )
    print(f"wrote {manifest['num_documents']:,} documents, {manifest['num_tokens']:,} tokens "
          f"({manifest['dtype']}) in {len(manifest['shards'])} shard(s) to {args.out_dir}"
          + (f"; skipped {manifest['skipped_blank']} blank" if manifest.get("skipped_blank") else "")
          + (f"; skipped {manifest['skipped_short']} under {args.min_words} words" if manifest.get("skipped_short") else ""))
    return 0


# ----------------------------------------------------------------------------- prepare-data

PAPER_CONFIGS = "configs/paper/*.yaml"


def _paper_configs() -> list[str]:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found = sorted(str(p) for p in (root / "configs" / "paper").glob("*.yaml"))
    if not found:
        raise SystemExit(f"no CONFIG given and no {PAPER_CONFIGS} next to the package; pass grid configs")
    return found


def add_prepare_data_command(subparsers) -> argparse.ArgumentParser:
    """Register ``prepare-data`` (sets ``func=run_prepare_data``)."""
    from remix_ds.data import prepare

    p = subparsers.add_parser(
        "prepare-data", help="build every D_A / D_B set of grid configs into DATA_DIR (+ manifest.json)",
        description=prepare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("configs", nargs="*", metavar="CONFIG", help=f"experiment grid configs (default: {PAPER_CONFIGS})")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="output folder (NAME.jsonl files + manifest.json)")
    p.add_argument("--from", dest="releases", action="append", default=[], metavar="NAME=PATH",
                   help="read NAME from its original release (zip or folder): entityqa=dataset.zip, lama=data.zip")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer for the max_seq_len check (default: the config's run.model.name_or_path)")
    p.add_argument("--select", choices=["config", "first", "seeded"], default="config",
                   help="first: the first N rows that fit (the reference); seeded: a seeded sample from the first "
                        "--prefix-rows rows; config: seeded unless the set's subsample_seed is null")
    p.add_argument("--prefix-rows", type=int, default=20000, help="seeded: rows read before sampling (at least 10 x N)")
    p.add_argument("--candidates", type=int, default=10000,
                   help="D_A sets of a require_filtered grid: keep the first N rows that fit (0: all) for filter-known")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="build only these datasets (repeatable)")
    p.add_argument("--generic", action="append", default=[], metavar="NAME",
                   help="also build a generic corpus: knowledge-pile, arxiv-pile, fineweb")
    p.add_argument("--max-documents", type=int, default=20000, help="generic corpora: documents read (reference: 20000)")
    p.add_argument("--min-words", type=int, default=100, help="generic corpora: skip documents under this many words")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes for generic corpora")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_prepare_data)
    return p


def run_prepare_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from remix_ds.data import prepare
    from remix_ds.data.records import DataError
    from remix_ds.experiments.config import load_experiment

    configs = args.configs or _paper_configs()
    cfgs = [load_experiment(c) for c in configs]
    releases = {}
    for spec in args.releases:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise DataError(f"--from {spec!r}: expected NAME=PATH (e.g. entityqa=dataset.zip)")
        releases[name] = path
    specs = [s for c in cfgs for s in c.data_a + c.data_b]
    to_filter = {s.dataset: args.candidates for c in cfgs if c.require_filtered for s in c.data_a}
    plans = prepare.plan_sets(specs, args.select, args.prefix_rows, to_filter)
    if args.only:
        plans = [p for p in plans if p.dataset in args.only]
    run = cfgs[0].run
    tok_name = args.tokenizer or run.model.name_or_path
    tokenizer = load_tokenizer_spec(tok_name)
    out = Path(args.out)
    manifest = prepare.read_manifest(out)
    manifest["configs"] = sorted(set(manifest.get("configs", [])) | {str(c) for c in configs})
    skipped: set[str] = set()
    for plan in plans:
        entry, skip = prepare.prepare_set(plan, out, tokenizer, tokenizer_name=tok_name, max_seq_len=run.data.max_seq_len,
                                          prompt_format=run.data.prompt_format, release=releases.get(plan.dataset),
                                          manifest=manifest, progress=not args.no_progress)
        manifest["sets"][plan.dataset] = entry
        if skip:
            skipped.add(plan.dataset)
        prepare.write_manifest(out, manifest)  # after every set: an interrupted run resumes
    for name in list(dict.fromkeys(args.generic + prepare.generic_names(c.run.data for c in cfgs))):
        entry, skip = prepare.prepare_generic(name, out, tokenizer, tokenizer_name=tok_name, max_documents=args.max_documents,
                                              min_words=args.min_words, manifest=manifest, progress=not args.no_progress,
                                              workers=args.workers)
        manifest["generic"][name] = entry
        if skip:
            skipped.add(f"generic:{name}")
        prepare.write_manifest(out, manifest)
    print(prepare.summary_table(manifest, skipped))
    print(f"manifest: {out / prepare.MANIFEST} (sha256 {prepare.manifest_sha256(out)[:12]})")
    return 0
