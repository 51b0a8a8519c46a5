"""The generic-row build before the word-cache rewrite: decode every drawn document."""

from __future__ import annotations

import numpy as np


def decode_all_generic_rows(cfg, tokenizer, count: int):
    """`generic_rows`' rival (the "before" column): decode every drawn document with transformers'
    `batch_decode`, keep those with enough words (same draws, same rows)."""
    from remix_ds.data.generic import completion_examples, open_generic_corpus
    from remix_ds.data.tokenize import tokenize_for
    from remix_ds.data.tokenize import TokenizedExample

    reader = open_generic_corpus(cfg, tokenizer)
    rng = np.random.default_rng([cfg.mix.seed, 0x6E4E])
    need = cfg.mix.prompt_words + cfg.mix.answer_words
    kept, too_long = [], 0
    for _ in range(20):
        want = count - len(kept)
        docs = reader.sample_documents(rng, 2 * want + 8)
        rows = [w[:need] for w in (t.split() for t in tokenizer.batch_decode(docs, skip_special_tokens=True))
                if len(w) >= need]
        toks, dropped = tokenize_for(completion_examples(rows, cfg, "generic"), cfg, tokenizer, "answer")
        too_long += dropped
        kept += toks[:want]
        if len(kept) == count:
            return [TokenizedExample(f"generic-{i}", t.input_ids, t.labels) for i, t in enumerate(kept)], too_long
    raise RuntimeError("could not draw enough generic documents")
