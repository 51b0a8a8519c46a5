"""Issue 16, item 1: marked data end to end (markers stripped; the span metric)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from eval_tiny import kvr_examples  # noqa: E402

from remix_ds.data.records import DataError, Example  # noqa: E402
from remix_ds.data.tokenize import encode_prompt_answer, strip_markers, tokenize_examples  # noqa: E402
from remix_ds.eval.config import EvalConfig  # noqa: E402
from remix_ds.eval.items import make_items  # noqa: E402
from remix_ds.eval.runner import evaluate  # noqa: E402


def _marked(ex: Example, i: int) -> Example:
    """Mark the answer's tail (from its 2nd character) or the whole answer, and a prompt word."""
    a = ex.answer
    answer = f"{a[0]}[[{a[1:]}]]" if i % 2 else f"[[{a}]]"
    return replace(ex, prompt=ex.prompt.replace("key ", "key [[", 1).replace(" is?", "]] is?"), answer=answer)


def test_strip_markers():
    assert strip_markers("founded by [[Alra Finch]].") == "founded by Alra Finch."
    assert strip_markers("no markers") == "no markers"
    with pytest.raises(DataError, match="never closed"):
        strip_markers("a [[b", where="x.jsonl:3")


def test_marked_ids_equal_key_spans_training_ids(tiny_tokenizer):
    exs = [_marked(e, i) for i, e in enumerate(kvr_examples()[:6])]
    for ex, pa, t in zip(exs, encode_prompt_answer(exs, tiny_tokenizer, key_span_delimiters=("[[", "]]")),
                         tokenize_examples(exs, tiny_tokenizer, mode="key_spans").examples):
        assert (list(pa.prompt_ids) + list(pa.answer_ids)) == list(t.input_ids)
        supervised = [j - len(pa.prompt_ids) for j in range(len(t.labels)) if t.labels[j] != -100]
        assert min(supervised) < 0  # the marked prompt word is trained too, but is not an answer span
        supervised = [j for j in supervised if j >= 0]
        assert supervised == [j for a, b in pa.spans for j in range(a, b)]
        assert pa.spans and pa.spans[-1][1] == len(pa.answer_ids) - 1  # the span ends before EOS


@pytest.mark.parametrize("mode", ["fused", "generate"])
def test_marked_gold_is_scored_without_markers(trained_tiny, mode):
    model, tok, _ = trained_tiny
    plain = kvr_examples()[:16]
    marked = [_marked(e, i) for i, e in enumerate(plain)]
    cfg = EvalConfig(mode=mode, max_new_tokens=8)
    a, b = evaluate(model, tok, plain, cfg), evaluate(model, tok, marked, cfg)
    assert [r["gold"] for r in b.rows] == [e.answer for e in plain]
    assert [r["prompt"] for r in b.rows] == [e.prompt for e in plain]
    assert [r["correct"] for r in b.rows] == [r["correct"] for r in a.rows]
    assert [r["prediction"] for r in b.rows] == [r["prediction"] for r in a.rows]
    assert 0 < a.metrics["em"] < 1  # the set has both verdicts, so equality above means something
    assert b.metrics["em"] == a.metrics["em"]
    assert "span_acc" not in a.metrics and b.metrics["n_spans"] == 16


def test_span_metric_equals_generation(trained_tiny):
    model, tok, _ = trained_tiny
    marked = [_marked(e, i) for i, e in enumerate(kvr_examples())]
    res = evaluate(model, tok, marked, EvalConfig(mode="fused"))
    items = make_items(marked, tok, key_span_delimiters=("[[", "]]"))
    verdicts, nlls = [], []
    for it, row in zip(items, res.rows):
        assert len(row["span_correct"]) == len(it.spans) == 1
        for (a, b), got in zip(it.spans, row["span_correct"]):
            ctx = torch.tensor([list(it.prompt_ids) + list(it.answer_ids[:a])])
            with torch.no_grad():
                out = model.generate(ctx, attention_mask=torch.ones_like(ctx), max_new_tokens=b - a, do_sample=False,
                                     min_new_tokens=b - a, pad_token_id=tok.eos_token_id)
                logp = torch.log_softmax(model(torch.cat([ctx, torch.tensor([list(it.answer_ids[a:b])])], 1)).logits[0], -1)
            want = out[0, ctx.shape[1]:].tolist() == list(it.answer_ids[a:b])
            assert got == want, (it.id, a, b)
            verdicts.append(want)
            pos = range(ctx.shape[1] - 1, ctx.shape[1] - 1 + b - a)
            nll = -sum(float(logp[p, int(it.answer_ids[a + k])]) for k, p in enumerate(pos)) / (b - a)
            assert row["span_nll"][0] == pytest.approx(nll, abs=1e-4)
            nlls.append(nll)
    assert 0 < sum(verdicts) < len(verdicts)
    assert res.metrics["span_acc"] == pytest.approx(sum(verdicts) / len(verdicts))
    assert res.metrics["span_nll"] == pytest.approx(sum(nlls) / len(nlls), abs=1e-4)


def test_grid_materialize_keeps_marked_data(tmp_path):
    import json

    from remix_ds.data.config import DataConfig
    from remix_ds.experiments import datasets
    from remix_ds.experiments.config import DatasetSpec

    src = tmp_path / "facts.jsonl"
    rows = [{"id": "a", "prompt": "Who founded [[Orv]]?", "answer": "It was founded by [[Alra Finch]]."},
            {"id": "b", "prompt": "Capital?", "answer": "[[Tolm]] is the capital."}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": "c", "prompt": "Q?", "answer": "A."}) + "\n")
    specs = [(0, DatasetSpec(name="facts", dataset=str(src), subsample_seed=None)),
             (1, DatasetSpec(name="plain", dataset=str(plain), subsample_seed=None))]
    paths = datasets.materialize(specs, DataConfig(), None, tmp_path / "data")

    def read(p):
        return [json.loads(line) for line in p.read_text().splitlines()]

    d = tmp_path / "data"
    spans = read(d / "facts.spans.jsonl")
    assert [r["answer"] for r in spans] == [r["answer"] for r in rows]  # never wrapped again
    assert [r["answer"] for r in read(d / "facts.clean.jsonl")] == ["It was founded by Alra Finch.", "Tolm is the capital."]
    assert [r["prompt"] for r in read(d / "facts.clean.jsonl")] == ["Who founded Orv?", "Capital?"]
    assert [r["answer"] for r in read(paths["facts"])] == [r["answer"] for r in rows]  # eval strips and scores spans
    assert read(d / "plain.spans.jsonl")[0]["answer"] == "[[A.]]"  # unmarked: the whole answer (no EOS)
    assert not (d / "plain.clean.jsonl").exists()


# ----------------------------------------------------------------------------- preserve (item 2)
def _preserve(tmp_path, base, tuned, bench, *extra):
    import argparse

    from remix_ds.experiments.preserve_cli import add_preserve_command

    p = argparse.ArgumentParser()
    add_preserve_command(p.add_subparsers())
    out = tmp_path / "preserve-out"
    args = p.parse_args(["preserve", str(base), str(tuned), "--bench", str(bench), "--out", str(out),
                         "--dtype", "fp32", "--attn", "sdpa", "--max-new-tokens", "8", *extra])
    assert args.func(args) == 0
    import json

    return json.loads((out / "preserve.json").read_text()), (out / "preserve.md").read_text()


def _bench_file(tmp_path):
    import json

    path = tmp_path / "kvrbench.jsonl"
    path.write_text("".join(json.dumps({"id": e.id, "prompt": e.prompt, "answer": e.answer}) + "\n" for e in kvr_examples()))
    return path


def test_preserve_of_a_model_against_itself(trained_tiny, tmp_path):
    _, _, folder = trained_tiny
    report, md = _preserve(tmp_path, folder, folder, _bench_file(tmp_path))
    r = report["sets"]["kvrbench"]
    assert r["n"] == 40 and r["identical_frac"] == 1.0 and r["n_changed"] == 0
    assert r["em_base"] == r["em_tuned"] and 0 < r["em_base"] < 1
    assert r["mcnemar_p"] == 1.0 and r["nll_drift"] == 0.0
    assert r["data_fingerprint"]["count"] == 40
    assert "| kvrbench | 40 | 100.0% |" in md and "No greedy answer changed." in md


def _fine_tune_copy(folder, examples, out, steps=30, lr=3e-3):
    """A copy of the model at `folder` trained on `examples` (answer mode, plain torch loop)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remix_ds.data.tokenize import tokenize_examples

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    data = tokenize_examples(examples, tok, mode="answer").examples
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        for t in data:
            ids = torch.from_numpy(t.input_ids.astype("int64"))[None]
            loss = model(input_ids=ids, labels=torch.from_numpy(t.labels.astype("int64"))[None]).loss
            loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return model.eval(), tok


def _greedy_texts(model, tok, examples, max_new_tokens=8):
    texts = []
    for it in make_items(examples, tok):
        ctx = torch.tensor([it.prompt_ids.tolist()])
        with torch.no_grad():
            out = model.generate(ctx, attention_mask=torch.ones_like(ctx), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        texts.append(tok.decode(out[0, ctx.shape[1]:], skip_special_tokens=True))
    return texts


def test_preserve_finds_exactly_the_changed_answers(trained_tiny, tmp_path):
    base, tok, folder = trained_tiny
    facts = [Example(id=f"new-{i}", source="kvr", prompt=f"The value of key {k} is?", answer=v)
             for i, (k, v) in enumerate([("ZZ9Q", "QX7"), ("K0K0", "J4J")])]
    tuned, _ = _fine_tune_copy(folder, facts, tmp_path / "tuned", steps=3, lr=3e-4)
    bench = kvr_examples()
    want = {e.id for e, a, b in zip(bench, _greedy_texts(base, tok, bench), _greedy_texts(tuned, tok, bench)) if a != b}
    report, md = _preserve(tmp_path, folder, tmp_path / "tuned", _bench_file(tmp_path))
    r = report["sets"]["kvrbench"]
    assert 0 < len(want) < 40  # the fine-tune changed some answers, not all
    assert {c["id"] for c in r["changed"]} == want
    assert r["identical_frac"] == pytest.approx(1 - len(want) / 40)
    assert r["nll_drift"] != 0.0
    for c in r["changed"]:
        assert f"| {c['id']} |" in md


@pytest.mark.slow
def test_preserve_two_ranks_zero3_equals_one_process(trained_tiny, tmp_path, run_deepspeed):
    """`remix-ds preserve` under the deepspeed launcher, both models partitioned (ZeRO-3, persistence
    0: every parameter split), partitioned forwards with uneven shards (7 examples: 4 / 3): the same
    report as one process."""
    import json

    from helpers import REPO

    _, _, folder = trained_tiny
    facts = [Example(id="new-0", source="kvr", prompt="The value of key ZZ9Q is?", answer="QX7")]
    _fine_tune_copy(folder, facts, tmp_path / "tuned", steps=3, lr=1e-3)
    bench = tmp_path / "kvrbench.jsonl"  # (not --n: the launcher's argparse takes --n for its --num_gpus)
    bench.write_text("".join(_bench_file(tmp_path).read_text().splitlines(keepends=True)[:7]))
    one, _ = _preserve(tmp_path / "one", folder, tmp_path / "tuned", bench)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    out = tmp_path / "two"
    proc = run_deepspeed(["remix_ds.cli", "preserve", str(folder), str(tmp_path / "tuned"), "--bench", str(bench),
                          "--out", str(out), "--dtype", "fp32", "--attn", "sdpa", "--max-new-tokens", "8",
                          "--ds-config", str(ds)], module=True, cwd=REPO, timeout=600)
    assert "under ZeRO-3 over 2 ranks" in proc.stderr and "partitioned forwards" in proc.stderr
    held = [int(x.split(" of ")[0]) for x in proc.stderr.split("rank 0 holds ")[1:]]
    total = int(proc.stderr.split("rank 0 holds ")[1].split(" of ")[1].split()[0])
    assert len(held) == 2 and all(0 < h <= total // 2 + 64 for h in held)  # about half of every parameter
    two = json.loads((out / "preserve.json").read_text())
    a, b = one["sets"]["kvrbench"], two["sets"]["kvrbench"]
    assert a["n"] == b["n"] == 7 and 0 < a["n_changed"] < 7
    for key in ("identical_frac", "n_changed", "em_base", "em_tuned", "lost", "gained", "mcnemar_p", "data_fingerprint"):
        assert a[key] == b[key], key
    assert [c["id"] for c in a["changed"]] == [c["id"] for c in b["changed"]]
    assert [(c["base"], c["tuned"]) for c in a["changed"]] == [(c["base"], c["tuned"]) for c in b["changed"]]
    for key in ("nll_base", "nll_tuned", "nll_drift", "nll_abs_drift"):
        assert a[key] == pytest.approx(b[key], abs=1e-4), key


# ----------------------------------------------------------------------------- surprise (item 3)
def _answer_rows(tok, examples):
    return tokenize_examples(examples, tok, mode="answer").examples


def _argmax_wrong(model, rows):
    """Per row, per supervised position: the base argmax differs from the gold (plain full forward)."""
    out = []
    for t in rows:
        ids = torch.from_numpy(t.input_ids.astype("int64"))[None]
        with torch.no_grad():
            pred = model(input_ids=ids).logits[0].argmax(-1)
        sup = [j for j in range(len(t.labels)) if t.labels[j] != -100]
        out.append([int(pred[j - 1]) != int(t.input_ids[j]) for j in sup])
    return out


def test_surprise_mask_is_the_base_models_argmax_errors(trained_tiny):
    from remix_ds.eval.surprise import surprise_keep

    model, tok, _ = trained_tiny
    rows = _answer_rows(tok, kvr_examples())
    keep = surprise_keep(model, tok, rows, threshold=0.0, keep_eos=False)
    want = _argmax_wrong(model, rows)
    assert [k.tolist() for k in keep] == want
    flat = [x for w in want for x in w]
    assert 0 < sum(flat) < len(flat)  # some tokens already predicted, some not
    # threshold 1: every token is "unsure" (p < 1); keep_eos: every EOS stays supervised
    assert all(k.all() for k in surprise_keep(model, tok, rows, threshold=1.0, keep_eos=False))
    eos = surprise_keep(model, tok, rows, threshold=0.0, keep_eos=True)
    assert all(k[-1] and (k[:-1] == np.asarray(w[:-1])).all() for k, w in zip(eos, want))


def test_prepare_surprise_mask_caches_beside_the_data_and_masks_the_stream(trained_tiny, tmp_path, capsys):
    import json

    from remix_ds.config import RunConfig
    from remix_ds.configtools import from_dict
    from remix_ds.data.mixing import build_stage_stream
    from remix_ds.eval.surprise import prepare_surprise_mask

    model, tok, folder = trained_tiny
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"id": e.id, "prompt": e.prompt, "answer": e.answer}) + "\n" for e in kvr_examples()))
    raw = {"model": {"name_or_path": str(folder), "dtype": "fp32"},
           "data": {"dataset": str(data), "loss_mode": "surprise", "surprise_threshold": 0.0, "surprise_eos": False,
                    "subsample_seed": None}}
    cfg = from_dict(RunConfig, raw)
    path = prepare_surprise_mask(cfg)
    assert path.parent == tmp_path and path.name.startswith("facts.surprise-") and cfg.data.surprise_mask == str(path)
    out = capsys.readouterr().out
    assert "answer tokens supervised" in out
    mtime = path.stat().st_mtime_ns
    cfg2 = from_dict(RunConfig, raw)
    assert prepare_surprise_mask(cfg2) == path and path.stat().st_mtime_ns == mtime  # cached: computed once
    stream = build_stage_stream(cfg.data, tok, seed=0)
    want = _argmax_wrong(model, _answer_rows(tok, kvr_examples()))
    got = {t.id: t for t in stream.dataset}
    for ex, w in zip(kvr_examples(), want):
        t = _answer_rows(tok, [ex])[0]
        sup = [j for j in range(len(t.labels)) if t.labels[j] != -100]
        assert [got[ex.id].labels[j] != -100 for j in sup] == w
        assert (got[ex.id].labels[[j for j in range(len(t.labels)) if j not in sup]] == -100).all()
    changed = from_dict(RunConfig, {**raw, "data": {**raw["data"], "surprise_threshold": 0.5}})
    assert prepare_surprise_mask(changed) != path  # another setting, another cache entry


# ----------------------------------------------------------------------------- replayed rows (masks)
def _jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_replayed_rows_keep_their_own_key_spans(tiny_tokenizer, tmp_path, caplog):
    """key_spans: a marked replay file supervises exactly its marked spans; an unmarked one trains as
    `answer` rows (answer tokens and EOS), with a warning naming the entry, instead of training nothing."""
    from remix_ds.data.config import DataConfig, ReplayConfig
    from remix_ds.data.mixing import build_stage_stream

    tok = tiny_tokenizer
    stage = _jsonl(tmp_path / "b.jsonl", [{"id": "b", "prompt": "Where is Tamsk?", "answer": "In [[Velorn]]."}])
    marked = _jsonl(tmp_path / "a.jsonl", [{"id": "a0", "prompt": "Who founded Orvel?", "answer": "It was [[Alra Finch]]."},
                                           {"id": "a1", "prompt": "[[Key]] of Tamsk?", "answer": "[[Red]] and blue."}])
    plain = _jsonl(tmp_path / "p.jsonl", [{"id": "p0", "prompt": "Capital of Zorbia?", "answer": "Mirth."}])
    cfg = DataConfig(dataset=str(stage), loss_mode="key_spans", subsample_seed=None,
                     replay=[ReplayConfig(dataset=str(marked), ratio=1.0, subsample_seed=None),
                             ReplayConfig(dataset=str(plain), ratio=1.0, subsample_seed=None)])
    with caplog.at_level("WARNING", logger="remix_ds.data.mixing"):
        stream = build_stage_stream(cfg, tok, seed=0)
    sup = {t.id: [int(x) for x in t.labels if x != -100] for pool in stream.replay_pools for t in pool}
    assert tok.decode(sup["a0"]) == "Alra Finch"
    assert tok.decode(sup["a1"]) == "Key Red"  # spans in the prompt too, as key_spans trains the stage's data
    want = encode_prompt_answer([Example(id="p0", source="", prompt="Capital of Zorbia?", answer="Mirth.")], tok)[0]
    assert sup["p0"] == list(want.answer_ids) and sup["p0"][-1] == tok.eos_token_id
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "data.replay[1]" in warned[0] and "p.jsonl" in warned[0] and "`answer` rows" in warned[0]
    assert tok.decode([int(x) for x in stream.dataset[0].labels if x != -100]) == "Velorn"


def test_replayed_rows_get_a_surprise_mask_from_the_starting_model(trained_tiny, tmp_path, capsys):
    """surprise: each replay pool (a jsonl file and token windows) is masked against the model the stage
    starts from, like the stage's data: supervised = the tokens its argmax gets wrong (threshold 0)."""
    from remix_ds.config import RunConfig
    from remix_ds.configtools import from_dict
    from remix_ds.data.mixing import build_stage_stream
    from remix_ds.data.tokenize import from_token_ids
    from remix_ds.eval.surprise import prepare_surprise_mask

    model, tok, folder = trained_tiny
    bench = kvr_examples()
    stage = _jsonl(tmp_path / "facts.jsonl", [{"id": e.id, "prompt": e.prompt, "answer": e.answer} for e in bench[:4]])
    replay = _jsonl(tmp_path / "old.jsonl", [{"id": e.id, "prompt": e.prompt, "answer": e.answer} for e in bench[4:12]])
    windows = [tok(f"{e.prompt} {e.answer}")["input_ids"][:12] for e in bench[12:16]]
    windows = [w + [tok.eos_token_id] * (12 - len(w)) for w in windows]
    np.savez(tmp_path / "win.npz", ids=np.array([f"w{i}" for i in range(4)]), tokens=np.array(windows, dtype=np.int32))
    raw = {"model": {"name_or_path": str(folder), "dtype": "fp32"},
           "data": {"dataset": str(stage), "loss_mode": "answer", "surprise_threshold": 0.0, "surprise_eos": False,
                    "subsample_seed": None,
                    "replay": [{"dataset": str(replay), "ratio": 2.0, "subsample_seed": None, "loss_mode": "surprise"},
                               {"dataset": str(tmp_path / "win.npz"), "ratio": 1.0, "loss_mode": "surprise"}]}}
    cfg = from_dict(RunConfig, raw)
    with pytest.raises(DataError, match=r"data\.replay\[0\].*surprise_mask"):
        build_stage_stream(cfg.data, tok, seed=0)  # never silently unmasked
    assert prepare_surprise_mask(cfg) is None  # the stage's own data trains in answer mode
    out = capsys.readouterr().out
    assert "for data.replay[0]" in out and "for data.replay[1]" in out
    assert Path(cfg.data.replay[0].surprise_mask).parent == tmp_path
    stream = build_stage_stream(cfg.data, tok, seed=0)
    rows = {t.id: t for pool in stream.replay_pools for t in pool}
    answer = _answer_rows(tok, bench[4:12]) + [from_token_ids(np.array(w), f"w{i}") for i, w in enumerate(windows)]
    kept = 0
    for t, wrong in zip(answer, _argmax_wrong(model, answer)):
        sup = [j for j in range(len(t.labels)) if t.labels[j] != -100]
        got = rows[t.id].labels
        assert [int(got[j]) for j in sup] == [int(t.input_ids[j]) if w else -100 for j, w in zip(sup, wrong)]
        assert all(got[j] == -100 for j in range(len(got)) if j not in sup)
        kept += sum(wrong)
    assert 0 < kept < sum(t.num_supervised for t in answer)  # some replayed tokens already predicted
    assert all(t.labels.tolist() == a.labels.tolist() for t, a in zip(stream.dataset, _answer_rows(tok, bench[:4])))


def _train_rows(folder, rows, steps=8, lr=1e-3):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    n = sum(t.num_supervised for t in rows)
    for _ in range(steps):
        for t in rows:
            if t.num_supervised == 0:
                continue
            ids = torch.from_numpy(t.input_ids.astype("int64"))[None]
            labels = torch.from_numpy(t.labels.astype("int64"))[None]
            logits = model(input_ids=ids).logits[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum") / n
            loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_surprise_training_leaves_predicted_tokens_closer_to_base(trained_tiny, tmp_path):
    """Same data, steps and lr; `surprise` (default threshold 0.5) against `answer` mode. Measured
    at the answer tokens the base model already predicts: mean |log p_base - log p_tuned| over the
    vocabulary (the logits up to the softmax shift) and KL(base || tuned). On this toy setup:
    0.25 vs 0.11 and 0.0083 vs 0.0042 (docs/minimal_change.md)."""
    from remix_ds.data.surprise import apply_mask, write_mask
    from remix_ds.eval.surprise import surprise_keep

    base, tok, folder = trained_tiny
    rows = _answer_rows(tok, kvr_examples())
    keep = surprise_keep(base, tok, rows, threshold=0.5, keep_eos=False)
    masked = apply_mask(rows, write_mask(tmp_path / "m.npz", [t.id for t in rows], keep, {}))
    assert 0 < sum(t.num_supervised for t in masked) < sum(t.num_supervised for t in rows)

    def drift(model):
        l1, kl, n = 0.0, 0.0, 0
        for t, k in zip(rows, keep):
            ids = torch.from_numpy(t.input_ids.astype("int64"))[None]
            with torch.no_grad():
                lb = torch.log_softmax(base(input_ids=ids).logits[0], -1)
                lm = torch.log_softmax(model(input_ids=ids).logits[0], -1)
            sup = [j for j in range(len(t.labels)) if t.labels[j] != -100]
            for j, kk in zip(sup, k):
                if not kk:
                    l1 += float((lb[j - 1] - lm[j - 1]).abs().mean())
                    kl += float((lb[j - 1].exp() * (lb[j - 1] - lm[j - 1])).sum())
                    n += 1
        return l1 / n, kl / n

    (l1_a, kl_a), (l1_s, kl_s) = drift(_train_rows(folder, rows, lr=3e-4)), drift(_train_rows(folder, masked, lr=3e-4))
    print(f"at already-predicted tokens: |dlogp| answer {l1_a:.4f} surprise {l1_s:.4f}; KL answer {kl_a:.4f} surprise {kl_s:.4f}")
    assert l1_s < 0.6 * l1_a
    assert kl_s < 0.75 * kl_a


# ----------------------------------------------------------------------------- the grid's loss-mode axis (item 4)
def test_grid_loss_mode_axis_routes_marked_data(tmp_path):
    import json

    from remix_ds.data.config import DataConfig
    from remix_ds.experiments import datasets
    from remix_ds.experiments.config import DatasetSpec, load_experiment
    from remix_ds.experiments.grid import Grid

    src = tmp_path / "facts.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "Who founded Orv?", "answer": "It was [[Alra Finch]]."}) + "\n")
    other = tmp_path / "b.jsonl"
    other.write_text(json.dumps({"id": "b", "prompt": "Q?", "answer": "A."}) + "\n")
    data = tmp_path / "grid" / "data"
    paths = datasets.materialize([(0, DatasetSpec(name="a", dataset=str(src), subsample_seed=None)),
                                  (1, DatasetSpec(name="b", dataset=str(other), subsample_seed=None))], DataConfig(), None, data)
    cfg = load_experiment(None, [f"output_dir={tmp_path / 'grid'}", "loss_modes=[answer, all, key_spans, surprise]",
                                 "analysis.preserve_bench=[popqa:heldout]",
                                 f"data_a=[{{name: a, dataset: {src}}}]", f"data_b=[{{name: b, dataset: {other}}}]"])
    grid = Grid(cfg)
    grid.paths = paths
    by_mode = {c.loss_mode: c for c in grid.cells()}
    assert set(by_mode) == {"answer", "all", "key_spans", "surprise"}
    for mode, train_file in (("answer", "a.clean.jsonl"), ("all", "a.clean.jsonl"), ("surprise", "a.clean.jsonl"),
                             ("key_spans", "a.spans.jsonl")):
        s1 = grid.stage1_config(by_mode[mode])
        assert (s1.data.loss_mode, Path(s1.data.dataset).name) == (mode, train_file)
        assert [Path(p).name for p in s1.eval.datasets] == ["a.jsonl"]  # marked: eval strips and scores the spans
    assert Path(grid.stage2_config(by_mode["surprise"]).data.dataset).name == "b.jsonl"  # unmarked D_B as is


# ----------------------------------------------------------------------------- surprise in `forgetting measure`
def test_forgetting_measure_trains_surprise_masks_and_records_the_fraction(trained_tiny, tmp_path, capsys):
    """A forgetting row fine-tuned with data.loss_mode=surprise: the mask is computed against the model
    being fine-tuned, and its supervised fraction is recorded in the row and in matrix.json."""
    import json

    from remix_ds.eval.surprise import surprise_keep
    from remix_ds.forgetting.config import load_forgetting_config
    from remix_ds.forgetting.measure import measure

    model, tok, folder = trained_tiny
    bench = kvr_examples()
    task = _jsonl(tmp_path / "kvr8.jsonl", [{"id": e.id, "prompt": e.prompt, "answer": e.answer} for e in bench[:8]])
    up = _jsonl(tmp_path / "up.jsonl", [{"id": e.id, "prompt": e.prompt, "answer": e.answer} for e in bench[8:12]])
    cfg = load_forgetting_config(None, [
        f"output_dir={tmp_path / 'study'}", "upstream.kind=examples", f"upstream.source.dataset={up}", "upstream.num_examples=4",
        "upstream.source.subsample_seed=null",
        f"tasks=[{{name: kvr8, dataset: {task}, subsample_seed: null}}]", "measure.steps=2", "measure.lr=1e-3",
        f"finetune.model.name_or_path={folder}", "finetune.model.dtype=fp32", "finetune.data.loss_mode=surprise",
        "finetune.train.global_batch_size=8", "finetune.train.micro_batch_size=8",
        "finetune.train.progress_bar=false", "finetune.train.tensorboard=false", "finetune.optim.warmup_ratio=0.0"])
    measure(cfg, log=lambda *a: None)
    keeps = surprise_keep(model, tok, _answer_rows(tok, bench[:8]), 0.5, True)
    want = sum(int(k.sum()) for k in keeps) / sum(len(k) for k in keeps)
    assert 0 < want < 1  # the base model already predicts some of the task's answer tokens
    row = np.load(tmp_path / "study" / "rows" / "kvr8.npz")
    assert float(row["surprise_supervised_frac"]) == pytest.approx(want)
    meta = json.loads((tmp_path / "study" / "matrix.json").read_text())
    assert meta["tasks"][0]["surprise_supervised_frac"] == pytest.approx(want)
    assert "surprise mask" in capsys.readouterr().out


# ----------------------------------------------------------------------------- preserve --bench generic
def test_preserve_generic_bench_compares_continuations(trained_tiny, tmp_path):
    """`--bench generic`: held-out generic passages as completion rows; against itself all identical, against
    a fine-tuned copy exactly the passages whose greedy continuation changed, and a nonzero NLL drift."""
    from remix_ds.data.config import DataConfig
    from remix_ds.experiments.preserve_cli import generic_set

    base, tok, folder = trained_tiny
    gen = generic_set(tok, DataConfig(), 6)
    assert len(gen.examples) == 6 and gen.examples[0].prompt.startswith("Complete the following partial passage:")
    assert all(len(e.answer.split()) == 16 and len(e.prompt.split()) > 48 for e in gen.examples)  # 48 + 16 of 64 words
    same, _ = _preserve(tmp_path / "same", folder, folder, "generic", "--n", "6")
    r = same["sets"]["generic"]
    assert (r["n"], r["identical_frac"], r["nll_drift"]) == (6, 1.0, 0.0)
    assert r["data_fingerprint"]["ids_sha256"] == gen.fingerprint["ids_sha256"]
    facts = [Example(id="new-0", source="kvr", prompt="The value of key ZZ9Q is?", answer="QX7")]
    tuned, _ = _fine_tune_copy(folder, facts, tmp_path / "tuned", steps=3, lr=1e-3)
    want = {e.id for e, a, b in zip(gen.examples, _greedy_texts(base, tok, gen.examples), _greedy_texts(tuned, tok, gen.examples))
            if a != b}
    other, _ = _preserve(tmp_path / "other", folder, tmp_path / "tuned", "generic", "--n", "6")
    r = other["sets"]["generic"]
    assert {c["id"] for c in r["changed"]} == want and r["identical_frac"] == pytest.approx(1 - len(want) / 6)
    assert r["nll_drift"] != 0.0
