"""Regenerate remix-ds's built-in generic corpus from the Python 3.11 documentation's reST sources.

The corpus the package ships (remix_ds/data/builtin_corpus/) was made by this script from Debian's
`python3.11-doc` 3.11.2-6+deb12u9 (the documentation of CPython 3.11.2, PSF License Version 2):

    apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb x
    python tools/make_builtin_corpus.py x/usr/share/doc/python3.11/html/_sources

It keeps the English prose paragraphs of every section (no code, directives, tables or lists),
strips the inline reST markup, one document per section, in sorted file order, deduplicated,
up to 4 MB of text; it writes `corpus.jsonl.gz` (one {"text": ...} per line, gzip with mtime 0)
and prints its sha256 for `remix_ds/data/corpus.py: BUILTIN_SHA256`. The package never runs this:
it reads the shipped file, so the corpus depends on nothing installed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
import textwrap
from pathlib import Path

MAX_BYTES = 4_000_000
MIN_DOC_CHARS = 200
MIN_PARAGRAPH_CHARS = 40

_STOPWORDS = frozenset(
    "the of and to a in is it that for this be as with are on by an or not from at which can if "
    "will its has have was when all any but one than more should may must this these those only "
    "into also been other each such there their they you your we our use used".split()
)
_WORD = re.compile(r"[A-Za-z]+")
_HEADING_UNDERLINE = re.compile(r"^([=\-~^*+#\"'`.:])\1{2,}\s*$")
# Lines that mark a paragraph as code, markup, a table or a list rather than running prose.
_NON_PROSE = re.compile(r"^\s*(>>>|\.\.\.|\.\. |\||[-*+] |\d+\. |#\. |:\w+:|[-=~^*+#]{3,})")
_CODE_CHARS = frozenset("()[]{}=<>;_\\")
# Inline markup: :role:`text <target>` / :role:`text`, ``literal``, `link <url>`_, *emph*, **strong**.
_ROLE = re.compile(r":[\w:.+-]+:`!?~?([^`<]*?)(?:\s*<[^`>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`_{1,2}")
_LITERAL = re.compile(r"``([^`]+)``")
_INTERPRETED = re.compile(r"`([^`]+)`_{0,2}")
_EMPH = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")


def plain(paragraph: str) -> str:
    """A paragraph's text without inline reST markup, on one line."""
    text = " ".join(paragraph.split())
    for pattern in (_ROLE, _LINK, _LITERAL, _INTERPRETED, _EMPH):
        text = pattern.sub(r"\1", text)
    return text.replace("::", ":").replace("\\", "")


def is_prose(paragraph: str) -> bool:
    """English-looking running prose: mostly letters, many function words, no code/markup lines."""
    if len(paragraph) < MIN_PARAGRAPH_CHARS or not paragraph.isascii():
        return False
    if any(_NON_PROSE.match(line) for line in paragraph.splitlines()):
        return False
    text = plain(paragraph)
    if sum(c.isalpha() or c.isspace() for c in text) < 0.85 * len(text):
        return False
    if sum(c in _CODE_CHARS for c in text) > 0.03 * len(text):
        return False
    words = _WORD.findall(text)
    return len(words) >= 8 and sum(w.lower() in _STOPWORDS for w in words) >= 0.2 * len(words)


def sections(source: str):
    """The paragraphs of each section of one reST file (split at underlined headings)."""
    lines = source.splitlines()
    current: list[str] = []
    para: list[str] = []
    for i, line in enumerate(lines):
        is_heading = _HEADING_UNDERLINE.match(line) or (
            i + 1 < len(lines) and _HEADING_UNDERLINE.match(lines[i + 1]) and line.strip()
            and len(lines[i + 1].rstrip()) >= len(line.rstrip()))
        if is_heading:
            if para:
                current.append("\n".join(para))
            para = []
            if current:
                yield current
            current = []
        elif line.strip():
            para.append(line)
        elif para:
            current.append("\n".join(para))
            para = []
    if para:
        current.append("\n".join(para))
    if current:
        yield current


def _without_literal_blocks(paragraphs: list[str]):
    """Leave out literal blocks: the paragraphs indented deeper than one that ends in `::`."""
    literal_indent = None
    for p in paragraphs:
        indent = len(p) - len(p.lstrip(" "))
        if literal_indent is not None and indent > literal_indent:
            continue
        literal_indent = indent if p.rstrip().endswith("::") else None
        yield p


def documents(sources_dir: Path, max_bytes: int = MAX_BYTES):
    seen: set[bytes] = set()
    total = 0
    for path in sorted(sources_dir.rglob("*.rst.txt")):
        for paragraphs in sections(path.read_text(encoding="utf-8")):
            kept = (textwrap.dedent(p) for p in _without_literal_blocks(paragraphs))
            text = "\n\n".join(plain(p) for p in kept if is_prose(p))
            if len(text) < MIN_DOC_CHARS:
                continue
            key = hashlib.sha1(" ".join(text.lower().split()).encode()).digest()
            if key in seen:
                continue
            seen.add(key)
            yield text
            total += len(text.encode())
            if total >= max_bytes:
                return


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", type=Path, help="the documentation's _sources folder (*.rst.txt)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "remix_ds/data/builtin_corpus/corpus.jsonl.gz")
    args = ap.parse_args(argv)
    docs = list(documents(args.sources))
    payload = "".join(json.dumps({"text": t}, ensure_ascii=True) + "\n" for t in docs).encode()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
        gz.write(payload)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{len(docs)} documents, {sum(len(t.encode()) for t in docs)} bytes of text -> {args.out} "
          f"({args.out.stat().st_size} bytes), sha256 {digest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
