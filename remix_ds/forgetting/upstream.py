"""The upstream set: the N examples whose NLL change is measured (the matrix columns).

Two kinds (``upstream.kind``):

- ``windows``: N distinct windows of ``window_tokens`` tokens from pretraining shards (the built-in
  generic corpus or a Megatron shard folder), drawn without replacement with ``upstream.seed``.
  Every token but the first is counted (as when the window is trained raw: labels[0] = -100).
  Example id: ``window-<index of the window in the shard stream>``.
- ``examples``: the first N examples of a dataset's train split (any registered dataset or local
  file). ``upstream.answer_tokens=final_turn_eos`` (ours): the final answer's tokens + EOS are
  counted, exactly as the evaluator's ``answer_nll``; ``reference`` (the paper's
  ``get_ppl_arr.extract_single_ppl``): the tokens after the last assistant marker up to, not
  including, the EOS; chats with more than one assistant turn are skipped before the first N are
  taken (the reference's legacy EOS finder ends their span before it starts: NaN, column dropped).

Both become evaluator items (``EvalItem``: prompt ids + counted ids), so the NLL is the fused
evaluator's per-example mean over the counted tokens.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from remix_ds.cachedir import open_atomic
from remix_ds.configtools import ConfigError
from remix_ds.data.config import DataConfig
from remix_ds.data.fingerprint import data_fingerprint
from remix_ds.data.records import Example
from remix_ds.eval.items import EvalItem, make_items
from remix_ds.forgetting.config import UpstreamConfig
from remix_ds.forgetting.tasks import family_sample


@dataclass
class UpstreamSet:
    """Upstream examples in column order."""

    ids: list[str]
    items: list[EvalItem]
    """What the fused NLL pass scores: prompt_ids (context, not counted) + answer_ids (counted)."""
    examples: list[Example] | None = None
    """`examples` kind: the records (written to the replay pool file)."""
    windows: np.ndarray | None = None
    """`windows` kind: (N, window_tokens) int32 token ids."""

    def __len__(self) -> int:
        return len(self.ids)

    def sequences(self) -> list[np.ndarray]:
        """Full token sequence of every example (what its embedding averages over)."""
        return [np.concatenate([it.prompt_ids, it.answer_ids]) for it in self.items]

    def fingerprint(self, name: str, params: dict | None = None, columns=None) -> dict:
        """`data_fingerprint` of the set (of the examples at ``columns`` when given): over the records
        for the ``examples`` kind, over the ids for ``windows`` (an id is the window's stream index)."""
        cols = range(len(self.ids)) if columns is None else [int(c) for c in columns]
        recs = [self.examples[c] for c in cols] if self.examples is not None else [self.ids[c] for c in cols]
        return data_fingerprint(name, recs, params)

    def counted_tokens(self) -> np.ndarray:
        """(N,) tokens counted in each example's mean NLL."""
        return np.array([len(it.answer_ids) for it in self.items], dtype=np.int64)

    def write_pool(self, columns: np.ndarray, path: Path) -> Path:
        """The examples at ``columns`` as a replay pool: .npz token windows or a .jsonl of records
        (generic schema, ids kept), loadable as a `data.replay[].dataset`. Returns the path."""
        columns = np.asarray(columns)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.windows is not None:
            path = path.with_suffix(".npz")
            with open_atomic(path, "wb") as f:
                np.savez(f, ids=np.array([self.ids[c] for c in columns]), tokens=self.windows[columns])
            return path
        path = path.with_suffix(".jsonl")
        with open_atomic(path) as f:
            for c in columns.tolist():
                ex = self.examples[c]
                row = {"id": ex.id, "messages": ex.messages} if ex.messages is not None else {
                    "id": ex.id, "prompt": ex.prompt, "answer": ex.answer}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path


def window_item(index: int, example_id: str, window: np.ndarray) -> EvalItem:
    """A raw window as an evaluator item: the first token is context, the rest are counted."""
    w = np.asarray(window, dtype=np.int64)
    return EvalItem(index=index, id=example_id, source="upstream", prompt="", gold="", aliases=(),
                    prompt_ids=w[:1], answer_ids=w[1:])


def open_corpus(corpus: str, tokenizer):
    if corpus == "builtin":
        from remix_ds.data import corpus as builtin

        return builtin.generic_corpus(tokenizer)
    from remix_ds.data.shards import ShardReader

    return ShardReader(corpus, tokenizer)


def load_upstream(cfg: UpstreamConfig, tokenizer, data: DataConfig) -> UpstreamSet:
    """The upstream set (deterministic in the config; every rank builds the same one)."""
    n = cfg.num_examples
    if cfg.kind == "windows":
        reader = open_corpus(cfg.corpus, tokenizer)
        total = reader.num_windows(cfg.window_tokens)
        if total < n:
            raise ConfigError(f"upstream: corpus {cfg.corpus!r} holds {total} windows of {cfg.window_tokens} tokens; "
                              f"upstream.num_examples={n} is more")
        index = np.random.default_rng([cfg.seed, 0xF0E6]).choice(total, size=n, replace=False)
        windows = reader.windows(index, cfg.window_tokens)
        ids = [f"window-{i}" for i in index.tolist()]
        items = [window_item(c, ids[c], windows[c]) for c in range(n)]
        return UpstreamSet(ids=ids, items=items, windows=windows)
    from remix_ds.data.datasets import load_examples

    if cfg.family:  # e.g. the published Tulu held-out sample
        examples = family_sample(cfg.family, cfg.per_subset, cfg.skip_per_subset, cfg.source.data_files)
    else:
        examples = load_examples(cfg.source, data.kvr, "train")
    if len(examples) < n:
        where = f"family {cfg.family!r}" if cfg.family else f"source {cfg.source.dataset!r}"
        raise ConfigError(f"upstream.{where} has {len(examples)} train examples; upstream.num_examples={n} is more")
    if cfg.answer_tokens == "reference":
        examples = [ex for ex in examples if assistant_turns(ex) <= 1]
        if len(examples) < n:
            raise ConfigError(f"upstream: {len(examples)} examples with at most one assistant turn "
                              f"(answer_tokens=reference); upstream.num_examples={n} is more")
    examples = examples[:n]
    ids = [ex.id for ex in examples]
    if len(set(ids)) != n:
        raise ConfigError(f"upstream.source {cfg.source.dataset!r}: example ids are not unique")
    items = make_items(examples, tokenizer, data.prompt_format)
    if cfg.answer_tokens == "reference":
        items = [reference_item(it, tokenizer.eos_token_id) for it in items]
    return UpstreamSet(ids=ids, items=items, examples=examples)


def assistant_turns(ex: Example) -> int:
    """Assistant turns of a chat example (1 for a prompt / answer example)."""
    if ex.messages is None:
        return 1
    return sum(1 for m in ex.messages if m.get("role") == "assistant")


def reference_item(item: EvalItem, eos_id: int) -> EvalItem:
    """The reference's counted span of a single-answer item: the answer tokens before the first
    EOS (EOS and what follows it are not counted)."""
    ans = np.asarray(item.answer_ids)
    hit = np.nonzero(ans == int(eos_id))[0]
    if len(hit):
        ans = ans[: hit[0]]
    if len(ans) == 0:
        raise ConfigError(f"upstream example {item.id!r}: no answer token before EOS (answer_tokens=reference)")
    return dataclasses.replace(item, answer_ids=ans)
