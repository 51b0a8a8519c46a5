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
