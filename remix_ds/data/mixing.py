"""REMIX mixing: one stream per stage = stage dataset + generic text + random words + replay.

Ratios count mixed rows per stage-dataset row (the reference's `mix_ratio`): with 2,000 facts and
`generic_ratio=2.0`, an epoch holds 2,000 facts and 4,000 generic rows. Generic and random-word
rows are drawn once from `data.mix.seed` and stay fixed across epochs, like a dataset (as in the
reference); replay rows are redrawn every epoch from (seed, epoch, replay index), so exposure
spreads evenly over the earlier stage's data. A replay entry with `weights_file` instead draws
its rows i.i.d. with probability softmax(score / temperature) over the pool (prediction-weighted
replay, `remix_ds.forgetting`); a replay `dataset` ending in `.npz` is a pool of raw token windows
(`ids`, `tokens`), e.g. pretraining windows, trained on every token but the first.

Replayed rows get the stage's kind of mask (`replay_pool`; the mode is the entry's `loss_mode`,
else `data.loss_mode`): `key_spans` supervises the spans marked in the replayed file itself, and a
replayed file with no marked span at all trains as `answer` rows (logged: it would train nothing);
`surprise` applies the pool's own mask (`ReplayConfig.surprise_mask`, computed by the entry point
against the stage's starting model, as for the stage's data), token windows (`.npz`) included.

Order (`data.mix.schedule`): `pooled` (the reference's): each epoch is a global permutation of all
the epoch's rows from `np.random.default_rng(seed + epoch)` (`reference_compat`: the same
permutation and replay draw in every epoch, as the reference does). `StageStream.epoch_items(epoch)`
is that ordered list; the loader slices it across ranks. `stratified`: the epoch is cut into
optimizer steps of G rows and every step holds each kind (dataset, generic, random, each replay
pool) in the epoch's proportions, floor or ceil of G * count / rows (`stratified_plan`; the
remainders are spread deterministically), each kind's rows in a per-epoch permutation, each step's
rows shuffled; still one pass over every row per epoch.

Mixing rows (`data.mix.redraw`): `stage` draws them once (above); `epoch` / `step` leave the
stream's generic/random lists empty and a `remix_ds.data.redraw.MixDrawer` draws fresh rows per
epoch, a whole epoch or one step at a time (`StageStream.rows`), in the loader's preparation.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from remix_ds.data import formats, surprise
from remix_ds.data.config import DataConfig, ReplayConfig
from remix_ds.data.datasets import load_examples
from remix_ds.data.doc_words import WordCounter, fast_batch_decode
from remix_ds.data.records import DataError, Example
from remix_ds.data.tokenize import IGNORE, TokenizedExample, from_token_ids, tokenize_examples
from remix_ds.data.word_cache import CompletionRows

log = logging.getLogger(__name__)


# Generic corpora up to this many tokens get their words per document counted in one pass (cached
# in-process); larger ones only for the documents drawn.
_WHOLE_CORPUS_TOKENS = 256_000_000


KINDS = ("dataset", "generic", "random")
"""Row kinds of an epoch's layout, in order; kind 3 + k is replay pool k."""


def stratified_plan(counts: list[int], block: int) -> np.ndarray:
    """Rows of each kind in each step of `block` rows: (steps, kinds) int64, rows summing to the
    step sizes (the last may be short) and columns to `counts`.

    Every entry is floor or ceil of the step's exact share (step rows * count / total): each step
    takes the floors, and the steps' leftover rows go to the kinds furthest behind their exact
    cumulative share (ties: lower kind index), so the running totals never drift by a whole row.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    steps = -(-total // block) if total else 0
    plan = np.zeros((steps, len(counts)), dtype=np.int64)
    err = np.zeros(len(counts), dtype=np.int64)  # (taken - exact share) * total, per kind
    for b in range(steps):
        g = min(block, total - b * block)
        share = g * counts  # exact share * total
        x, frac = share // total, share % total
        extra = g - int(x.sum())
        if extra:
            behind = [k for k in np.lexsort((np.arange(len(counts)), err - frac)).tolist() if frac[k]]
            x[behind[:extra]] += 1
        plan[b] = x
        err += x * total - share
    if steps and (plan.sum(axis=0) != counts).any():  # cannot happen (running error stays within one row)
        raise AssertionError(f"stratified_plan: columns {plan.sum(axis=0).tolist()} != counts {counts.tolist()}")
    return plan


def mix_count(ratio: float, n: int) -> int:
    """Mixed rows for `n` dataset rows at `ratio` (floor, as the reference's int(n * ratio))."""
    return int(math.floor(ratio * n + 1e-9))


@dataclass
class StageStream:
    """The rows of one stage, by kind, and the per-epoch order over all of them."""

    dataset: list[TokenizedExample]
    generic: list[TokenizedExample] = field(default_factory=list)
    random: list[TokenizedExample] = field(default_factory=list)
    replay_pools: list[list[TokenizedExample]] = field(default_factory=list)
    replay_counts: list[int] = field(default_factory=list)
    replay_probs: list[np.ndarray | None] = field(default_factory=list)
    """Per replay pool: sampling probabilities (weighted replay, with replacement) or None (uniform)."""
    seed: int = 0
    reshuffle: bool = True
    dropped: dict[str, int] = field(default_factory=dict)
    """Examples dropped for exceeding max_seq_len, by kind, and `bad_records`: dataset rows dropped
    under `data.on_bad_record=drop` (reported, never silently lost)."""
    schedule: str = "pooled"
    """data.mix.schedule: `pooled` or `stratified` (module docstring)."""
    redraw: str = "stage"
    """data.mix.redraw: `stage` (generic/random lists fixed), `epoch` or `step` (rows from `drawer`)."""
    generic_count: int = -1
    """Generic rows per epoch (-1: len(generic); set when redraw != stage leaves the list empty)."""
    random_count: int = -1
    """Random-word rows per epoch (-1: len(random))."""
    drawer: object = None
    """The `remix_ds.data.redraw.MixDrawer` of redraw=epoch|step (attached by the loader)."""

    def __post_init__(self):
        if self.generic_count < 0:
            self.generic_count = len(self.generic)
        if self.random_count < 0:
            self.random_count = len(self.random)
        self._layouts: dict = {}
        self._blocks: dict = {}
        if not self.dataset:
            raise DataError("the stage dataset has no example that fits data.max_seq_len")
        for i, (pool, count) in enumerate(zip(self.replay_pools, self.replay_counts)):
            if count and not pool:
                raise DataError(f"data.replay[{i}] has no example that fits data.max_seq_len")
        self.replay_probs = list(self.replay_probs) + [None] * (len(self.replay_pools) - len(self.replay_probs))
        for i, (pool, p) in enumerate(zip(self.replay_pools, self.replay_probs)):
            if p is not None and len(p) != len(pool):
                raise DataError(f"data.replay[{i}]: {len(p)} sampling probabilities for a pool of {len(pool)} rows")

    def __len__(self) -> int:
        return len(self.dataset) + self.generic_count + self.random_count + sum(self.replay_counts)

    def counts(self) -> dict[str, int]:
        return {"dataset": len(self.dataset), "generic": self.generic_count, "random": self.random_count,
                "replay": sum(self.replay_counts)}

    @property
    def lazy(self) -> bool:
        """True unless pooled + redraw=stage (whose order is `epoch_items`, unchanged since the reference)."""
        return self.schedule != "pooled" or self.redraw != "stage"

    def _key(self, epoch: int) -> int:
        return 0 if not self.reshuffle else epoch

    def replay_draw(self, epoch: int, k: int) -> np.ndarray:
        """Indices into replay pool k for this epoch: without replacement, whole passes if count > pool;
        weighted pools: i.i.d. draws with the pool's probabilities (with replacement)."""
        pool, count = len(self.replay_pools[k]), self.replay_counts[k]
        rng = np.random.default_rng([self.seed, self._key(epoch), k, 0x5EED])
        if self.replay_probs[k] is not None:
            return rng.choice(pool, size=count, replace=True, p=self.replay_probs[k])
        reps = -(-count // pool)
        return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:count]

    def epoch_items(self, epoch: int, block: int = 0) -> list[TokenizedExample]:
        """All rows of `epoch` in the global training order (same on every rank); with a stratified
        schedule or fresh mixing rows, the order of `rows` with steps of `block` rows (0: one step)."""
        if self.lazy:
            return self.rows(epoch, 0, len(self), block or len(self))
        items = self.dataset + self.generic + self.random
        for k, pool in enumerate(self.replay_pools):
            if self.replay_counts[k]:
                items = items + [pool[i] for i in self.replay_draw(epoch, k)]
        perm = np.random.default_rng(self.seed + self._key(epoch)).permutation(len(items))
        return [items[i] for i in perm]

    # ---- stratified schedule / fresh mixing rows ---------------------------------------------
    def layout(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(kind, index within the kind) of every row of `epoch` in training order: (rows,) int64 each.

        `block` is the optimizer step in rows (stratified steps). Pooled: the `epoch_items` order.
        """
        key = (epoch if self.reshuffle else 0, block)
        if key in self._layouts:
            return self._layouts[key]
        counts = [len(self.dataset), self.generic_count, self.random_count, *self.replay_counts]
        idx_of = [np.arange(c, dtype=np.int64) for c in counts[:3]]
        idx_of += [self.replay_draw(epoch, k).astype(np.int64) if c else np.zeros(0, np.int64)
                   for k, c in enumerate(self.replay_counts)]
        kinds = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        idx = np.concatenate(idx_of)
        if self.schedule == "pooled":
            perm = np.random.default_rng(self.seed + self._key(epoch)).permutation(len(idx))
            out = kinds[perm], idx[perm]
        else:
            rng = np.random.default_rng([self.seed, self._key(epoch), 0x57A7])
            idx_of = [rng.permutation(a) if k < 3 else a for k, a in enumerate(idx_of)]  # replay draws are random already
            plan = stratified_plan(counts, block)
            out = np.empty(len(idx), np.int64), np.empty(len(idx), np.int64)
            taken, pos = np.zeros(len(counts), np.int64), 0
            for row in plan:
                k_b = np.repeat(np.arange(len(counts), dtype=np.int64), row)
                i_b = np.concatenate([idx_of[k][taken[k]:taken[k] + n] for k, n in enumerate(row)])
                p = rng.permutation(len(k_b))  # mix the kinds within the step (ranks take contiguous slices)
                out[0][pos:pos + len(p)], out[1][pos:pos + len(p)] = k_b[p], i_b[p]
                taken += row
                pos += len(p)
        if len(self._layouts) > 2:
            self._layouts.clear()
        self._layouts[key] = out
        return out

    def rows(self, epoch: int, lo: int, hi: int, block: int) -> list[TokenizedExample]:
        """Rows `[lo, hi)` of `epoch` in training order (steps of `block` rows), materialized a step
        at a time (redraw=step) or an epoch at a time (redraw=epoch, at its first access)."""
        if hi <= lo:
            return []
        first, last = lo // block, (hi - 1) // block
        if self.redraw == "epoch" and (epoch, first) not in self._blocks:
            self._blocks.clear()
            for b in range(-(-len(self) // block)):
                self._blocks[(epoch, b)] = self._block_rows(epoch, b, block)
        out: list[TokenizedExample] = []
        for b in range(first, last + 1):
            if (epoch, b) not in self._blocks:
                if len(self._blocks) > 8:
                    self._blocks.pop(next(iter(self._blocks)))
                self._blocks[(epoch, b)] = self._block_rows(epoch, b, block)
            start = b * block
            out += self._blocks[(epoch, b)][max(lo, start) - start:min(hi, start + block) - start]
        return out

    def _block_rows(self, epoch: int, b: int, block: int) -> list[TokenizedExample]:
        kinds, idx = self.layout(epoch, block)
        kinds, idx = kinds[b * block:(b + 1) * block], idx[b * block:(b + 1) * block]
        fresh = self.redraw != "stage"
        if fresh and self.drawer is None:
            raise DataError(f"data.mix.redraw={self.redraw}: the stage stream has no MixDrawer "
                            "(build it with remix_ds.data.loader.build_train_loader)")
        generic = self.drawer.generic(epoch, idx[kinds == 1]) if fresh and (kinds == 1).any() else None
        random = self.drawer.random(epoch, b, int((kinds == 2).sum())) if fresh else None
        g = r = 0
        out = []
        for k, i in zip(kinds.tolist(), idx.tolist()):
            if k == 0:
                out.append(self.dataset[i])
            elif k == 1:
                out.append(generic[g] if fresh else self.generic[i])
                g += 1
            elif k == 2:
                out.append(random[r] if fresh else self.random[i])
                r += 1
            else:
                out.append(self.replay_pools[k - 3][i])
        return out


def _tokenize(examples: list[Example], cfg: DataConfig, tokenizer, mode) -> tuple[list[TokenizedExample], int]:
    res = tokenize_examples(
        examples, tokenizer, mode=mode, prompt_format=cfg.prompt_format, max_len=cfg.max_seq_len,
        key_span_delimiters=cfg.key_span_delimiters,
    )
    return res.examples, res.dropped


def completion_examples(word_rows: list[list[str]], cfg: DataConfig, kind: str) -> list[Example]:
    """Rows of >= prompt_words + answer_words words -> `Complete the following partial passage` examples."""
    p, a = cfg.mix.prompt_words, cfg.mix.answer_words
    return [
        Example(id=f"{kind}-{i}", source=kind, prompt=formats.completion_prompt(w[:p], cfg.mix.instruction),
                answer=" ".join(w[p : p + a]))
        for i, w in enumerate(word_rows)
    ]


def generic_rows(cfg: DataConfig, tokenizer, count: int) -> tuple[list[TokenizedExample], int]:
    """`count` generic rows from the shard corpus (fixed by data.mix.seed)."""
    if count == 0:
        return [], 0
    reader = open_generic_corpus(cfg, tokenizer)
    rng = np.random.default_rng([cfg.mix.seed, 0x6E4E])
    if cfg.mix.generic_format == "raw":
        windows = reader.sample_windows(rng, count, cfg.mix.raw_tokens)
        return [from_token_ids(w, f"generic-{i}") for i, w in enumerate(windows)], 0
    need = cfg.mix.prompt_words + cfg.mix.answer_words
    counter = WordCounter(tokenizer)
    completion = CompletionRows(tokenizer, cfg.mix.instruction, cfg.prompt_format)
    bounds = np.concatenate([[0], np.cumsum(reader.doc_lengths)])

    def words_and_cut(drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # one pass over a corpus of moderate size (cached); a huge one: only the drawn documents
        if reader.num_tokens <= _WHOLE_CORPUS_TOKENS:
            counts, cut = counter.corpus_counts(reader, need)
            return counts[drawn], cut[drawn]
        return counter.count_and_cut([reader.document(int(i)) for i in drawn], need)

    kept: list[TokenizedExample] = []
    too_long = 0
    for _ in range(20):  # draw documents in bulk; keep long-enough ones that fit (reference skips short docs)
        want = count - len(kept)
        # NOTE: the same draws as decoding every document (`sample_documents`), but words are
        # counted from the ids once per corpus, and only the documents with enough of them are
        # read and decoded, each only as far as its first `need` words (issue 14).
        drawn = reader.sample_document_indices(rng, 2 * want + 8)
        n_words, cut = words_and_cut(drawn)
        ok = n_words >= need
        words = counter.words([reader.tokens(int(bounds[i]), int(bounds[i] + c))
                               for i, c in zip(drawn[ok].tolist(), cut[ok])])
        if any(len(w) < need for w in words):  # the table overcounted: decode whole documents from here on
            counter.exact = False
            words = [w for w in (t.split() for t in fast_batch_decode(tokenizer, [reader.document(int(i)) for i in drawn]))
                     if len(w) >= need]
        # NOTE: rows from per-word ids, identical to tokenizing each formatted row (word_cache.py)
        toks, dropped = completion.rows([w[:need] for w in words], cfg.mix.prompt_words, cfg.mix.answer_words,
                                        "generic", cfg.max_seq_len)
        too_long += dropped
        kept += toks[:want]
        if len(kept) == count:
            # ids are positions in the mixed set, so they stay unique across refills
            return [TokenizedExample(f"generic-{i}", t.input_ids, t.labels) for i, t in enumerate(kept)], too_long
    raise DataError(
        f"generic corpus {cfg.mix.generic_corpus!r}: could not draw {count} documents of >= {need} words that fit "
        f"data.max_seq_len={cfg.max_seq_len} ({len(kept)} found)"
    )


def open_generic_corpus(cfg: DataConfig, tokenizer):
    """The shard reader of data.mix.generic_corpus (`builtin`: the cached built-in corpus)."""
    if cfg.mix.generic_corpus == "builtin":
        from remix_ds.data import corpus

        return corpus.generic_corpus(tokenizer)
    from remix_ds.data.shards import ShardReader

    return ShardReader(cfg.mix.generic_corpus, tokenizer)


def random_rows(cfg: DataConfig, tokenizer, count: int) -> tuple[list[TokenizedExample], int]:
    """`count` random-word rows (fixed by data.mix.seed): raw (all loss) or completion format."""
    if count == 0:
        return [], 0
    from remix_ds.data.random_words import RandomWords

    m = cfg.mix
    n_words = m.raw_words if m.random_format == "raw" else m.prompt_words + m.answer_words
    gen = RandomWords.from_source(tokenizer, m.random_word_source, m.random_vocab_size, min_words=n_words, max_words=n_words)
    batch = gen.sample(np.random.default_rng([m.seed, 0x7A4D]), count)
    if m.random_format == "raw":
        kept = [from_token_ids(x, f"random-{i}") for i, x in enumerate(batch.split()) if 2 <= len(x) <= cfg.max_seq_len]
        return kept, count - len(kept)
    words = [gen.text(batch, i).split() for i in range(count)]
    return CompletionRows(tokenizer, m.instruction, cfg.prompt_format).rows(words, m.prompt_words, m.answer_words,
                                                                            "random", cfg.max_seq_len)


def build_stage_stream(cfg: DataConfig, tokenizer, seed: int) -> StageStream:
    """Load, tokenize and mix everything the stage trains on (deterministic in cfg and seed)."""
    examples = load_examples(cfg.source(), cfg.kvr, "train")
    dataset, dropped = _tokenize(examples, cfg, tokenizer, cfg.loss_mode)
    if cfg.loss_mode == "surprise":
        if not cfg.surprise_mask:
            raise DataError("data.loss_mode=surprise needs data.surprise_mask (the entry point computes it before training)")
        dataset = surprise.apply_mask(dataset, cfg.surprise_mask)
    n = len(examples)
    n_generic, n_random = mix_count(cfg.mix.generic_ratio, n), mix_count(cfg.mix.random_ratio, n)
    if cfg.mix.redraw == "stage":
        generic, g_drop = generic_rows(cfg, tokenizer, n_generic)
        random, r_drop = random_rows(cfg, tokenizer, n_random)
        n_generic, n_random = len(generic), len(random)
    else:  # drawn per epoch / step by the loader's MixDrawer (remix_ds.data.redraw)
        generic, random, g_drop, r_drop = [], [], 0, 0
    pools, counts, probs, p_drop = [], [], [], 0
    for i, rcfg in enumerate(cfg.replay):
        pool, d = replay_pool(cfg, rcfg, tokenizer, f"data.replay[{i}]")
        if (rcfg.loss_mode or cfg.loss_mode) == "surprise":
            if not rcfg.surprise_mask:
                raise DataError(f"data.replay[{i}] ({rcfg.dataset}): loss_mode surprise needs data.replay[{i}].surprise_mask "
                                "(the entry point computes it before training)")
            pool = surprise.apply_mask(pool, rcfg.surprise_mask)
        pools.append(pool)
        counts.append(mix_count(rcfg.ratio, n))
        probs.append(replay_probabilities(pool, rcfg))
        p_drop += d
    return StageStream(
        dataset=dataset, generic=generic, random=random, replay_pools=pools, replay_counts=counts,
        replay_probs=probs, seed=seed, reshuffle=not cfg.reference_compat,
        schedule=cfg.mix.schedule, redraw=cfg.mix.redraw, generic_count=n_generic, random_count=n_random,
        dropped={"dataset": dropped, "generic": g_drop, "random": r_drop, "replay": p_drop,
                 "bad_records": len(getattr(examples, "dropped", ()))},
    )


def replay_pool(cfg: DataConfig, rcfg: ReplayConfig, tokenizer, key: str = "data.replay") -> tuple[list[TokenizedExample], int]:
    """A replay entry's rows before any surprise mask, and how many were dropped as too long.

    Token windows (`.npz`) train every token but the first; files are tokenized in the entry's
    mode (`surprise`: as `answer`, the mask applies afterwards). In `key_spans` mode a file with no
    marked span trains as `answer` rows instead of nothing, with a warning naming the entry."""
    if Path(rcfg.dataset).suffix.lower() == ".npz":
        return token_window_pool(rcfg.dataset, cfg.max_seq_len)
    mode = rcfg.loss_mode or cfg.loss_mode
    examples = load_examples(rcfg.source(), cfg.kvr, "train")
    pool, dropped = _tokenize(examples, cfg, tokenizer, mode)
    if mode == "key_spans" and pool and not any((t.labels != IGNORE).any() for t in pool):
        log.warning("%s (%s): no %s...%s marked span in any row, so its rows replay as `answer` rows (answer tokens "
                    "and EOS); mark the key tokens or set %s.loss_mode to choose", key, rcfg.dataset,
                    *cfg.key_span_delimiters, key)
        pool, dropped = _tokenize(examples, cfg, tokenizer, "answer")
    return pool, dropped


def token_window_pool(path: str, max_seq_len: int) -> tuple[list[TokenizedExample], int]:
    """A replay pool of raw token windows from a .npz with `ids` (n,) str and `tokens` (n, L) int."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, tokens = z["ids"], z["tokens"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: not a token-window pool (.npz with `ids` and `tokens`): {e}") from None
    if tokens.ndim != 2 or len(ids) != len(tokens):
        raise DataError(f"{path}: `tokens` must be (n, L) with one id per row; got ids {ids.shape}, tokens {tokens.shape}")
    kept = [from_token_ids(t, str(i)) for i, t in zip(ids.tolist(), tokens) if len(t) <= max_seq_len]
    return kept, len(tokens) - len(kept)


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(scores / temperature), computed stably (float64)."""
    x = np.asarray(scores, dtype=np.float64) / temperature
    e = np.exp(x - x.max())
    return e / e.sum()


def replay_probabilities(pool: list[TokenizedExample], rcfg: ReplayConfig) -> np.ndarray | None:
    """Sampling probabilities of the pool rows from `rcfg.weights_file` (None without one).

    The file maps example id -> score (extra ids are ignored, so one file can score a larger
    set); every pool row must have a score.
    """
    if not rcfg.weights_file:
        return None
    try:
        scores = json.loads(Path(rcfg.weights_file).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"replay weights_file {rcfg.weights_file}: {e}") from None
    if not isinstance(scores, dict):
        raise DataError(f"replay weights_file {rcfg.weights_file} must hold a JSON object {{example id: score}}")
    missing = [ex.id for ex in pool if ex.id not in scores]
    if missing:
        raise DataError(f"replay weights_file {rcfg.weights_file} has no score for {len(missing)} pool rows "
                        f"(e.g. {', '.join(missing[:3])})")
    return softmax(np.array([float(scores[ex.id]) for ex in pool]), rcfg.temperature)
