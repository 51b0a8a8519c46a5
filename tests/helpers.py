"""Shared test helpers (plain functions, no fixtures; the fixtures live in conftest.py).

- `REPO`, `free_port`, `deepspeed_cmd`, `run_cmd`: launch commands and the real `deepspeed`
  launcher in subprocesses (CPU ranks use gloo).
- `sp_tokenizer()`, `bpe_tokenizer()`, `tokenizers()`: two real tokenizers trained locally in < 1 s:
  a sentencepiece BPE model converted to a Hugging Face `LlamaTokenizer` (adds BOS, `▁` dummy
  prefix), as the built-in `tiny` model uses, and a byte-level BPE `tokenizers` model (GPT-2
  style, no BOS) wrapped in `PreTrainedTokenizerFast`. Both are cached per process (training
  is deterministic).
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ---- subprocesses -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_cmd(target: list[str], num_ranks: int = 2, module: bool = False) -> list[str]:
    """`deepspeed --num_gpus N [--module] target...` on a free port (CPU ranks use gloo)."""
    launcher = str(Path(sys.executable).with_name("deepspeed"))
    cmd = [launcher, "--num_gpus", str(num_ranks), "--master_port", str(free_port())]
    if module:
        cmd.append("--module")
    return cmd + target


def run_cmd(cmd: list[str], timeout: float = 600, env: dict | None = None, check: bool = True, cwd=None):
    """Run a command, print its output on failure, return the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or REPO)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


# ---- locally trained tokenizers ---------------------------------------------------------------
WORDS = (
    "the of and to in is was for on that with as by at from his her are were which this be or an had "
    "capital city river country born died music film actor singer paris france london england value key "
    "answer question complete following partial passage user assistant system code math number one two three"
).split()


def training_text(n: int = 3000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    alnum = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    lines = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS, size=rng.integers(4, 15)))
        code = "".join(alnum[rng.integers(0, len(alnum), 8)])
        lines.append(f"<|user|>\nThe value of key {code} is?\n<|assistant|>\n{words}. {code} 12345, 6789!")
    return lines


@functools.lru_cache(maxsize=None)
def sp_tokenizer():
    import sentencepiece as spm
    from transformers import AutoTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_writer=buf, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2,
    )
    d = Path(tempfile.mkdtemp(prefix="remix-sp-"))
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    }))
    return AutoTokenizer.from_pretrained(d)


@functools.lru_cache(maxsize=None)
def bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(training_text(), vocab_size=600, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")


def llama3_style(bpe_tok):
    """The byte-level BPE with a Llama-3 pre-tokenizer (Split regex, then ByteLevel without its regex)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from remix_ds.data.word_cache import LLAMA3_PATTERN

    spec = json.loads(bpe_tok.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tokenizers():
    return {"sentencepiece": sp_tokenizer(), "bytelevel_bpe": bpe_tokenizer()}


# ---- Weights & Biases offline runs ------------------------------------------------------------
def wandb_offline_run(run_dir: Path, timeout: float = 60.0) -> dict:
    """What an offline W&B run under `run_dir/wandb/offline-run-*` recorded: {"group", "name", "job_type",
    "tags", "config", "summary", "history"} read from its `run-*.wandb` file (the LevelDB-style log of
    protobuf records wandb writes: 7-byte file header, 32 KiB blocks, 7-byte record headers). wandb's
    service process writes the file after `finish()` returns, so this waits for the run's exit record."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        out = _read_wandb_run(run_dir)
        if out["exited"] or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_wandb_run(run_dir: Path) -> dict:
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline run under {run_dir}/wandb, found {files}"
    buf, pos, records, part = files[0].read_bytes(), 7, [], b""
    while pos + 7 <= len(buf):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", buf[pos:pos + 7])
        data, pos = buf[pos + 7:pos + 7 + length], pos + 7 + length
        if (kind == 0 and length == 0) or len(data) < length:  # end, or a record still being written
            break
        part = data if kind in (1, 2) else part + data
        if kind in (1, 4):
            records.append(part)
    out = {"config": {}, "summary": {}, "history": [], "exited": False}
    key = lambda item: item.key or ".".join(item.nested_key)  # noqa: E731
    for data in records:
        r = pb.Record()
        r.ParseFromString(data)
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(group=r.run.run_group, name=r.run.display_name, job_type=r.run.job_type, tags=list(r.run.tags))
            out["config"].update({key(i): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "exit":
            out["exited"] = True
    return out


# The run config of the small test grids (tests/test_experiments_grid.py, test_slurm.py, test_experiments_seeds.py).
GRID_RUN = {
    "model": {"name_or_path": "tiny"},
    "optim": {"lr": 3.0e-3, "warmup_ratio": 0.05, "min_lr_ratio": 0.1},
    "train": {"global_batch_size": 8, "micro_batch_size": 8, "log_every": 5, "progress_bar": False,
              "tensorboard": False, "keep_last": 1},
    "data": {"max_seq_len": 256},
    "eval": {"mode": "fused"},
}


class CountingTokenizer:
    """A tokenizer whose batched calls are counted: `calls` holds the batch size of each call."""

    def __init__(self, inner, calls: list):
        self.inner, self.calls = inner, calls

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, texts, **kw):
        self.calls.append(len(texts))
        return self.inner(texts, **kw)
