"""The built-in generic corpus: English prose from the docstrings of installed Python code.

REMIX's generic-text mixing needs pretraining-like text; the embedded default needs no download.
We read (never import) the ``.py`` files of the standard library and then site-packages, in
sorted path order, take their docstrings, keep the paragraphs that
read as English prose, deduplicate, and stop at a byte cap. The result is deterministic for a
given Python installation.

:func:`generic_corpus` tokenizes that text into shards on first use and caches them under
``$REMIX_DS_CACHE/corpus/`` (default ``~/.cache/remix_ds``), keyed by the tokenizer's vocab hash
and the corpus settings; later calls just open the shards. Several ranks may call it at once:
each builds into its own temp directory and the first atomic rename wins.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Iterator, Sequence

from remix_ds.cachedir import build_once, cache_root
from remix_ds.data.shard_builder import tokenize_to_shards
from remix_ds.data.shards import ShardReader, tokenizer_fingerprint

# Bump when harvesting or filtering changes, so cached corpora are rebuilt.
CORPUS_VERSION = 2
DEFAULT_MAX_BYTES = 4_000_000
MIN_DOC_CHARS = 200
MIN_PARAGRAPH_CHARS = 40

# Common English function words; prose has many of them, code and tables have few.
_STOPWORDS = frozenset(
    "the of and to a in is it that for this be as with are on by an or not from at which can if "
    "will its has have was when all any but one than more should may must this these those only "
    "into also been other each such there their they you your we our use used".split()
)
_WORD = re.compile(r"[A-Za-z]+")
# Lines that mark a paragraph as code, markup or an argument table rather than prose.
_NON_PROSE = re.compile(
    r"^\s*(>>>|\.\.\.|\.\. |:param|:type|:return|:raises|@|\$ |[-=~^*+#]{3,}|\||```"  # doctest, rst, tables
    r"|(def|class|import|from|return|print|for|if|while|with)\b.*[(:=]\s*$"  # code
    r"|[\w*]+\s*:(\s*[\w.\[\], ]*)?$"  # "Args:", numpy-style "name : type" headers
    r"|[\w.]+\s*(=|\+=|\()"  # assignments and calls at line start
    r")"
)
# Brackets, operators and underscores: a few in prose (``f(x)``), many in code.
_CODE_CHARS = frozenset("()[]{}=<>;_\\")


# Test suites, GUI code, and a base interpreter's own site-packages inside the stdlib tree.
_SKIP_DIRS = frozenset({"test", "tests", "__pycache__", "idlelib", "site-packages", "dist-packages"})


def default_roots() -> list[Path]:
    """Standard library first, then site-packages (pure and platform), deduplicated."""
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("stdlib", "purelib", "platlib"):
        p = Path(paths[key]).resolve()
        if p.is_dir() and p not in roots:
            roots.append(p)
    return roots


def _py_files(root: Path, skip: Sequence[Path]) -> Iterator[Path]:
    """``.py`` files under ``root`` in sorted order, not descending into ``skip`` or tests."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if here / d not in skip and d not in _SKIP_DIRS and not d.startswith(".")
        )
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield here / name


# A string literal that starts a line (after indentation) is a docstring or a bare string
# statement; either is documentation. A regex over the source is ~10x faster than ast.parse and
# keeps a first-use build within seconds.
_DOCSTRING = re.compile(r'^[ \t]*[rRuU]?(?:"""(.*?)"""|\'\'\'(.*?)\'\'\')', re.S | re.M)


def _docstrings(source: str) -> Iterator[str]:
    for m in _DOCSTRING.finditer(source):
        doc = m.group(1) if m.group(1) is not None else m.group(2)
        if len(doc) >= MIN_PARAGRAPH_CHARS:
            yield inspect.cleandoc(doc)


def is_prose(paragraph: str) -> bool:
    """English-looking prose: mostly letters, many function words, no code/markup lines."""
    if len(paragraph) < MIN_PARAGRAPH_CHARS or not paragraph.isascii():
        return False
    if any(_NON_PROSE.match(line) for line in paragraph.splitlines()):
        return False
    letters = sum(c.isalpha() or c.isspace() for c in paragraph)
    if letters < 0.85 * len(paragraph):
        return False
    if sum(c in _CODE_CHARS for c in paragraph) > 0.03 * len(paragraph):
        return False
    words = _WORD.findall(paragraph)
    if len(words) < 8:
        return False
    return sum(w.lower() in _STOPWORDS for w in words) >= 0.2 * len(words)


def prose_of(docstring: str) -> str:
    """The prose paragraphs of a docstring, each re-flowed onto one line, joined by blank lines."""
    keep = []
    for para in re.split(r"\n\s*\n", docstring):
        if is_prose(para):
            keep.append(" ".join(para.split()))
    return "\n\n".join(keep)


def harvest(
    roots: Sequence[Path] | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES, min_chars: int = MIN_DOC_CHARS
) -> Iterator[str]:
    """Documents (one per docstring with enough prose), deduplicated, until ``max_bytes`` of text.

    Walks ``roots`` (default :func:`default_roots`) in order, files sorted within each; a root
    nested in an earlier one (site-packages inside the stdlib tree) is walked only once, as its own.
    """
    roots = [Path(r).resolve() for r in (roots or default_roots())]
    seen: set[bytes] = set()
    total = 0
    for i, root in enumerate(roots):
        skip = [r for r in roots if r != root and root in r.parents]  # walked separately
        for path in _py_files(root, skip):
            try:
                source = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for doc in _docstrings(source):
                text = prose_of(doc)
                if len(text) < min_chars:
                    continue
                key = hashlib.sha1(" ".join(text.lower().split()).encode()).digest()
                if key in seen:
                    continue
                seen.add(key)
                yield text
                total += len(text.encode())
                if total >= max_bytes:
                    return


def _corpus_key(fingerprint: dict, max_bytes: int, roots: Sequence[Path]) -> str:
    """Cache key: tokenizer vocab hash + corpus settings + what was harvested from (Python version,
    root paths). Installing packages changes site-packages without changing this key: delete the
    cache folder (or set REMIX_DS_CACHE) to re-harvest."""
    blob = json.dumps(
        {
            "v": CORPUS_VERSION,
            "vocab": fingerprint["vocab_hash"],
            "eos": fingerprint["eos_id"],
            "max_bytes": max_bytes,
            "python": sys.version.split()[0],
            "roots": [str(r) for r in roots],
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def corpus_dir(tokenizer, *, max_bytes: int = DEFAULT_MAX_BYTES, roots: Sequence[Path] | None = None) -> Path:
    """Where the cached shards of the built-in corpus for ``tokenizer`` live (may not exist yet)."""
    roots = [Path(r).resolve() for r in (roots or default_roots())]
    return cache_root() / "corpus" / f"docstrings-{_corpus_key(tokenizer_fingerprint(tokenizer), max_bytes, roots)}"


def generic_corpus(
    tokenizer,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    roots: Sequence[Path] | None = None,
    tokenizer_name: str | None = None,
    progress: bool = False,
) -> ShardReader:
    """Open the built-in generic corpus for ``tokenizer``, building and caching its shards on first use.

    Returns a :class:`ShardReader` checked against ``tokenizer`` (fully checksummed: the corpus is
    a few MB). ``max_bytes`` caps the harvested text (default 4 MB, about a million tokens;
    building takes seconds).
    """
    roots = [Path(r).resolve() for r in (roots or default_roots())]
    final = corpus_dir(tokenizer, max_bytes=max_bytes, roots=roots)
    if not (final / "manifest.json").is_file():
        if next(harvest(roots, max_bytes=1), None) is None:
            raise ValueError(f"no English docstrings of >= {MIN_DOC_CHARS} characters found under "
                             f"{', '.join(map(str, roots))}; cannot build the built-in generic corpus")
        build_once(final, lambda tmp: tokenize_to_shards(
            harvest(roots, max_bytes=max_bytes), tmp, tokenizer, tokenizer_name=tokenizer_name,
            extra={"sources": ["builtin:docstrings"], "roots": [str(r) for r in roots],
                   "max_bytes": max_bytes, "python": sys.version.split()[0], "corpus_version": CORPUS_VERSION},
            progress=progress, desc="building generic corpus",
        ), marker="manifest.json")
    return ShardReader(final, tokenizer, verify="full")

