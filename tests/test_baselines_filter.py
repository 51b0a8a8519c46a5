"""`remix-ds filter-known` on a tiny model that learned half of a KVR set (single process, ~20 s)."""

import argparse
import json

import pytest
import torch

from remix_ds.baselines.filter_known import add_filter_known_command, few_shot_prefix, with_prefix
from remix_ds.configtools import ConfigError

KVR = ["--set", "data.kvr.num_pairs=16", "--set", "data.kvr.seed=3"]


@pytest.fixture(scope="module")
def half_trained(tmp_path_factory):
    """The tiny model after 60 full-batch AdamW steps on the even-indexed 8 of 16 KVR pairs."""
    from transformers import AutoModelForCausalLM

    from remix_ds.data.config import KVRConfig
    from remix_ds.data.datasets import generate_kvr
    from remix_ds.data.packing import pack
    from remix_ds.data.tokenize import tokenize_examples
    from remix_ds.engine.loss import token_loss_sum
    from remix_ds.models import load_tokenizer, tiny_model_dir

    tok = load_tokenizer()
    examples = generate_kvr(KVRConfig(num_pairs=16, seed=3))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32, attn_implementation="sdpa")
    batch = pack(tokenize_examples(examples[::2], tok, mode="answer").examples, 512, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = token_loss_sum(model, batch, "sdpa") / batch["num_supervised"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, model.eval(), tok, examples


def _run(argv):
    parser = argparse.ArgumentParser()
    add_filter_known_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_filter_known_splits_by_the_evaluators_verdicts(half_trained, tmp_path):
    from remix_ds.data.config import DataConfig, SourceConfig
    from remix_ds.data.datasets import load_examples
    from remix_ds.eval.config import EvalConfig
    from remix_ds.eval.runner import evaluate

    folder, model, tok, examples = half_trained
    out = tmp_path / "filtered"
    assert _run(["filter-known", str(folder), "--data", "kvr", "--out", str(out), "--mode", "fused", *KVR]) == 0
    verdicts = {r["id"]: r["correct"] for r in evaluate(model, tok, examples, EvalConfig(mode="fused")).rows}
    known, unknown = _ids(out / "known" / "kvr.jsonl"), _ids(out / "unknown" / "kvr.jsonl")
    assert known == [e.id for e in examples if verdicts[e.id]]
    assert unknown == [e.id for e in examples if not verdicts[e.id]]
    # the model learned (some of) the trained half and none of the other half
    assert 0 < len(known) <= 8 and set(known) <= {e.id for e in examples[::2]}
    manifest = json.loads((out / "filter_known.json").read_text())
    assert manifest["datasets"]["kvr"]["n"] == 16
    assert manifest["datasets"]["kvr"]["known"] == len(known) and manifest["datasets"]["kvr"]["unknown"] == len(unknown)
    scores = [json.loads(line) for line in (out / "scores" / "kvr.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in scores] == [verdicts[e.id] for e in examples]
    # the "yet to learn" file is a dataset a run can require
    path = str(out / "unknown" / "kvr.jsonl")
    loaded = load_examples(SourceConfig(dataset=path, subsample_seed=None))
    by_id = {e.id: e for e in examples}
    assert [(e.prompt, e.answer) for e in loaded] == [(by_id[i].prompt, by_id[i].answer) for i in unknown]
    # one fingerprint for "the same set" everywhere: the scored set, and the output file read back as data
    from remix_ds.data.fingerprint import data_fingerprint, same_set

    entry = manifest["datasets"]["kvr"]
    assert same_set(entry["data_fingerprint"], data_fingerprint("kvr", examples))
    assert same_set(entry["unknown_fingerprint"], data_fingerprint(path, loaded))
    assert not same_set(entry["known_fingerprint"], entry["unknown_fingerprint"])
    assert json.loads((out / "scores" / "kvr.metrics.json").read_text())["data_fingerprint"] == entry["data_fingerprint"]
    assert DataConfig(dataset=path, require_filtered=True).require_filtered
    with pytest.raises(ConfigError, match="not a filter-known output"):
        DataConfig(dataset="kvr", require_filtered=True)
    with pytest.raises(ConfigError, match="not a filter-known output"):
        DataConfig(dataset=str(out / "known" / "kvr.jsonl"), require_filtered=True)


def test_few_shot_prompt_scores_the_rest_and_excludes_the_shots(half_trained, tmp_path):
    from remix_ds.eval.config import EvalConfig
    from remix_ds.eval.runner import evaluate

    folder, model, tok, examples = half_trained
    out = tmp_path / "fewshot"
    _run(["filter-known", str(folder), "--data", "kvr", "--out", str(out), "--few-shot", "2", "--mode", "fused", *KVR])
    shots, rest = examples[:2], examples[2:]
    prompted = with_prefix(rest, few_shot_prefix(shots))
    assert prompted[0].prompt.startswith(f"{shots[0].prompt}\n{shots[0].answer}\n\n{shots[1].prompt}\n")
    verdicts = [r["correct"] for r in evaluate(model, tok, prompted, EvalConfig(mode="fused")).rows]
    known, unknown = _ids(out / "known" / "kvr.jsonl"), _ids(out / "unknown" / "kvr.jsonl")
    assert known == [e.id for e, v in zip(rest, verdicts) if v]
    assert unknown == [e.id for e, v in zip(rest, verdicts) if not v]
    m = json.loads((out / "filter_known.json").read_text())["datasets"]["kvr"]
    assert m["n"] == 14 and m["few_shot_ids"] == [e.id for e in shots] and m["known"] + m["unknown"] == 14
    # written rows keep the original prompt (the shots are only for scoring)
    first = json.loads((out / "unknown" / "kvr.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == next(e.prompt for e in rest if e.id == first["id"])
