"""Table-driven matcher tests: REMIX EM, normalization, aliases, WebQA containment, GSM8K/MATH."""

import pytest

from remix_ds.eval.matchers import (
    extract_boxed,
    extract_gsm8k,
    fused_is_exact,
    is_correct,
    matcher_for_source,
    normalize_answer,
)


@pytest.mark.parametrize(
    "pred, gold, aliases, normalize, expected",
    [
        ("Paris", "Paris", (), False, True),
        ("paris", "PARIS", (), False, True),  # REMIX lower()
        ("  Paris\n", "Paris ", (), False, True),  # REMIX strip()
        ("Paris.", "Paris", (), False, False),  # punctuation counts without normalize
        ("Paris.", "Paris", (), True, True),
        ("the Paris", "Paris", (), True, True),  # articles dropped when normalizing
        ("Pa ris", "Paris", (), False, False),  # inner whitespace is not stripped
        ("New  York", "new york", (), True, True),  # squashed when normalizing
        ("Ünïcödé", "ünïcödé", (), False, True),  # str.lower() handles non-ASCII
        ("ＡＢＣ", "abc", (), False, False),  # full-width letters differ under plain EM...
        ("ＡＢＣ", "abc", (), True, True),  # ...and match after NFKC normalization
        ("e\u0301", "\u00e9", (), True, True),  # combining accent == precomposed after NFKC
        ("NYC", "New York City", ("NYC", "New York"), False, True),  # alias
        ("LA", "New York City", ("NYC",), False, False),
        ("", "", (), False, True),  # empty == empty under EM
    ],
)
def test_exact(pred, gold, aliases, normalize, expected):
    assert is_correct(pred, gold, "exact", aliases, normalize) is expected


@pytest.mark.parametrize(
    "pred, gold, aliases, expected",
    [
        ("Obama", "Barack Obama", (), True),  # prediction contained in gold (REMIX WebQA)
        ("barack obama", "Barack Obama", (), True),
        ("Barack Hussein Obama", "Barack Obama", (), False),  # gold in prediction does not count
        ("", "Barack Obama", (), False),  # empty prediction never counts
        ("   ", "Barack Obama", (), False),
        ("Kenya", "Hawaii", ("Honolulu, Hawaii", "Kenya"), True),
    ],
)
def test_webqa_contains(pred, gold, aliases, expected):
    assert is_correct(pred, gold, "contains", aliases) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She pays 5 + 3 = 8 dollars.\n#### 8", "8"),
        ("#### 1,234", "1234"),
        ("The answer is $1,000.", "1000"),
        ("3 apples then 4.5 pears", "4.5"),
        ("so -7 is it", "-7"),
        ("no digits here", None),
    ],
)
def test_gsm8k_extract(text, expected):
    assert extract_gsm8k(text) == expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("So the total is 18.", "Janet sells 16 - 3 - 4 = 9 eggs... 9 * 2 = 18\n#### 18", True),
        ("#### 18.0", "#### 18", True),
        ("The answer is 1,000", "#### 1000", True),
        ("I think 17", "#### 18", False),
        ("no number", "#### 18", False),
    ],
)
def test_gsm8k_match(pred, gold, expected):
    assert is_correct(pred, gold, "gsm8k") is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{42}$.", "42"),
        ("\\boxed{\\frac{1}{2}} and later \\boxed{3}", "3"),  # the last one
        ("\\boxed{x^{2}+1}", "x^{2}+1"),  # nested braces
        ("\\fbox{7}", "7"),
        ("no box", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("Thus $\\boxed{\\dfrac{1}{2}}$.", "The answer is $\\boxed{\\frac{1}{2}}$.", True),
        ("\\boxed{0.5}", "\\boxed{.5}", True),
        ("\\boxed{ 3 }", "3", True),  # bare gold
        ("\\boxed{\\left(1,2\\right)}", "\\boxed{(1, 2)}", True),
        ("\\boxed{90^\\circ}", "\\boxed{90}", True),
        ("\\boxed{4}", "\\boxed{5}", False),
        ("4", "\\boxed{4}", False),  # prediction without a box does not count
    ],
)
def test_math_match(pred, gold, expected):
    assert is_correct(pred, gold, "math") is expected


@pytest.mark.parametrize(
    "source, override, expected",
    [("webqa", "auto", "contains"), ("gsm8k", "auto", "gsm8k"), ("math", "auto", "math"),
     ("kvr", "auto", "exact"), ("popqa", "auto", "exact"), ("webqa", "exact", "exact")],
)
def test_matcher_for_source(source, override, expected):
    assert matcher_for_source(source, override) == expected


@pytest.mark.parametrize(
    "kind, aliases, normalize, expected",
    [("exact", (), False, True), ("exact", ("x",), False, False), ("exact", (), True, False),
     ("contains", (), False, False), ("gsm8k", (), False, False), ("math", (), False, False)],
)
def test_fused_is_exact(kind, aliases, normalize, expected):
    assert fused_is_exact(kind, aliases, normalize) is expected


def test_normalize_answer():
    assert normalize_answer("  The  Eiffel-Tower, Paris! ") == "eiffeltower paris"
    with pytest.raises(ValueError, match="unknown matcher"):
        is_correct("a", "a", "fuzzy")
