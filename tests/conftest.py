"""Shared test fixtures, one of each, session-scoped: the tiny model and tokenizers, the deepspeed launcher.

Plain helper functions (`REPO`, `run_cmd`, `deepspeed_cmd`, the locally trained tokenizers) live
in tests/helpers.py; test files import them from there, never from this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# DeepSpeed JIT-builds its CPU ops into TORCH_EXTENSIONS_DIR (default: one folder per user). Several
# checkouts with their own venvs then rebuild the same op in turn and wait on each other's lock for
# minutes (and a killed build leaves the lock behind): each venv builds into its own folder.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
sys.path.insert(0, str(Path(__file__).parent / "scripts"))  # eval_tiny: the cached KVR-trained tiny model

from helpers import bpe_tokenizer, deepspeed_cmd, run_cmd, sp_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def run_deepspeed():
    """run_deepspeed(target_args, num_ranks=2, module=False, **kw) -> CompletedProcess."""

    def _run(target: list[str], num_ranks: int = 2, module: bool = False, **kw):
        return run_cmd(deepspeed_cmd(target, num_ranks, module), **kw)

    return _run


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The built-in `tiny` model's tokenizer (sentencepiece, pad = EOS)."""
    from remix_ds import models

    return models.load_tokenizer("tiny")


@pytest.fixture(scope="session")
def tiny_model():
    """The built-in `tiny` Llama in fp32 with sdpa attention, untrained (shared: tests that change it restore it)."""
    import torch

    from remix_ds import models
    from remix_ds.config import ModelConfig

    return models.load_model(ModelConfig(), torch.float32, "sdpa")


@pytest.fixture(scope="session")
def trained_tiny():
    """(model in eval mode, tokenizer, folder): the tiny model trained on KVR until it recalls some pairs."""
    import torch
    from eval_tiny import trained_model_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    d = trained_model_dir()
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(d), d


@pytest.fixture(scope="session")
def sp_tok():
    """A sentencepiece BPE tokenizer trained locally (helpers.sp_tokenizer)."""
    return sp_tokenizer()


@pytest.fixture(scope="session")
def bpe_tok():
    """A byte-level BPE tokenizer trained locally (helpers.bpe_tokenizer)."""
    return bpe_tokenizer()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node Slurm cluster (tests/slurm_cluster.py), SLURM_CONF set while it runs; skips with the reason
    when slurm/munge are not installed or we are not root. Opt-in: only tests that take it start it."""
    import slurm_cluster as sc

    reason = sc.skip_reason()
    if reason:
        pytest.skip(reason)
    with sc.running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def shard_corpus(tmp_path_factory, bpe_tok):
    """A small shard directory of 60 generated documents (100-160 words each), built once per session."""
    import numpy as np

    from helpers import WORDS
    from remix_ds.data.shard_builder import tokenize_to_shards

    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(100, 160))) + "." for _ in range(60)]
    out = tmp_path_factory.mktemp("corpus") / "shards"
    tokenize_to_shards(texts, out, bpe_tok, progress=False)
    return str(out)
