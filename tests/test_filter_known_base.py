"""filter-known on a *base-like* model: it answers the facts it knows and runs on past them without EOS.

The tiny model is trained in-process on half of a KVR set with every answer followed by more text
(`VALUE\\nnext ...`), so greedy decoding never stops at the answer, as a base model does. Scored
without a cut, every fact looks unknown; cut at the first newline (the default), the trained facts
are known and the rest are yet to learn.
"""

import argparse
import dataclasses
import json

import pytest
import torch

from remix_ds.baselines.filter_known import add_filter_known_command

KVR = ["--set", "data.kvr.num_pairs=16", "--set", "data.kvr.seed=3"]


@pytest.fixture(scope="module")
def runs_on(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from remix_ds.data.config import KVRConfig
    from remix_ds.data.datasets import generate_kvr
    from remix_ds.data.packing import pack
    from remix_ds.data.tokenize import tokenize_examples
    from remix_ds.engine.loss import token_loss_sum
    from remix_ds.models import load_tokenizer, tiny_model_dir

    tok = load_tokenizer()
    examples = generate_kvr(KVRConfig(num_pairs=16, seed=3))
    trained = [dataclasses.replace(e, answer=f"{e.answer}\nnext key") for e in examples[::2]]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32, attn_implementation="sdpa")
    batch = pack(tokenize_examples(trained, tok, mode="answer").examples, 512, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        loss = token_loss_sum(model, batch, "sdpa") / batch["num_supervised"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("runs_on")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, examples


def _run(argv):
    parser = argparse.ArgumentParser()
    add_filter_known_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def _scores(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cut_at_newline_finds_the_known_facts(runs_on, tmp_path):
    folder, examples = runs_on
    trained = {e.id for e in examples[::2]}
    out = tmp_path / "cut"
    assert _run(["filter-known", str(folder), "--data", "kvr", "--out", str(out), *KVR]) == 0
    known, unknown = _ids(out / "known" / "kvr.jsonl"), _ids(out / "unknown" / "kvr.jsonl")
    assert len(known) >= 6 and set(known) <= trained  # learned facts are recognized ...
    assert set(unknown) >= {e.id for e in examples[1::2]}  # ... and unseen ones are yet to learn
    m = json.loads((out / "filter_known.json").read_text())
    assert m["mode"] == "generate" and m["stop_strings"] == ["\n"] and m["max_new_tokens"] == 20
    rows = _scores(out / "scores" / "kvr.jsonl")
    assert all("\n" not in r["prediction"] for r in rows)


def test_without_the_cut_a_run_on_model_knows_nothing(runs_on, tmp_path):
    folder, examples = runs_on
    out = tmp_path / "nocut"
    assert _run(["filter-known", str(folder), "--data", "kvr", "--out", str(out), "--stop", "", *KVR]) == 0
    assert _ids(out / "known" / "kvr.jsonl") == []  # the old behaviour: every answer "wrong"
    assert len(_ids(out / "unknown" / "kvr.jsonl")) == 16
    preds = [r["prediction"] for r in _scores(out / "scores" / "kvr.jsonl")]
    by_id = {e.id: e.answer for e in examples}
    ran_on = [r for r in _scores(out / "scores" / "kvr.jsonl") if r["prediction"].startswith(by_id[r["id"]] + "\n")]
    assert len(ran_on) >= 6, preds[:4]


def test_split_is_recorded_in_the_prepare_data_manifest(runs_on, tmp_path):
    from remix_ds.data.config import KVRConfig
    from remix_ds.data.datasets import generate_kvr
    from remix_ds.data.prepare import read_manifest, sha256_file, write_manifest
    from remix_ds.experiments import datasets as exp_datasets
    from remix_ds.experiments.config import DatasetSpec

    folder, _ = runs_on
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"key": e.prompt.split("key ")[1].split(" is")[0], "value": e.answer} for e in generate_kvr(KVRConfig(num_pairs=16, seed=3))]
    (data / "kvr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_manifest(data, {"sets": {"kvr": {"file": "kvr.jsonl", "sha256": sha256_file(data / "kvr.jsonl")}}, "generic": {}})
    out = data / "filtered" / "tiny"
    assert _run(["filter-known", str(folder), "--data", f"kvr={data / 'kvr.jsonl'}", "--out", str(out)]) == 0
    f = read_manifest(data)["sets"]["kvr"]["filtered"]
    assert f["scored"] == 16 and f["known"] + f["unknown"] == 16 and f["known"] >= 6
    assert f["files"]["unknown"] == "filtered/tiny/unknown/kvr.jsonl"
    assert f["sha256"] == sha256_file(data / f["files"]["unknown"])
    assert len((data / f["files"]["unknown"]).read_text().splitlines()) == f["unknown"]
    spec = exp_datasets.resolve_spec(DatasetSpec(name="facts", dataset="kvr"), str(data), stage_a=True, require_filtered=True)
    assert spec.dataset == "kvr"  # kvr is generated: left alone
    m = read_manifest(data)  # a source-drawn D_A with a recorded split trains on its yet-to-learn file
    m["sets"]["popqa"] = {**m["sets"]["kvr"], "file": "kvr.jsonl"}
    write_manifest(data, m)
    spec = exp_datasets.resolve_spec(DatasetSpec(name="popqa", dataset="popqa"), str(data), stage_a=True, require_filtered=True)
    assert spec.dataset == str(data / "filtered/tiny/unknown/kvr.jsonl") and spec.data_files is None
    spec_b = exp_datasets.resolve_spec(DatasetSpec(name="popqa", dataset="popqa"), str(data), stage_a=False, require_filtered=False)
    assert spec_b.data_files == str(data / "kvr.jsonl")  # as D_B: the prepared (unfiltered) file


def test_few_shot_block_for_qa_prompts():
    from remix_ds.baselines.filter_known import few_shot_prefix
    from remix_ds.data import formats
    from remix_ds.data.records import Example

    shots = [Example(id="a", source="popqa", prompt=formats.qa_prompt("Capital of France?"), answer="Paris"),
             Example(id="b", source="kvr", prompt=formats.kvr_prompt("ABC"), answer="XYZ")]
    assert few_shot_prefix(shots) == "Capital of France?\nThe answer is: Paris\n\nThe value of key ABC is?\nXYZ\n\n"
