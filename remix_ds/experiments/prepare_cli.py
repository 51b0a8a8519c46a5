"""``remix-ds prepare-data``: the command line of `remix_ds.data.prepare` (grid configs in, DATA_DIR out).

It lives with the experiments because its inputs are grid configs; `remix_ds.data.prepare` takes
plain inputs (set plans, paths, a tokenizer) and imports nothing above the data layer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from remix_ds.data import prepare, sources
from remix_ds.data.records import DataError
from remix_ds.experiments.config import load_experiment
from remix_ds.models import load_tokenizer

PAPER_CONFIGS = "configs/paper/*.yaml"


def _paper_configs() -> list[str]:
    root = Path(__file__).resolve().parents[2]
    found = sorted(str(p) for p in (root / "configs" / "paper").glob("*.yaml"))
    if not found:
        raise SystemExit(f"no CONFIG given and no {PAPER_CONFIGS} next to the package; pass grid configs")
    return found


def add_prepare_data_command(subparsers) -> argparse.ArgumentParser:
    """Register ``prepare-data`` (sets ``func=run_prepare_data``)."""
    p = subparsers.add_parser(
        "prepare-data", help="build every D_A / D_B set of grid configs into DATA_DIR (+ manifest.json)",
        description=prepare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("configs", nargs="*", metavar="CONFIG", help=f"experiment grid configs (default: {PAPER_CONFIGS})")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="output folder (NAME.jsonl files + manifest.json)")
    p.add_argument("--from", dest="releases", action="append", default=[], metavar="NAME=PATH",
                   help="read NAME from a local copy instead of the hub: a release (entityqa=dataset.zip, lama=data.zip), "
                        "the folder `huggingface-cli download --repo-type dataset HUB_ID --local-dir DIR` leaves, "
                        "one data file of it (popqa=test.tsv), or a generic corpus's folder (knowledge-pile=DIR)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer for the max_seq_len check (default: the config's run.model.name_or_path)")
    p.add_argument("--select", choices=["config", "first", "seeded"], default="config",
                   help="first: the first N rows that fit (the reference); seeded: a seeded sample from the first "
                        "--prefix-rows rows; config: seeded unless the set's subsample_seed is null")
    p.add_argument("--prefix-rows", type=int, default=20000, help="seeded: rows read before sampling (at least 10 x N)")
    p.add_argument("--candidates", type=int, default=10000,
                   help="D_A sets of a require_filtered grid: keep the first N rows that fit (0: all) for filter-known")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="build only these datasets / generic corpora (repeatable; names are checked)")
    p.add_argument("--generic", action="append", default=[], metavar="NAME",
                   help="also build a generic corpus: knowledge-pile, arxiv-pile, fineweb")
    p.add_argument("--max-documents", type=int, default=20000, help="generic corpora: documents read (reference: 20000)")
    p.add_argument("--min-words", type=int, default=100, help="generic corpora: skip documents under this many words")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes for generic corpora")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_prepare_data)
    return p


def parse_from(specs: list[str]) -> dict[str, str]:
    """`--from NAME=PATH` values -> {NAME: PATH}; names must be known sources or generic corpora."""
    known = set(sources.SOURCES) | set(sources.GENERIC)
    releases = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise DataError(f"--from {spec!r}: expected NAME=PATH (e.g. entityqa=dataset.zip, popqa=DIR)")
        if name not in known:
            raise DataError(f"--from {spec!r}: unknown source {name!r}; known: {', '.join(sorted(known))}")
        releases[name] = path
    return releases


def tokenizer_for(name: str):
    """The tokenizer, or one line saying what to download and where to point --tokenizer."""
    try:
        return load_tokenizer(name)
    except Exception as e:  # gated, offline, missing files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = ("" if Path(name).is_dir() else
                f"; offline or gated? accept its licence on the hub, then `huggingface-cli download {name} "
                f"--include 'tokenizer*' '*.json' --local-dir DIR` and pass --tokenizer DIR")
        raise DataError(f"cannot load the tokenizer {name!r} ({type(e).__name__}: {first[:200]}){hint}") from None


def run_prepare_data(args: argparse.Namespace) -> int:
    configs = args.configs or _paper_configs()
    cfgs = [load_experiment(c) for c in configs]
    releases = parse_from(args.releases)
    specs = [s for c in cfgs for s in c.data_a + c.data_b]
    to_filter = {s.dataset: args.candidates for c in cfgs if c.require_filtered for s in c.data_a}
    plans = prepare.plan_sets(specs, args.select, args.prefix_rows, to_filter)
    generic = list(dict.fromkeys(args.generic + prepare.generic_names(c.run.data for c in cfgs)))
    for name in generic:
        if name not in sources.GENERIC:
            raise DataError(f"--generic {name!r}: unknown corpus; known: {', '.join(sorted(sources.GENERIC))}")
    if args.only:
        known = [p.dataset for p in plans] + generic
        unknown = [n for n in args.only if n not in known]
        if unknown:
            raise DataError(f"--only {', '.join(unknown)}: not a set or corpus of {', '.join(configs)}; "
                            f"choose from {', '.join(known)}")
        plans = [p for p in plans if p.dataset in args.only]
        generic = [g for g in generic if g in args.only]
    run = cfgs[0].run
    tok_name = args.tokenizer or run.model.name_or_path
    tokenizer = tokenizer_for(tok_name)
    out = Path(args.out)
    manifest = prepare.read_manifest(out)
    manifest["configs"] = sorted(set(manifest.get("configs", [])) | {str(c) for c in configs})
    skipped: set[str] = set()
    for plan in plans:
        entry, skip = prepare.prepare_set(plan, out, tokenizer, tokenizer_name=tok_name, max_seq_len=run.data.max_seq_len,
                                          prompt_format=run.data.prompt_format,
                                          release=releases.get(plan.dataset) or plan.data_files,
                                          manifest=manifest, progress=not args.no_progress)
        manifest["sets"][plan.dataset] = entry
        if skip:
            skipped.add(plan.dataset)
        prepare.write_manifest(out, manifest)  # after every set: an interrupted run resumes
    for name in generic:
        entry, skip = prepare.prepare_generic(name, out, tokenizer, tokenizer_name=tok_name, max_documents=args.max_documents,
                                              min_words=args.min_words, manifest=manifest, progress=not args.no_progress,
                                              workers=args.workers, local=releases.get(name))
        manifest["generic"][name] = entry
        if skip:
            skipped.add(f"generic:{name}")
        prepare.write_manifest(out, manifest)
    print(prepare.summary_table(manifest, skipped))
    print(f"manifest: {out / prepare.MANIFEST} (sha256 {prepare.manifest_sha256(out)[:12]})")
    return 0
