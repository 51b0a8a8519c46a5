"""Golden values of every mixing setting: the row ids of each optimizer step and the per-step losses
of the tiny model, held equal to `fixtures/golden_mixing.json` (recorded from the code before the
stage stream was restructured; regenerate only on purpose: `GOLDEN_WRITE=1 pytest tests/test_golden_mixing.py`).

Settings: data.mix.schedule pooled / stratified x data.mix.redraw stage / epoch / step, each with
generic (completion), random-word and replay rows; and published replay (interleave, shuffle).
Losses come from a plain in-process AdamW loop on CPU over the loader's steps (no engine): the
loader's batches are what the engine would train on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from remix_ds.data.config import DataConfig, KVRConfig, MixConfig, ReplayConfig
from remix_ds.data.loader import build_train_loader
from remix_ds.engine.loss import token_loss_sum

GOLDEN = Path(__file__).parent / "fixtures" / "golden_mixing.json"
SETTINGS = [f"{s}-{r}" for s in ("pooled", "stratified") for r in ("stage", "epoch", "step")]
SETTINGS += ["published-interleave", "published-shuffle-epoch"]
MICRO, ACCUM, EPOCHS, LOSS_STEPS = 4, 2, 2, 6


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory, tiny_tokenizer):
    """A shard corpus tokenized with the tiny model's tokenizer (40 documents of 40-70 words)."""
    from helpers import WORDS
    from remix_ds.data.shard_builder import tokenize_to_shards

    rng = np.random.default_rng(11)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(40, 70))) + "." for _ in range(40)]
    out = tmp_path_factory.mktemp("golden") / "shards"
    tokenize_to_shards(texts, out, tiny_tokenizer, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def old_facts(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden_replay") / "old.jsonl"
    path.write_text("".join(json.dumps({"id": f"old-{i}", "prompt": f"fact {i}?", "answer": f"A{i}"}) + "\n"
                            for i in range(12)))
    return str(path)


def data_cfg(setting: str, corpus: str, old: str) -> DataConfig:
    schedule, redraw = setting.split("-")[:2]
    if schedule == "published":
        schedule, redraw = "pooled", ("epoch" if setting.endswith("-epoch") else "stage")
    mix = MixConfig(generic_ratio=1.0, generic_corpus=corpus, generic_format="completion", prompt_words=8,
                    answer_words=8, random_ratio=0.5, raw_words=10, random_vocab_size=200, seed=3,
                    schedule=schedule, redraw=redraw)
    ratio = 0.125 if setting.startswith("published") else 0.25
    return DataConfig(kvr=KVRConfig(num_pairs=16), max_seq_len=256, mix=mix,
                      replay=[ReplayConfig(dataset=old, ratio=ratio)])


def train_loader(setting: str, cfg: DataConfig, tok):
    if setting.startswith("published"):  # a data option: replay rows drawn once per run (and interleaved)
        cfg.replay[0].draw = "once"
        if setting.split("-")[1] == "interleave":
            cfg.replay_placement = "interleave"
    return build_train_loader(cfg, tok, micro_batch_size=MICRO, rank=0, world_size=1, seed=7,
                              step_examples=MICRO * ACCUM)


def record(setting: str, tok, model, corpus: str, old: str) -> dict:
    cfg = data_cfg(setting, corpus, old)
    loader = train_loader(setting, cfg, tok)
    steps, digest = [], hashlib.sha256()
    for e in range(EPOCHS):
        for s in range(0, loader.batches_per_epoch, ACCUM):
            rows = [r for m in range(s, min(s + ACCUM, loader.batches_per_epoch)) for r in loader.rows_for(e, m)]
            steps.append([r.id for r in rows])
            for r in rows:
                digest.update(r.id.encode())
                digest.update(r.input_ids.tobytes())
                digest.update(r.labels.tobytes())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        m = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        losses = []
        for _ in range(LOSS_STEPS):
            step = loader.next_step(ACCUM)
            opt.zero_grad()
            total = sum(token_loss_sum(m, b, "sdpa") for b in step)
            loss = total / step.info["num_supervised"]
            loss.backward()
            opt.step()
            losses.append(float(loss))
    finally:
        torch.set_num_threads(threads)
    return {"steps": steps, "tokens": digest.hexdigest()[:16], "losses": losses, "stats": loader.stats}


@pytest.fixture(scope="module")
def golden():
    if os.environ.get("GOLDEN_WRITE"):
        return None
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("setting", SETTINGS)
def test_mixing_setting_matches_its_golden_rows_and_losses(setting, golden, tiny_tokenizer, tiny_model, tiny_corpus,
                                                          old_facts):
    got = record(setting, tiny_tokenizer, tiny_model, tiny_corpus, old_facts)
    kinds = {r.split("-")[0] for step in got["steps"] for r in step}
    assert {"generic", "random", "old"} <= kinds, kinds  # every kind of row is exercised
    if golden is None:
        data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        data[setting] = got
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    want = golden[setting]
    assert got["steps"] == want["steps"]
    assert got["tokens"] == want["tokens"]
    assert got["stats"] == want["stats"]
    # Same code and data give bit-identical losses on one machine; the tolerance covers other CPUs' kernels.
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5, abs=1e-6)
