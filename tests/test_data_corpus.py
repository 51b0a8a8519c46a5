"""The built-in generic corpus: prose filtering, deterministic harvest, cached shards keyed by tokenizer."""

from __future__ import annotations

import pytest

from remix_ds.data import corpus
from remix_ds.data.shards import ShardReader
from helpers import bpe_tokenizer, sp_tokenizer

PROSE = ("Return the number of items in the queue. This is only an approximation, because other threads "
         "may add or remove items at the same time as the caller reads the value, so use it with care. "
         "It is meant for logging and for tests.")
PROSE2 = ("The logger is created when it is first used and is shared by all of the handlers that are "
          "attached to it, so a change of its level affects every one of them at once, in every thread. "
          "There is no way to undo it.")


@pytest.mark.parametrize(
    "text, prose",
    [
        (PROSE, True),
        (">>> queue.qsize()\n3", False),  # doctest
        ("x = compute(a, b)\nreturn x + y if x else None and the rest", False),  # code
        ("Args:\n    maxsize: the largest number of items that can be stored in it", False),  # arg table
        ("Return the number of items in the queue of the current thread.", True),
        ("Retourne le nombre d'éléments présents dans la file d'attente du processus.", False),  # not ASCII
        ("QSIZE QUEUE ITEMS APPROXIMATE THREADS CALLER VALUE NUMBER COUNT", False),  # no function words
        ("short one", False),
        ("Call ``f(x)`` on [a, b] with {k: v} <tag> and _private_name_ when it is the first one", False),  # symbols
    ],
)
def test_is_prose(text, prose):
    assert corpus.is_prose(text) is prose


def test_prose_of_keeps_prose_paragraphs_reflowed():
    cut = PROSE.index(" approximation")
    doc = f"{PROSE[:cut]}\n  {PROSE[cut + 1:]}\n\n>>> q.qsize()\n3\n\nParameters\n----------\nmaxsize : int"
    assert corpus.prose_of(doc) == " ".join(PROSE.split())


def _fake_root(tmp_path):
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "b_mod.py").write_text(f'"""{PROSE2}"""\n\ndef f():\n    """{PROSE}"""\n')
    (root / "a_mod.py").write_text(f'"""{PROSE}\n\n>>> f()\n1\n"""\nX = """{PROSE2} as an assignment"""\n')
    (root / "pkg" / "c.py").write_text(f"class C:\n    '''{PROSE2}\n    continued on a second line.'''\n")
    (root / "tests" / "test_x.py").write_text(f'"""{PROSE2} from a test."""\n')  # tests are skipped
    return root


def test_harvest_sorted_deduplicated_capped(tmp_path):
    root = _fake_root(tmp_path)
    docs = list(corpus.harvest([root]))
    # a_mod (its doctest dropped), b_mod module doc, b_mod.f (a duplicate of a_mod's prose: dropped), pkg/c.
    # Assigned strings are not docstrings; tests/ is not walked.
    assert docs == [PROSE, PROSE2, PROSE2 + " continued on a second line."]
    assert list(corpus.harvest([root], max_bytes=1)) == [PROSE]


def test_harvest_real_installation_is_prose_and_deterministic():
    a = list(corpus.harvest(max_bytes=20_000))
    assert a == list(corpus.harvest(max_bytes=20_000))
    assert 20_000 <= sum(len(d.encode()) for d in a) < 40_000
    assert all(len(d) >= corpus.MIN_DOC_CHARS and d.isascii() for d in a)
    assert all(corpus.is_prose(p) for d in a for p in d.split("\n\n"))


def test_generic_corpus_builds_once_and_caches(tmp_path, monkeypatch):
    sp = sp_tokenizer()
    monkeypatch.setenv("REMIX_DS_CACHE", str(tmp_path / "cache"))
    root = _fake_root(tmp_path)
    reader = corpus.generic_corpus(sp, roots=[root], tokenizer_name="sp")
    assert isinstance(reader, ShardReader) and reader.num_documents == 3
    assert reader.path.parent == tmp_path / "cache" / "corpus"
    texts = [sp.decode(reader.document(i).tolist(), skip_special_tokens=True) for i in range(3)]
    assert texts == list(corpus.harvest([root]))
    assert reader.document(0)[-1] == sp.eos_token_id
    assert reader.manifest["sources"] == ["builtin:docstrings"] and reader.manifest["tokenizer"]["name"] == "sp"

    # Second call opens the cache without building.
    def no_build(*a, **k):
        raise AssertionError("rebuilt a cached corpus")

    monkeypatch.setattr("remix_ds.data.corpus.tokenize_to_shards", no_build)
    again = corpus.generic_corpus(sp, roots=[root])
    assert again.path == reader.path and again.document(2).tolist() == reader.document(2).tolist()

    # Another tokenizer gets its own cache entry (and so would need a build).
    assert corpus.corpus_dir(bpe_tokenizer(), roots=[root]) != reader.path
    with pytest.raises(AssertionError, match="rebuilt"):
        corpus.generic_corpus(bpe_tokenizer(), roots=[root])
    assert not list((tmp_path / "cache" / "corpus").glob(".tmp-*"))  # failed build cleaned up
