"""Forgetting matrices end to end on the built-in tiny model (CPU, one process, real Trainer +
DeepSpeed ZeRO-3 engine + fused evaluator): 3 tasks x 50 pretraining windows, a few steps each."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from remix_ds import models
from remix_ds.configtools import ConfigError
from remix_ds.forgetting.config import load_forgetting_config

WORDS = ("apple river music table green light stone happy quick seven water paper dream cloud house "
         "bread field glass north south winter summer market garden letter silver").split()


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_tokenizer):
    """Shards, three small tasks, and a measured 3 x 50 matrix (with an intermediate step)."""
    from remix_ds.data.shard_builder import tokenize_to_shards
    from remix_ds.forgetting.measure import measure

    root = tmp_path_factory.mktemp("forgetting")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 40)) + "." for _ in range(60)]
    tokenize_to_shards(texts, root / "shards", tiny_tokenizer, tokenizer_name="tiny", progress=False)
    write_jsonl(root / "sums.jsonl", [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(16)])
    write_jsonl(root / "caps.jsonl", [{"prompt": f"Capitalize {w}", "answer": w.upper()} for w in WORDS[:16]])
    write_jsonl(root / "words.jsonl", [{"prompt": f"Continue: {w}", "answer": " ".join(rng.choice(WORDS, 6))}
                                       for w in WORDS[:16]])
    overrides = [
        f"output_dir={root / 'study'}",
        "upstream.kind=windows", f"upstream.corpus={root / 'shards'}", "upstream.num_examples=50",
        "upstream.window_tokens=24",
        f"tasks=[{{dataset: {root / 'sums.jsonl'}}}, {{dataset: {root / 'caps.jsonl'}}}, "
        f"{{name: words, dataset: {root / 'words.jsonl'}}}]",
        "measure.steps=4", "measure.lr=1e-3", "measure.at_fractions=[0.5]",
        "finetune.train.global_batch_size=8", "finetune.train.micro_batch_size=8",
        "finetune.train.progress_bar=false", "finetune.train.tensorboard=false",
        "finetune.optim.warmup_ratio=0.0", "finetune.data.max_seq_len=128",
        "predict.revealed=10", "predict.seeds=[0,1]",
        "replay.num_heldout=1", "replay.seeds=[0]", "replay.ratio=1.0",
        # ours (the data layer's replay): this toy study's assertions are about it; published: test_forgetting_online.py
        "replay.pool=fraction", "replay.draw=with_replacement", "replay.placement=shuffle", "replay.scale_steps=false",
    ]
    cfg = load_forgetting_config(None, overrides)
    start = time.perf_counter()
    mat = measure(cfg, log=lambda *a: None)
    return {"root": root, "cfg": cfg, "overrides": overrides, "matrix": mat, "seconds": time.perf_counter() - start}


def test_measured_matrix_is_nontrivial_and_stored(study):
    mat, root = study["matrix"], study["root"] / "study"
    assert mat.z.shape == (3, 50) and mat.done.all()
    assert mat.task_names == ["sums", "caps", "words"]
    assert np.isfinite(mat.z).all()
    assert np.abs(mat.z).max() > 1e-3  # not all zero
    assert mat.z.std() > 1e-3 and np.all(mat.z.std(axis=1) > 1e-4)  # not all equal, within every row too
    assert not np.allclose(mat.z[0], mat.z[1])  # tasks forget differently
    # z = after - before, on the stored arrays; the untrained tiny model sits near log(vocab).
    stored = np.load(root / "matrix.npz")
    assert np.allclose(stored["z"], stored["nll_after"] - stored["nll_before"][None, :])
    assert abs(float(stored["nll_before"].mean()) - math.log(2048)) < 1.0
    assert list(mat.z_at) == [2] and np.isfinite(mat.z_at[2]).all()
    assert not np.allclose(mat.z_at[2], mat.z)  # the intermediate row is a different measurement
    meta = json.loads((root / "matrix.json").read_text())
    assert meta["shape"] == [3, 50] and meta["done"] == 3 and meta["steps"] == 4
    assert [t["name"] for t in meta["tasks"]] == ["sums", "caps", "words"]
    assert len(meta["example_ids"]) == 50 and len(set(meta["example_ids"])) == 50
    assert all(i.startswith("window-") for i in meta["example_ids"])
    assert stored["example_embeddings"].shape == (50, 128) and np.isfinite(stored["task_embeddings"]).all()
    assert not (root / "runs" / "sums").exists()  # task runs are deleted once their row is stored
    # the fused pass's EM verdicts, stored for the binary matrix (issue 18): base and every row; the
    # untrained base model reproduces no 24-token window exactly
    assert mat.em_before is not None and mat.em_before.shape == (50,) and not mat.em_before.astype(bool).any()
    assert mat.em_after.shape == (3, 50) and np.isin(mat.em_after, [0.0, 1.0]).all()


def test_resume_skips_finished_rows_and_redoes_a_crashed_task(study):
    from remix_ds.forgetting.measure import measure

    root = study["root"] / "study"
    cfg = load_forgetting_config(None, study["overrides"])
    rows = {n: (root / "rows" / f"{n}.npz").stat().st_mtime_ns for n in ("sums", "caps", "words")}
    messages = []
    again = measure(cfg, log=messages.append)
    assert "0 to measure" in messages[0]
    assert {n: (root / "rows" / f"{n}.npz").stat().st_mtime_ns for n in rows} == rows
    assert np.array_equal(again.z, study["matrix"].z)
    # A crash in the middle of "caps": no row file, a half-written run folder.
    (root / "rows" / "caps.npz").unlink()
    (root / "runs" / "caps" / "checkpoint-2").mkdir(parents=True)
    messages.clear()
    redone = measure(cfg, log=messages.append)
    assert "2 rows stored, 1 to measure" in messages[0]
    assert (root / "rows" / "sums.npz").stat().st_mtime_ns == rows["sums"]
    assert np.allclose(redone.z, study["matrix"].z, atol=1e-4)  # same data order and seed: same row
    # Changed settings are refused rather than mixed into the matrix.
    other = load_forgetting_config(None, study["overrides"] + ["measure.lr=2e-3"])
    with pytest.raises(ConfigError, match="other settings"):
        measure(other, log=lambda *a: None)
    assert json.loads((root / "config.json").read_text())["measure"]["lr"] == 1e-3  # nothing overwritten
    renamed = [o.replace("sums.jsonl}", "sums.jsonl, num_examples: 8}") for o in study["overrides"]]
    with pytest.raises(ConfigError, match="other settings.*task"):  # a task's definition changed
        measure(load_forgetting_config(None, renamed), log=lambda *a: None)


def test_analyze_and_predict_on_measured_matrix(study):
    from remix_ds.forgetting.analyze import analyze
    from remix_ds.forgetting.predict import predict
    from remix_ds.forgetting.store import load_matrix

    out = study["root"] / "study"
    cfg = study["cfg"]
    mat = load_matrix(out)
    res = analyze(mat, cfg.analyze, out, log=lambda *a: None)
    r2 = list(res["r2_by_rank"].values())
    assert len(r2) == 3 and r2[-1] == pytest.approx(1.0) and 0 < r2[0] <= r2[1] <= r2[2]
    a = np.array(list(res["rank1"]["task_strength"].values()))
    assert res["rank1"]["r2"] == r2[0] and np.all(np.isfinite(a))
    assert -1 <= res["embedding_similarity"]["spearman"] <= 1
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "R^2" in (out / "analysis.md").read_text()
    pred = predict(mat, cfg.predict, out, log=lambda *a: None)
    for variant in ("offline", "online"):
        methods = pred["variants"][variant]["methods"]
        # grad_sim needs OUT/features.npz (`forgetting features`); the embedding baselines use the stored embeddings
        assert set(methods) == {"row_mean", "col_mean", "additive", "knn_baseline", "knn", "mf", "mf_refit", "random",
                                "emb_cos", "rep_dot"}
        assert all(np.isfinite(m["mean"]["rmse"]) and m["mean"]["rmse"] > 0 for m in methods.values())
        assert pred["variants"][variant]["skipped_methods"] == ["grad_sim"]
    assert "online" in (out / "predict.md").read_text()


def test_replay_experiment_weights_draws_by_predicted_forgetting(study):
    from remix_ds.forgetting.replay import replay_experiment

    cfg = study["cfg"]
    summary = replay_experiment(cfg, log=lambda *a: None)
    runs = {r["arm"]: r for r in summary["runs"]}
    assert set(runs) == {"none", "uniform", "predicted", "oracle"} and summary["heldout_tasks"] == ["words"]
    assert summary["pool_size"] == 25 and summary["eval_size"] == 25
    assert all(np.isfinite(r["forgetting"]) for r in runs.values())
    assert "replayed_true_z" not in runs["none"] and runs["uniform"]["replay_rows_per_epoch"] == 16
    # Weighted arms draw the examples they score as most forgotten far more often than the pool average.
    for arm in ("predicted", "oracle"):
        assert runs[arm]["replayed_score"] > runs[arm]["pool_score"]
    assert runs["oracle"]["replayed_true_z"] > runs["uniform"]["replayed_true_z"]
    assert runs["oracle"]["replayed_distinct"] < runs["uniform"]["replayed_distinct"]
    # Replay changes what is forgotten on the (never replayed) evaluation examples.
    assert runs["uniform"]["forgetting"] != pytest.approx(runs["none"]["forgetting"], abs=1e-6)
    report = (study["root"] / "study" / "replay" / "report.md").read_text()
    assert "predicted vs uniform" in report and "paired t-test p" in report
    pool = study["root"] / "study" / "replay" / "pool.npz"
    ids = np.load(pool)["ids"].tolist()
    eval_ids = set(json.loads((study["root"] / "study" / "matrix.json").read_text())["example_ids"]) - set(ids)
    assert len(ids) == 25 and len(eval_ids) == 25  # evaluation examples are never in the replay pool
    # A second call reuses every stored run.
    again = replay_experiment(cfg, log=lambda *a: None)
    assert [r["forgetting"] for r in again["runs"]] == [r["forgetting"] for r in summary["runs"]]


def test_fused_nll_matches_evaluator_and_a_plain_reference(tiny_tokenizer):
    """score_nll on instruction examples == evaluate() rows' answer_nll; on a window == mean CE
    over all tokens but the first, computed directly."""
    from transformers import AutoModelForCausalLM

    from remix_ds.data.records import Example
    from remix_ds.eval.config import EvalConfig
    from remix_ds.eval.items import make_items
    from remix_ds.eval.runner import evaluate
    from remix_ds.data.tokenize import pad_id
    from remix_ds.forgetting.nll import embed, score_nll
    from remix_ds.forgetting.upstream import window_item

    model = AutoModelForCausalLM.from_pretrained(models.resolve_path("tiny"))
    examples = [Example(id=f"e{i}", source="t", prompt=f"Say {w}", answer=f"{w} {w}") for i, w in enumerate(WORDS[:12])]
    cfg = EvalConfig(mode="fused")
    rows = evaluate(model, tiny_tokenizer, examples, cfg).rows
    items = make_items(examples, tiny_tokenizer)
    nll = score_nll(model, items, cfg, pad_id(tiny_tokenizer))
    assert nll == pytest.approx([r["answer_nll"] for r in rows], abs=1e-5)

    window = np.array(tiny_tokenizer(" ".join(WORDS), add_special_tokens=False)["input_ids"][:20])
    got = score_nll(model, [window_item(0, "w", window)], cfg, pad_id(tiny_tokenizer))[0]
    with torch.no_grad():
        logits = model(torch.as_tensor(window[None])).logits[0]
    ref = torch.nn.functional.cross_entropy(logits[:-1], torch.as_tensor(window[1:])).item()
    assert got == pytest.approx(ref, abs=1e-4)

    seqs = [np.concatenate([it.prompt_ids, it.answer_ids]) for it in items[:3]]
    emb = embed(model, seqs, cfg, pad_id(tiny_tokenizer), batch_size=2)
    with torch.no_grad():
        one = model(torch.as_tensor(seqs[1][None]), output_hidden_states=True).hidden_states[-1][0].mean(0)
    assert emb.shape == (3, 128) and emb[1] == pytest.approx(one.numpy(), abs=1e-4)
