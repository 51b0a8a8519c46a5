"""Preservation check (minimal-change fine-tuning): how much did a stage change the model outside its data?

Measured on held-out generic passages (never trained, see `datasets.PRESERVE_SLOTS`) for a model
before and after a stage:

- `nll`: mean per-token NLL of each passage's first `preservation_tokens` tokens (raw text, BOS
  first); the change is after - before (positive: the stage made generic text less likely);
- `changed_frac`: fraction of greedy continuations (`max_new_tokens`, prompt = the passage's
  first `prompt_words` words in the completion format generic mixing trains) whose tokens differ;
- `eos_rate`: fraction of those continuations that end with EOS within the budget, and
  `task_eos_rate` the same on the stage's D_A prompts: an answer that never stops is the
  "cannot stop" failure (e.g. `key_spans` training never supervises EOS).

`measure` runs on one model (HF module, engine or ZeRO-3 partitioned: parameters are gathered
once with the evaluator's `eval_model`); `compare` turns two measurements into the deltas. Each
measurement records the `data_fingerprint` of its passages and task prompts, and `compare`
refuses two measurements of different sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from remix_ds.data.fingerprint import data_fingerprint, same_set, short
from remix_ds.data.formats import completion_prompt
from remix_ds.data.records import DataError, Example
from remix_ds.data.tokenize import pad_id
from remix_ds.eval.generate import generate_greedy
from remix_ds.eval.items import make_items
from remix_ds.eval.zero import eval_model


@dataclass
class Probe:
    """What `measure` scores: passages for NLL, completion prompts, and task (D_A) prompts."""

    texts: list[str]
    prompt_words: int
    max_tokens: int
    max_new_tokens: int
    task: list[Example]
    instruction: str = "Complete the following partial passage:"


def _passage_ids(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    return [ids[:max_tokens] for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


@torch.no_grad()
def passage_nll(model, ids: list[list[int]], pad_id: int, batch_size: int = 16) -> list[float]:
    """Mean per-token NLL of each token list (next-token prediction over positions 1..n-1)."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(ids), batch_size):
        chunk = ids[s : s + batch_size]
        width = max(len(x) for x in chunk)
        x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, t in enumerate(chunk):
            x[i, : len(t)] = torch.tensor(t)
            mask[i, : len(t)] = True
        logits = model(input_ids=x.to(device), use_cache=False).logits.float()  # (B, T, V), right padding
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None].to(device))[..., 0].cpu()  # (B, T-1)
        m = mask[:, 1:]
        out += ((-lp * m).sum(1) / m.sum(1).clamp(min=1)).tolist()
    return out


def measure(model, tokenizer, probe: Probe, prompt_format: str = "plain") -> dict:
    """Per-passage NLLs, greedy continuation tokens and whether each stopped with EOS."""
    pad = pad_id(tokenizer)
    prompts = [Example(id=f"preserve-{i}", source="generic", answer="-",
                       prompt=completion_prompt(t.split()[: probe.prompt_words], probe.instruction))
               for i, t in enumerate(probe.texts)]
    items = make_items(prompts, tokenizer, prompt_format)
    task_items = make_items(probe.task, tokenizer, prompt_format) if probe.task else []
    eos = [int(tokenizer.eos_token_id)]
    with eval_model(model) as m:
        nll = passage_nll(m, _passage_ids(tokenizer, probe.texts, probe.max_tokens), pad)
        gens = generate_greedy(m, tokenizer, items, 16, probe.max_new_tokens, eos_ids=eos)
        task = generate_greedy(m, tokenizer, task_items, 16, probe.max_new_tokens, eos_ids=eos) if task_items else []
    return {
        "nll": nll,
        "continuations": [g.token_ids for g in gens],
        "eos": [g.stop_reason == "eos" for g in gens],
        "task_eos": [g.stop_reason == "eos" for g in task],
        "passages_fingerprint": data_fingerprint("preserve-passages", prompts,
                                                 {"prompt_words": probe.prompt_words, "max_tokens": probe.max_tokens}),
        "task_fingerprint": data_fingerprint("preserve-task", probe.task),
    }


def _rate(flags) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def compare(before: dict, after: dict) -> dict:
    """Deltas of a stage: NLL change, changed continuations, EOS rates before/after.

    Both measurements must be of the same passages and task prompts (their fingerprints, where
    recorded, agree)."""
    for key in ("passages_fingerprint", "task_fingerprint"):
        a, b = before.get(key), after.get(key)
        if a and b and not same_set(a, b):
            raise DataError(f"preservation check: before and after measured different sets ({key}: "
                            f"{a['count']} vs {b['count']} examples, {short(a)} vs {short(b)})")
    nll_b, nll_a = float(np.mean(before["nll"])), float(np.mean(after["nll"]))
    changed = [a != b for a, b in zip(before["continuations"], after["continuations"])]
    return {
        "nll_before": nll_b,
        "nll_after": nll_a,
        "nll_change": nll_a - nll_b,
        "changed_frac": _rate(changed),
        "eos_rate_before": _rate(before["eos"]),
        "eos_rate_after": _rate(after["eos"]),
        "task_eos_rate_after": _rate(after["task_eos"]),
        **{k: after[k] for k in ("passages_fingerprint", "task_fingerprint") if k in after},
    }
