"""A tiny Llama trained on a few dozen KVR pairs until it recalls some but not all of them.

Shared by the evaluator tests and the 2-rank ZeRO-3 script: trained once with a plain torch
loop (deterministic on CPU), saved as a Hugging Face folder under the remix-ds cache, then loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from remix_ds.data.config import KVRConfig
from remix_ds.data.datasets import generate_kvr
from remix_ds.data.tokenize import tokenize_examples
from remix_ds.cachedir import build_once, cache_root
from remix_ds.models import load_tokenizer

VERSION = 1
KVR = KVRConfig(num_pairs=40, key_len=4, value_len=3, seed=3)


def kvr_examples():
    return generate_kvr(KVR)


def _train(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer("tiny")
    data = tokenize_examples(kvr_examples(), tok, mode="answer").examples
    width = max(len(t) for t in data)
    # Right-padded full batch; pads carry no loss and no attention.
    ids = torch.full((len(data), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(data), width), -100, dtype=torch.long)
    mask = torch.zeros((len(data), width), dtype=torch.long)
    for i, t in enumerate(data):
        ids[i, : len(t)] = torch.from_numpy(t.input_ids.astype(np.int64))
        labels[i, : len(t)] = torch.from_numpy(t.labels.astype(np.int64))
        mask[i, : len(t)] = 1
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    answer = labels != -100
    for step in range(1, 2001):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
            ok = ((logits[:, :-1].argmax(-1) == ids[:, 1:]) | ~answer[:, 1:]).all(-1).float().mean().item()
            print(f"step {step} loss {loss.item():.3f} acc {ok:.2f}", flush=True)
            if 0.35 <= ok <= 0.65:
                break
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def trained_model_dir() -> Path:
    """Folder of the trained tiny model (trained on first use; safe if several processes race)."""
    return build_once(cache_root() / "tests" / f"eval-kvr-tiny-v{VERSION}", _train, marker="config.json")


def zero3_engine(model_dir):
    """(engine, tokenizer, hf_ds) for the probes: the model at `model_dir` under a ZeRO-3 engine
    (every parameter partitioned). Keep hf_ds alive: from_pretrained builds under zero.Init."""
    import deepspeed
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    ds = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "steps_per_print": 10**9,
    }
    hf_ds = HfDeepSpeedConfig(ds)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    engine.train()
    return engine, tok, hf_ds


if __name__ == "__main__":
    print(trained_model_dir())
