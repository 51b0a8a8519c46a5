"""String matchers: when a prediction counts as correct.

The REMIX reference scores exact match (EM) as greedy decoding until EOS, then
``pred.strip().lower() == gold.strip().lower()``. Variants kept here, each a pure function:

- ``exact``    REMIX EM (the default). With ``normalize=True`` both sides also go through
               :func:`normalize_answer` (NFKC, lower case, no punctuation, no articles, one space).
- ``contains`` WebQA as REMIX scores it: the (stripped, lower-cased) prediction is a substring of
               the gold answer. An empty prediction never counts (it is a substring of everything).
- ``gsm8k``    the final number: ``#### N`` when present, else the last number in the text;
               compared as numbers (``1,000`` == ``1000.0``).
- ``math``     the last ``\\boxed{...}`` (or ``\\fbox{...}``) answer, compared after a light LaTeX
               normalization (spaces, ``\\left``/``\\right``, ``dfrac``/``tfrac``, ``$``, trailing ``.``).

Aliases: every matcher accepts extra gold strings; the prediction is correct if it matches any.

Only ``exact`` without aliases and without ``normalize`` can be decided by the fused evaluator
(see :func:`fused_is_exact` and ``docs`` in ``fused.py``); everything else needs generated text.
"""

from __future__ import annotations

import re
import string
import unicodedata
from fractions import Fraction
from typing import Literal, Sequence

MatcherKind = Literal["exact", "contains", "gsm8k", "math"]
MATCHER_KINDS: tuple[str, ...] = ("exact", "contains", "gsm8k", "math")

# Default matcher per `Example.source` (dataset name); anything else is scored by `exact`.
SOURCE_MATCHERS: dict[str, str] = {"webqa": "contains", "gsm8k": "gsm8k", "math": "math"}


def matcher_for_source(source: str, override: str = "auto") -> str:
    """The matcher a dataset is scored with: ``override`` unless it is ``auto``, else by source."""
    if override != "auto":
        if override not in MATCHER_KINDS:
            raise ValueError(f"unknown matcher {override!r}; known: auto, {', '.join(MATCHER_KINDS)}")
        return override
    return SOURCE_MATCHERS.get(source.lower(), "exact")


def fused_is_exact(kind: str, aliases: Sequence[str] = (), normalize: bool = False) -> bool:
    """True when a token-level teacher-forced verdict equals this matcher's verdict (up to the
    tokenization caveats in ``fused.py``): REMIX ``exact`` on a single gold string."""
    return kind == "exact" and not aliases and not normalize


# ---------------------------------------------------------------- normalization
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
# ASCII punctuation plus every Unicode punctuation character (category P*).
_PUNCT = set(string.punctuation)


def remix_normalize(text: str) -> str:
    """What the REMIX reference does to both sides: ``strip().lower()``."""
    return text.strip().lower()


def normalize_answer(text: str) -> str:
    """SQuAD-style normalization: NFKC, lower case, drop punctuation and articles, squash spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT and not unicodedata.category(ch).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _norm(text: str, normalize: bool) -> str:
    return normalize_answer(text) if normalize else remix_normalize(text)


# ---------------------------------------------------------------- gsm8k
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_GSM8K_FINAL = re.compile(r"####\s*(.+)")


def _parse_number(text: str) -> Fraction | None:
    text = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def extract_gsm8k(text: str) -> str | None:
    """The final numeric answer: what follows ``####`` if present, else the last number."""
    m = _GSM8K_FINAL.search(text)
    if m:
        nums = _NUMBER.findall(m.group(1))
        if nums:
            return nums[0].replace(",", "").replace("$", "")
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "").replace("$", "").rstrip(".") if nums else None


def gsm8k_match(prediction: str, gold: str) -> bool:
    p, g = extract_gsm8k(prediction), extract_gsm8k(gold)
    if p is None or g is None:
        return False
    pn, gn = _parse_number(p), _parse_number(g)
    return pn is not None and pn == gn


# ---------------------------------------------------------------- math
def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        # `\boxed 5` form
        rest = text[start:].split(None, 1)
        return rest[1].split("$")[0].strip() if len(rest) > 1 else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced


def normalize_math(text: str) -> str:
    """Light LaTeX answer normalization (a subset of the Hendrycks MATH ``strip_string``)."""
    text = text.strip()
    text = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", text)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                     ("dfrac", "frac"), ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", ""),
                     ("\\$", ""), ("$", ""), ("\\%", ""), ("%", "")):
        text = text.replace(old, new)
    text = "".join(text.split())
    text = text.rstrip(".")
    # "0.5" and ".5" compare equal; "\frac12" stays as written.
    if re.fullmatch(r"\.\d+", text):
        text = "0" + text
    return text


def math_match(prediction: str, gold: str) -> bool:
    p = extract_boxed(prediction)
    g = extract_boxed(gold)
    if g is None:
        g = gold  # gold given as a bare answer
    if p is None:
        return False
    p, g = normalize_math(p), normalize_math(g)
    if p == g:
        return True
    pn, gn = _parse_number(p), _parse_number(g)
    return pn is not None and pn == gn


# ---------------------------------------------------------------- entry point
def is_correct(prediction: str, gold: str, kind: str = "exact", aliases: Sequence[str] = (),
               normalize: bool = False) -> bool:
    """Does ``prediction`` match ``gold`` (or any alias) under matcher ``kind``?"""
    golds = [gold, *aliases]
    if kind == "exact":
        p = _norm(prediction, normalize)
        return any(p == _norm(g, normalize) for g in golds)
    if kind == "contains":
        p = _norm(prediction, normalize)
        return bool(p) and any(p in _norm(g, normalize) for g in golds)
    if kind == "gsm8k":
        return any(gsm8k_match(prediction, g) for g in golds)
    if kind == "math":
        return any(math_match(prediction, g) for g in golds)
    raise ValueError(f"unknown matcher {kind!r}; known: {', '.join(MATCHER_KINDS)}")
