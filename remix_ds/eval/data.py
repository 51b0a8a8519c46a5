"""Which examples an eval set holds, through the data registry (`remix_ds.data.datasets`).

A set spec is ``NAME`` or ``NAME:train`` / ``NAME:heldout`` (default: train, i.e. the examples a
stage memorized). ``NAME`` is a registered dataset or a local file. How it is loaded (data_files,
num_examples, heldout_size, subsample_seed) comes from, in order: the run's own stage dataset or
replay entry of that name, an ``eval.sources`` entry of that name, else the registry defaults.
So a stage-2 run scores stage 1's D_A by listing it in ``eval.sources`` with stage 1's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from remix_ds.data.config import DataConfig, SourceConfig
from remix_ds.data.datasets import load_examples
from remix_ds.data.fingerprint import data_fingerprint, source_params
from remix_ds.data.records import LOCAL_SUFFIXES, Example

SPLITS = ("train", "heldout")


@dataclass
class EvalSet:
    name: str
    """Label used in metric names and file names: the dataset name (a file's stem), `-heldout` appended for that split."""
    examples: list[Example]
    fingerprint: dict | None = None
    """`remix_ds.data.fingerprint.data_fingerprint` of `examples` (dataset, parameters, count, id hash)."""


def set_label(spec: str) -> str:
    name, split = parse_spec(spec)
    path = Path(name)
    base = path.stem if path.suffix.lower() in LOCAL_SUFFIXES else name
    return base + ("-heldout" if split == "heldout" else "")


def parse_spec(spec: str) -> tuple[str, str]:
    """``NAME[:split]`` -> (NAME, split). A Windows-style path keeps its colon."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SPLITS:
        return head, tail
    return spec, "train"


def source_for(name: str, sources: list[SourceConfig], data: DataConfig | None) -> SourceConfig:
    if data is not None:
        if data.dataset == name:
            return data.source()
        for r in data.replay:
            if r.dataset == name:
                return r.source()
    for s in sources:
        if s.dataset == name:
            return s
    return SourceConfig(dataset=name)


def load_eval_set(spec: str, cfg, data: DataConfig | None = None, n: int | None = None) -> EvalSet:
    """Examples of one set, the first ``n`` of them when n > 0 (the split is already shuffled).

    ``n`` defaults to ``cfg.n`` (``cfg``: an EvalConfig, for its ``sources``)."""
    name, split = parse_spec(spec)
    source = source_for(name, cfg.sources, data)
    kvr = data.kvr if data is not None else None
    examples = load_examples(source, kvr, split=split)
    n = cfg.n if n is None else n
    if n:
        examples = examples[:n]
    params = {**source_params(source, kvr, split), "n": n}
    return EvalSet(set_label(spec), examples, data_fingerprint(name, examples, params))


def load_eval_sets(cfg, data: DataConfig | None = None) -> list[EvalSet]:
    return [load_eval_set(spec, cfg, data) for spec in cfg.datasets]
