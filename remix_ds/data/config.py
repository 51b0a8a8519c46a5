"""Data section of the run config: what a stage trains on, what is mixed in, how it is packed.

Everything the data pipeline does is decided here; `remix_ds.data.loader.build_train_loader`
reads nothing else. Validation raises `ConfigError` naming the dotted key (`data.mix.generic_ratio`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from remix_ds.configtools import ConfigError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
"""File endings read as local datasets (anything else is a hub id or a registry name)."""

LossMode = Literal["answer", "all", "key_spans", "surprise"]
GENERATED_DATASETS = ("kvr", "generic")
"""Datasets generated from a seed (no base model can know them): a grid's require_filtered does not apply."""


@dataclass
class KVRConfig:
    """The synthetic key-value recall dataset (`kvr`), generated deterministically from `seed`."""

    num_pairs: int = 2000
    """Number of distinct key/value pairs."""
    key_len: int = 8
    """Characters per key."""
    value_len: int = 8
    """Characters per value."""
    alphabet: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    """Characters keys and values are drawn from (uniformly, with replacement)."""
    seed: int = 0
    """Seed of the generator; the same seed gives the same pairs on every machine."""

    def validate(self, prefix: str) -> None:
        for name in ("num_pairs", "key_len", "value_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name} must be >= 1, got {getattr(self, name)}")
        if len(set(self.alphabet)) < 2:
            raise ConfigError(f"{prefix}.alphabet needs at least 2 distinct characters")
        if len(set(self.alphabet)) ** self.key_len < 2 * self.num_pairs:
            raise ConfigError(f"{prefix}: alphabet^key_len is too small for {self.num_pairs} distinct keys")


@dataclass
class SourceConfig:
    """One dataset: a registered name (hub source or local file with the hub's fields) and its split."""

    dataset: str = "kvr"
    """Registered dataset name or a local .jsonl/.json/.parquet file of `prompt`+`answer` or `messages` rows."""
    data_files: str | None = None
    """Local file with the registered dataset's own fields, used instead of downloading it."""
    num_examples: int = 0
    """Train on this many examples (0: all that remain after the held-out split)."""
    heldout_size: int = 0
    """Examples set aside before subsampling (never trained; the evaluator can score them)."""
    subsample_seed: int | None = 0
    """Seed of the shuffle before the held-out/train split; null keeps file order (the reference takes the first rows)."""
    loss_mode: LossMode | None = None
    """Which tokens carry loss; null uses data.loss_mode."""
    on_bad_record: Literal["error", "drop"] = "error"
    """A bad record (empty/non-string prompt or answer, missing field): `error` stops with file:line; `drop` skips and counts it."""

    def validate(self, prefix: str) -> None:
        if not self.dataset:
            raise ConfigError(f"{prefix}.dataset must not be empty")
        if self.on_bad_record not in ("error", "drop"):
            raise ConfigError(f"{prefix}.on_bad_record must be 'error' or 'drop', got {self.on_bad_record!r}")
        if self.num_examples < 0 or self.heldout_size < 0:
            raise ConfigError(f"{prefix}.num_examples and {prefix}.heldout_size must be >= 0")


@dataclass
class ReplayConfig(SourceConfig):
    """An earlier stage's dataset replayed into this stage (the replay baseline).

    The source fields take the earlier stage's values, so the same rows are replayed.
    """

    dataset: str = "kvr"
    """Registered dataset name or local .jsonl/.json/.parquet file (as in the earlier stage), or a .npz of token windows (`ids`, `tokens`; every token but the first trained)."""
    ratio: float = 0.0
    """Replay rows per stage-dataset row per epoch (0.01 = 1%), redrawn every epoch from seed + epoch."""
    weights_file: str | None = None
    """JSON {example id: score}: draw replay rows with replacement with probability softmax(score / temperature); null: uniform, without replacement."""
    temperature: float = 0.1
    """Softmax temperature of the weights_file scores (in the scores' units, e.g. predicted NLL increase)."""
    surprise_mask: str | None = None
    """`surprise` mode (this entry's loss_mode, else data.loss_mode): the pool's mask, set by the entry point against the stage's starting model (see remix_ds.data.surprise)."""
    draw: Literal["per_epoch", "once"] = "per_epoch"
    """`per_epoch`: floor(n x ratio) rows redrawn every epoch (as above); `once` (replay as published, Jin & Ren): floor(n x ratio) + 1 distinct rows drawn once per run (weighted by weights_file without replacement), replayed every epoch."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.draw not in ("per_epoch", "once"):
            raise ConfigError(f"{prefix}.draw must be 'per_epoch' or 'once', got {self.draw!r}")
        if self.ratio < 0:
            raise ConfigError(f"{prefix}.ratio must be >= 0, got {self.ratio}")
        if not self.temperature > 0:
            raise ConfigError(f"{prefix}.temperature must be > 0, got {self.temperature}")

    def source(self) -> SourceConfig:
        """This replay dataset as a plain SourceConfig (what the registry loads)."""
        return _source_of(self)


def check_filtered(path: str, key: str) -> None:
    """`path` must be a "yet to learn" file written by `remix-ds filter-known` (see remix_ds/baselines/filter_known.py)."""
    import json
    from pathlib import Path

    file = Path(path)
    manifest = file.parent.parent / "filter_known.json"
    hint = f"run `remix-ds filter-known MODEL --data NAME --out DIR` and set {key}=DIR/unknown/NAME.jsonl"
    if not (file.is_file() and file.parent.name == "unknown" and manifest.is_file()):
        raise ConfigError(f"{key}={path!r} is not a filter-known output (data.require_filtered=true); {hint}")
    listed = {d["files"]["unknown"] for d in json.loads(manifest.read_text()).get("datasets", {}).values()}
    if f"unknown/{file.name}" not in listed:
        raise ConfigError(f"{key}={path!r} is not listed in {manifest} (data.require_filtered=true); {hint}")


def _source_of(cfg) -> SourceConfig:
    return SourceConfig(
        dataset=cfg.dataset,
        data_files=cfg.data_files,
        num_examples=cfg.num_examples,
        heldout_size=cfg.heldout_size,
        subsample_seed=cfg.subsample_seed,
        loss_mode=cfg.loss_mode,
        on_bad_record=cfg.on_bad_record,
    )


@dataclass
class MixConfig:
    """REMIX: generic pretraining text and random-word sequences mixed into the stage."""

    generic_ratio: float = 0.0
    """Generic-text rows per stage-dataset row (the reference's mix_ratio, e.g. 2.0)."""
    generic_corpus: str = "builtin"
    """`builtin` (the generated corpus, built into shards and cached) or a Megatron shard prefix/folder."""
    generic_format: Literal["completion", "raw"] = "completion"
    """`completion`: prompt_words under the instruction, next answer_words supervised; `raw`: raw_tokens, all trained."""
    random_ratio: float = 0.0
    """Random-word rows per stage-dataset row."""
    random_format: Literal["completion", "raw"] = "raw"
    """`raw`: raw_words random words, all trained (reference random pretraining); `completion`: as generic."""
    prompt_words: int = 50
    """Words in the prompt of a completion row."""
    answer_words: int = 50
    """Words in the supervised continuation of a completion row."""
    raw_words: int = 50
    """Words in one raw random-word row."""
    raw_tokens: int = 128
    """Tokens in one raw generic window."""
    random_word_source: str = "wordfreq:en"
    """Random-word vocabulary: `wordfreq:LANG` or a text file with one word per line."""
    random_vocab_size: int = 10000
    """Number of words in the random-word vocabulary."""
    instruction: str = "Complete the following partial passage:"
    """Instruction line above the prompt words of a completion row."""
    seed: int = 0
    """Seed of which generic windows / random words are drawn (fixed across epochs with redraw=stage, like a dataset)."""
    schedule: Literal["pooled", "stratified"] = "pooled"
    """`pooled`: all rows of the epoch in one pool, permuted (the reference); `stratified`: every optimizer step
    holds each kind (dataset, generic, random, each replay) in the epoch's proportions, floor or ceil."""
    redraw: Literal["stage", "epoch", "step"] = "stage"
    """`stage`: mixing rows drawn once per stage (the reference); `epoch` / `step`: fresh generic windows (without
    replacement over the shards) and random words every epoch, drawn a whole epoch or one step at a time."""

    def validate(self, prefix: str) -> None:
        if self.generic_ratio < 0 or self.random_ratio < 0:
            raise ConfigError(f"{prefix}.generic_ratio and {prefix}.random_ratio must be >= 0")
        if self.schedule not in ("pooled", "stratified"):
            raise ConfigError(f"{prefix}.schedule must be 'pooled' or 'stratified', got {self.schedule!r}")
        if self.redraw not in ("stage", "epoch", "step"):
            raise ConfigError(f"{prefix}.redraw must be 'stage', 'epoch' or 'step', got {self.redraw!r}")
        for name in ("prompt_words", "answer_words", "raw_words", "raw_tokens", "random_vocab_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class DataConfig(SourceConfig):
    """What a stage trains on and how it is packed (the stage dataset's source fields are inherited)."""

    dataset: str = "kvr"
    """Registered dataset name (see remix_ds.data.datasets.REGISTRY) or a local .jsonl/.json/.parquet file."""
    max_seq_len: int = 512
    """Token budget of one packed row; longer examples are dropped and counted, never truncated."""
    loss_mode: LossMode = "answer"
    """`answer`: answer tokens + EOS of every assistant turn; `all`: every token; `key_spans`: marked spans only; `surprise`: the answer tokens the base model does not already predict."""
    key_span_delimiters: tuple[str, str] = ("[[", "]]")
    """Opening and closing markers of supervised spans in `key_spans` mode."""
    surprise_threshold: float = 0.5
    """`surprise` mode: an answer token is supervised when the frozen base model's argmax is not the gold token or p(gold) is below this (0: greedy-wrong tokens only)."""
    surprise_eos: bool = True
    """`surprise` mode: always supervise each answer's EOS (false: only when it is surprising too)."""
    surprise_mask: str | None = None
    """`surprise` mode: the mask file (set by the entry point, which computes it once with the base model; see remix_ds.data.surprise)."""
    prompt_format: Literal["plain", "chat_template"] = "plain"
    """`plain`: `<|user|>\\n{prompt}\\n<|assistant|>\\n{answer}<eos>` text; `chat_template`: the tokenizer's template."""
    kvr: KVRConfig = field(default_factory=KVRConfig)
    """Generator settings of the `kvr` dataset (also used when kvr is replayed)."""
    mix: MixConfig = field(default_factory=MixConfig)
    """REMIX generic / random-word mixing."""
    replay: list[ReplayConfig] = field(default_factory=list)
    """Earlier stages' datasets replayed into this stage, each at its own ratio."""
    replay_placement: Literal["schedule", "interleave"] = "schedule"
    """Where replay rows go in an epoch: `schedule`: as every other kind (data.mix.schedule); `interleave` (replay as published): one replay row after every round(1 / total replay ratio) stage rows, at fixed positions of each epoch's order (needs data.mix.schedule=pooled)."""
    pad_to_multiple_of: int = 1
    """Round a packed micro-batch's row length up to a multiple of this (8 helps tensor cores)."""
    reference_compat: bool = False
    """Reference quirks: one shuffle order for all epochs; no packing, rows padded to max_seq_len, pads trained to EOS."""
    require_filtered: bool = False
    """Require data.dataset to be a `remix-ds filter-known` output (DIR/unknown/NAME.jsonl listed in DIR/filter_known.json)."""

    def __post_init__(self):
        super().validate("data")
        if self.max_seq_len < 8:
            raise ConfigError(f"data.max_seq_len must be >= 8, got {self.max_seq_len}")
        if self.pad_to_multiple_of < 1:
            raise ConfigError(f"data.pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        open_, close = self.key_span_delimiters
        if not open_ or not close or open_ == close:
            raise ConfigError("data.key_span_delimiters must be two different non-empty strings")
        if not 0.0 <= self.surprise_threshold <= 1.0:
            raise ConfigError(f"data.surprise_threshold must be in [0, 1], got {self.surprise_threshold}")
        self.kvr.validate("data.kvr")
        self.mix.validate("data.mix")
        if self.reference_compat and self.mix.redraw != "stage":
            raise ConfigError(f"data.mix.redraw={self.mix.redraw} needs data.reference_compat=false "
                              "(the reference draws its mixing rows once per stage)")
        if self.require_filtered:
            check_filtered(self.dataset, "data.dataset")
        for i, r in enumerate(self.replay):
            r.validate(f"data.replay[{i}]")
        if self.replay_placement not in ("schedule", "interleave"):
            raise ConfigError(f"data.replay_placement must be 'schedule' or 'interleave', got {self.replay_placement!r}")
        published = self.replay_placement == "interleave" or any(r.draw == "once" for r in self.replay)
        if published and self.mix.schedule != "pooled":
            raise ConfigError("data.replay_placement=interleave and data.replay[].draw=once order the epoch themselves; "
                              "use data.mix.schedule=pooled")

    def source(self) -> SourceConfig:
        """The stage dataset as a plain SourceConfig (what the registry loads)."""
        return _source_of(self)
