"""Task-family loaders (forgetting/tasks.py) on rows shaped like each hub source (only
datasets.load_dataset is replaced), and the paper / toy study configs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from remix_ds.configtools import ConfigError
from remix_ds.data.datasets import load_examples
from remix_ds.data.records import DataError
from remix_ds.forgetting.config import load_forgetting_config
from remix_ds.forgetting.tasks import as_source, prepare_tasks, task_file, task_steps

# Rows as the dataset cards describe them (databricks/databricks-dolly-15k, allenai/tulu-v2-sft-mixture,
# sordonia/flan-10k-flat): the same columns, nesting and types.
HUB = {
    "databricks/databricks-dolly-15k": [
        {"instruction": "Give me three uses of a brick.", "context": "", "response": "Wall, doorstop, paperweight.",
         "category": "brainstorming"},
        {"instruction": "Who wrote it?", "context": "Dune is a novel by Frank Herbert.", "response": "Frank Herbert",
         "category": "closed_qa"},
        {"instruction": "Ideas for a rainy day?", "context": "", "response": "Read, bake, nap.",
         "category": "brainstorming"},
    ],
    "allenai/tulu-v2-sft-mixture": [
        {"dataset": "oasst1", "id": "oasst1_7", "messages": [{"role": "user", "content": "Hi"},
                                                            {"role": "assistant", "content": "Hello!"}]},
        {"dataset": "lima", "id": "lima_1", "messages": [{"role": "user", "content": "Why?"},
                                                        {"role": "assistant", "content": "Because."}]},
    ],
    "sordonia/flan-10k-flat": [
        {"source": "Premise: A. Hypothesis: B. Entailed?", "target": "yes", "task_name": "anli_r1:0.2.0",
         "task_source": "Flan2021", "template_type": "zs_opt", "template_idx": 0},
        {"source": "Summarize: long email", "target": "short", "task_name": "aeslc:1.0.0",
         "task_source": "Flan2021", "template_type": "zs_noopt", "template_idx": 3},
        {"source": "Premise: C. Hypothesis: D. Entailed?", "target": "no", "task_name": "anli_r1:0.2.0",
         "task_source": "Flan2021", "template_type": "fs_opt", "template_idx": 1},
    ],
}


@pytest.fixture
def hub(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split=None, streaming=False, **kw):
        assert streaming and split == "train"
        calls.append(path)
        return iter(json.loads(json.dumps(HUB[path])))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def study(tmp_path, tasks: str, *extra):
    return load_forgetting_config(None, [f"output_dir={tmp_path / 'study'}", f"tasks={tasks}", *extra])


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_family_materializes_its_subset_once_in_source_order(tmp_path, hub):
    cfg = study(tmp_path, "[{family: dolly, subset: brainstorming}, {family: tulu, subset: oasst1},"
                          " {family: flan, subset: anli_r1}, {name: anli-one, family: flan, subset: anli_r1_10templates,"
                          " num_examples: 1}]")
    assert cfg.task_names() == ["dolly-brainstorming", "tulu-oasst1", "flan-anli_r1", "anli-one"]
    prepare_tasks(cfg, log=lambda *a: None)
    assert sorted(hub) == ["allenai/tulu-v2-sft-mixture", "databricks/databricks-dolly-15k", "sordonia/flan-10k-flat"]
    out = tmp_path / "study"
    assert read(task_file(out, cfg.tasks[0])) == [
        {"id": "dolly-brainstorming-0", "prompt": "Give me three uses of a brick.", "answer": "Wall, doorstop, paperweight."},
        {"id": "dolly-brainstorming-1", "prompt": "Ideas for a rainy day?", "answer": "Read, bake, nap."}]
    assert read(task_file(out, cfg.tasks[1])) == [{"id": "oasst1_7", "messages": HUB["allenai/tulu-v2-sft-mixture"][0]["messages"]}]
    flan = read(task_file(out, cfg.tasks[2]))
    assert [r["answer"] for r in flan] == ["yes", "no"] and flan[0]["prompt"].startswith("Premise: A.")
    assert read(task_file(out, cfg.tasks[3])) == flan[:1]  # num_examples 1: the first row only
    # The files load like any dataset (through as_source), with the task's own num_examples.
    ex = load_examples(as_source(cfg.tasks[0], out), None, "train")
    assert sorted(e.answer for e in ex) == ["Read, bake, nap.", "Wall, doorstop, paperweight."]
    assert load_examples(as_source(cfg.tasks[1], out), None, "train")[0].messages[1]["content"] == "Hello!"
    prepare_tasks(cfg, log=lambda *a: None)
    assert len(hub) == 3  # written once: a second call streams nothing


def test_local_file_fallback_and_errors_name_the_key(tmp_path, hub):
    local = tmp_path / "dolly.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in HUB["databricks/databricks-dolly-15k"]))
    cfg = study(tmp_path, f"[{{family: dolly, subset: closed_qa, data_files: {local}}}]")
    prepare_tasks(cfg, log=lambda *a: None)
    assert hub == []  # read from the local copy, no hub call
    assert read(task_file(tmp_path / "study", cfg.tasks[0]))[0]["prompt"] == "Who wrote it?\n\nDune is a novel by Frank Herbert."
    bad = study(tmp_path, "[{family: dolly, subset: brainstorming}, {family: dolly, subset: poetry}]")
    with pytest.raises(DataError, match=r"tasks\[1\].subset='poetry'.*seen: brainstorming, closed_qa"):
        prepare_tasks(bad, log=lambda *a: None)
    with pytest.raises(ConfigError, match="family and subset go together"):
        study(tmp_path, "[{family: tulu}]")


def test_paper_and_toy_study_configs(tmp_path):
    paper = load_forgetting_config("configs/forgetting/paper.yaml")
    names = paper.task_names()
    assert len(names) == 85 and sum(n.startswith("flan-") for n in names) == 66
    assert sum(n.startswith("tulu-") for n in names) == 11 and sum(n.startswith("dolly-") for n in names) == 8
    m, f = paper.measure, paper.finetune
    assert (m.steps, m.lr, m.max_epochs, m.at_fractions) == (1000, 2e-6, 3.0, [])
    assert (f.train.global_batch_size, f.data.max_seq_len, f.optim.lr) == (8, 1024, 2e-6)
    assert round(f.optim.warmup_ratio * m.steps) == 10
    for world in (1, 2):
        f.validate(world)
    rc = paper.replay
    assert rc.arm_steps(m.steps) == 1031 and not rc.legacy() and "online" in rc.arms
    assert len(rc.heldout_tasks) == 20 and set(rc.heldout_tasks) <= set(names)
    assert paper.upstream.window_tokens == 1024 and paper.upstream.num_examples > rc.heldout_size
    assert len(paper.predict.seeds) == 10 and paper.predict.revealed == 30
    from remix_ds.forgetting.splits import named_splits

    splits = {s.name: s for s in named_splits(names, paper.predict.splits)}
    assert {k: len(s.test) for k, s in splits.items()} == {"in_domain": 20, "tulu": 11, "dolly": 8}
    assert sorted(names[i] for i in splits["in_domain"].test) == sorted(rc.heldout_tasks)
    assert all(len(s.train) == 46 and all(names[i].startswith("flan-") for i in s.train) for s in splits.values())
    toy = load_forgetting_config("configs/forgetting/toy.yaml")
    assert toy.task_names() == ["kvr-a", "kvr-b", "kvr-c"] and toy.replay.heldout_size < toy.upstream.num_examples


def test_step_cap_at_max_epochs(tmp_path):
    rows = tmp_path / "t.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(10)))
    cfg = study(tmp_path, f"[{{dataset: {rows}}}]", "measure.max_epochs=3", "measure.at_fractions=[]",
                "finetune.train.global_batch_size=8")
    assert task_steps(cfg, cfg.tasks[0], None) == 4  # ceil(3 x 10 / 8) < measure.steps 1000
    uncapped = study(tmp_path, f"[{{dataset: {rows}}}]")
    assert task_steps(uncapped, uncapped.tasks[0], None) == 1000
    with pytest.raises(ConfigError, match="measure.max_epochs with measure.at_fractions"):
        study(tmp_path, f"[{{dataset: {rows}}}]", "measure.max_epochs=3")
    assert np.isfinite(cfg.measure.max_epochs)


def test_upstream_tulu_heldout_sample(tmp_path, hub, tiny_tokenizer):
    from remix_ds.forgetting.upstream import load_upstream
    from remix_ds.forgetting.tasks import family_sample

    rows = family_sample("tulu", per_subset=1)
    assert [(e.id, e.source) for e in rows] == [("lima_1", "tulu:lima"), ("oasst1_7", "tulu:oasst1")]
    with pytest.raises(DataError, match="skip_per_subset=1"):
        family_sample("tulu", per_subset=5, skip=1)
    cfg = load_forgetting_config(None, ["upstream.kind=examples", "upstream.family=tulu", "upstream.num_examples=2"])
    up = load_upstream(cfg.upstream, tiny_tokenizer, cfg.finetune.data)
    assert up.ids == ["lima_1", "oasst1_7"]
    # The counted tokens are the assistant's reply + EOS, as the evaluator's answer_nll counts them.
    assert tiny_tokenizer.decode(up.items[1].answer_ids[:-1]).strip() == "Hello!"
    assert int(up.items[1].answer_ids[-1]) == tiny_tokenizer.eos_token_id
