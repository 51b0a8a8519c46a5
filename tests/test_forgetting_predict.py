"""Forgetting prediction at the published protocol, on synthetic matrices with known factors:
AUROC and Holm by hand, named splits and shared revealed columns, the paper's baselines (random,
similarity, refit MF, logistic MF), the binary matrix from per-example eval files, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from remix_ds.configtools import ConfigError
from remix_ds.forgetting import predict as predict_mod
from remix_ds.forgetting.config import PredictConfig
from remix_ds.forgetting.metrics import auroc, row_metrics
from remix_ds.forgetting.splits import fold_splits, named_splits, revealed_columns
from remix_ds.forgetting.stats import compare, holm
from remix_ds.forgetting.store import Matrix


def test_auroc_rank_formula_by_hand():
    # Positives {0.35, 0.8}, negatives {0.1, 0.4}: pairs (0.35>0.1), (0.35<0.4), (0.8>0.1), (0.8>0.4) -> 3/4.
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    # A tie between a positive and a negative counts 1/2: (0.5=0.5) 0.5 + (0.9>0.5) 1 + (0.5>0.2)... = 2.5/4.
    assert auroc(np.array([0.5, 0.2, 0.5, 0.9]), np.array([1, 0, 0, 1], bool)) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.4  # many ties
    pos, neg = s[y], s[~y]
    pairwise = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (len(pos) * len(neg))
    assert auroc(s, y) == pytest.approx(pairwise)
    assert np.isnan(auroc(s, np.zeros(40, bool)))
    m = row_metrics(np.array([0.3, -0.1, 0.2, -0.2]), np.array([0.5, 0.4, -0.1, -0.3]))
    assert m["auroc"] == pytest.approx(0.75)  # positives {0.3, -0.1} vs negatives {0.2, -0.2}: 3 of 4 pairs


def test_holm_by_hand_and_paired_comparisons():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adj = holm([0.2, np.nan, 0.01])  # NaN is left out of the family (m = 2)
    assert adj[0] == pytest.approx(0.2) and np.isnan(adj[1]) and adj[2] == pytest.approx(0.02)
    rng = np.random.default_rng(1)
    keys = [(t, s) for t in range(4) for s in range(5)]
    ref = {k: 0.5 + rng.normal(0, 0.01) for k in keys}
    values = {"mf": ref, "worse": {k: v + 0.1 + rng.normal(0, 0.01) for k, v in ref.items()},
              "same": {k: v + rng.normal(0, 0.01) for k, v in ref.items()}}
    rows = {r["method"]: r for r in compare(values, "mf", alpha=0.05)}
    assert rows["worse"]["n_pairs"] == 20 and rows["worse"]["significant"]
    assert rows["worse"]["reference_better_fraction"] == 1.0 and rows["worse"]["mean_diff"] == pytest.approx(0.1, abs=0.01)
    assert not rows["same"]["significant"]
    assert rows["worse"]["holm_p"] == pytest.approx(min(1, 2 * min(rows["worse"]["wilcoxon_p"], rows["same"]["wilcoxon_p"])))


NAMES = ["flan_a", "flan_b", "flan_c", "flan_d", "flan_e", "dolly_x", "dolly_y", "tulu_z"]


def test_named_splits_and_errors_naming_the_key():
    splits = named_splits(NAMES, {"in_domain": ["flan_a", "flan_b"], "ood_dolly": ["dolly_*"], "ood_tulu": ["tulu_z"]})
    assert [s.name for s in splits] == ["in_domain", "ood_dolly", "ood_tulu"]
    assert splits[1].test.tolist() == [5, 6]
    for s in splits:  # training tasks = the ones no split names, the same for every split
        assert s.train.tolist() == [2, 3, 4]
    with pytest.raises(ConfigError, match=r"predict.splits.ood: 'mmlu_\*' matches no finished task"):
        named_splits(NAMES, {"ood": ["mmlu_*"]})
    with pytest.raises(ConfigError, match=r"predict.splits.b: task 'flan_a' is also in split 'a'"):
        named_splits(NAMES, {"a": ["flan_a"], "b": ["flan_*"]})
    with pytest.raises(ConfigError, match="training task"):
        named_splits(NAMES, {"all": ["*"]})


def test_shared_revealed_columns_across_test_rows(monkeypatch):
    for seed in range(5):
        shared = {tuple(revealed_columns(200, 30, seed, i, "shared")) for i in range(8)}
        assert len(shared) == 1 and len(set(next(iter(shared)))) == 30
        assert len({tuple(revealed_columns(200, 30, seed, i, "per_task")) for i in range(8)}) == 8
    assert not np.array_equal(revealed_columns(200, 30, 0, 0), revealed_columns(200, 30, 1, 0))
    seen = []

    class Recorder:
        def fit(self, Z):
            self.n = Z.shape[1]
            return self

        def fold_in(self, cols, values):
            seen.append(tuple(cols))
            return np.zeros(self.n)

    monkeypatch.setattr(predict_mod, "make_predictor", lambda *a, **k: Recorder())
    Z = np.random.default_rng(0).normal(size=(8, 100))
    cfg = PredictConfig(revealed=10, seeds=[0, 1, 2], methods=["mf"], compare_to="mf",
                        splits={"id": ["flan_a", "flan_b"], "ood": ["dolly_*", "tulu_z"]})
    predict_mod.evaluate_splits(Z, None, cfg, named_splits(NAMES, cfg.splits), ["mf"])
    assert len(seen) == 5 * 3  # 5 test tasks x 3 seeds
    for seed in range(3):  # test rows are visited task by task, seeds inner
        assert len({seen[t * 3 + seed] for t in range(5)}) == 1
    assert len(set(seen)) == 3


def known_factors(m=12, n=400, r=3, seed=0):
    """Z = T E' exactly (rank r, known factors): T the task factors, E the example factors."""
    rng = np.random.default_rng(seed)
    T, E = rng.normal(size=(m, r)), rng.normal(size=(n, r))
    return T, E, T @ E.T


def test_similarity_predictors_against_hand_computed_values():
    T, E, Z = known_factors()
    cfg = PredictConfig(revealed=20, seeds=[0, 1], methods=["rep_dot", "emb_cos"], compare_to="rep_dot")
    sims = {"rep_dot": T @ E.T, "emb_cos": (T / np.linalg.norm(T, axis=1, keepdims=True))
            @ (E / np.linalg.norm(E, axis=1, keepdims=True)).T}
    res = predict_mod.evaluate_splits(Z, None, cfg, fold_splits(12, 3), ["rep_dot", "emb_cos"], sims)["folds"]
    # rep_dot is the truth itself: alpha 0, beta 1, offset 0 -> RMSE 0, every forgotten entry ranked above the rest.
    assert res["rep_dot"]["mean"]["rmse"] == pytest.approx(0.0, abs=1e-10)
    assert res["rep_dot"]["mean"]["auroc"] == pytest.approx(1.0)
    # emb_cos by hand: least squares z ~ a + b cos on the training rows, offset = mean revealed residual.
    errs, aucs = {0: [], 1: []}, {0: [], 1: []}
    S = sims["emb_cos"]
    for held in (np.arange(i, 12, 3) for i in range(3)):
        train = np.setdiff1d(np.arange(12), held)
        b, a = np.polyfit(S[train].ravel(), Z[train].ravel(), 1)
        for i in held:
            for seed in (0, 1):
                cols = revealed_columns(400, 20, seed, i)
                hidden = np.setdiff1d(np.arange(400), cols)
                pred = a + b * S[i] + np.mean(Z[i, cols] - a - b * S[i, cols])
                errs[seed].append(np.sqrt(np.mean((pred[hidden] - Z[i, hidden]) ** 2)))
                pos, neg = pred[hidden][Z[i, hidden] > 0], pred[hidden][Z[i, hidden] <= 0]
                aucs[seed].append(np.mean(pos[:, None] > neg[None, :]))
    assert res["emb_cos"]["per_seed"]["rmse"] == pytest.approx([np.mean(errs[0]), np.mean(errs[1])], rel=1e-9)
    assert res["emb_cos"]["per_seed"]["auroc"] == pytest.approx([np.mean(aucs[0]), np.mean(aucs[1])], rel=1e-9)
    # cos has the sign of the dot product: every forgotten entry still ranks first, but the scale is wrong.
    assert res["emb_cos"]["mean"]["auroc"] == pytest.approx(1.0) and res["emb_cos"]["mean"]["rmse"] > 0.1


def test_random_refit_and_fold_in_on_a_low_rank_matrix():
    T, E, signal = known_factors(m=16, n=300, r=2, seed=3)
    sigma = 0.05
    Z = signal + np.random.default_rng(4).normal(0, sigma, signal.shape)
    cfg = PredictConfig(revealed=30, seeds=[0, 1], folds=4, methods=["mf", "mf_refit", "random"])
    res = predict_mod.evaluate_splits(Z, None, cfg, fold_splits(16, 4), ["mf", "mf_refit", "random"])["folds"]
    # rank 2 < 5: the fold-in reaches the noise floor from 30 entries; the published refit fits the
    # partial row's 5 factors by ridge least squares on 30 entries and stays well above it (ours is kept).
    assert sigma <= res["mf"]["mean"]["rmse"] < 1.5 * sigma and res["mf"]["mean"]["auroc"] > 0.97
    assert res["mf"]["mean"]["rmse"] < res["mf_refit"]["mean"]["rmse"] < 0.5 * res["random"]["mean"]["rmse"]
    assert res["mf_refit"]["mean"]["auroc"] > 0.9
    # Random draws from the revealed values, independent of the truth: E (x - z)^2 = 2 var(row) + (mean gap)^2.
    expected = np.mean([np.sqrt(2 * Z[i].var()) for i in range(16)])
    assert res["random"]["mean"]["rmse"] == pytest.approx(expected, rel=0.2)
    assert res["random"]["mean"]["auroc"] == pytest.approx(0.5, abs=0.06)


def test_logistic_mf_on_a_binary_matrix_with_known_factors():
    from remix_ds.forgetting.complete import LogisticMF

    rng = np.random.default_rng(5)
    m, n = 30, 400
    X = -1.0 + rng.normal(0, 0.5, (m, 1)) + rng.normal(0, 0.5, (1, n)) + 2.0 * rng.normal(size=(m, 2)) @ rng.normal(size=(2, n))
    P = 1 / (1 + np.exp(-X))
    B = (rng.random((m, n)) < P).astype(float)
    cfg = PredictConfig(revealed=60, seeds=[0], folds=5, binary_rank=2)
    methods = ["lmf", "lmf_additive", "random"]
    res = predict_mod.evaluate_splits(B, None, cfg, fold_splits(m, 5), methods, binary=True)["folds"]
    # The oracle: the true probabilities' AUROC on the same hidden entries (hand-computed per row).
    oracle = np.mean([auroc(P[i, h], B[i, h] > 0.5) for i in range(m)
                      for h in [np.setdiff1d(np.arange(n), revealed_columns(n, 60, 0, i))]])
    assert res["lmf"]["mean"]["auroc"] > oracle - 0.1
    assert res["lmf"]["mean"]["auroc"] > res["lmf_additive"]["mean"]["auroc"] + 0.05
    assert res["lmf_additive"]["mean"]["auroc"] > res["random"]["mean"]["auroc"]
    # In-sample: the fit's probabilities track the truth.
    fit = LogisticMF(2, 1.0, 500).fit(B)
    assert np.corrcoef(fit.predict_train().ravel(), P.ravel())[0, 1] > 0.8


def eval_file(folder, name, correct: dict):
    from remix_ds.eval.runner import EvalResult, write_results

    rows = [{"id": k, "correct": v, "answer_nll": 0.0} for k, v in correct.items()]
    return write_results(EvalResult(rows, {"em": float(np.mean(list(correct.values())))}), folder, name)


def test_binary_matrix_equals_one_minus_em_from_eval_files(tmp_path):
    from remix_ds.data.records import DataError
    from remix_ds.forgetting.binary import from_eval_dir

    rng = np.random.default_rng(6)
    ids = [f"x{j}" for j in range(80)]
    base = rng.random(80) < 0.7
    after = {f"t{i}": rng.random(80) < 0.6 for i in range(6)}
    eval_file(tmp_path, "base", dict(zip(ids, map(bool, base))))
    for name, em in after.items():
        eval_file(tmp_path, name, dict(zip(ids, map(bool, em))))
    bm = from_eval_dir(tmp_path, [*after, "missing_task"], log=lambda *a: None)
    assert bm.task_names == list(after) and bm.n_examples == 80
    assert bm.example_ids == [i for i, ok in zip(ids, base) if ok]
    assert np.array_equal(bm.z, np.array([1.0 - after[t][base] for t in after]))
    # predict reports the binary variant (logistic MF and logistic additive, the same metrics)
    Z = rng.normal(size=(6, 80))
    mat = Matrix(z=Z, task_names=list(after), example_ids=ids, done=np.ones(6, bool), steps=10)
    cfg = PredictConfig(revealed=10, seeds=[0, 1], folds=2, variants=["offline"], methods=["additive", "mf"],
                        binary_eval_dir=str(tmp_path), binary_methods=["lmf", "lmf_additive", "random"], binary_rank=1)
    res = predict_mod.predict(mat, cfg, tmp_path / "out", log=lambda *a: None)
    assert set(res["variants"]["binary"]["methods"]) == {"lmf", "lmf_additive", "random"}
    assert f"{bm.z.shape[1]} of 80 examples" in (tmp_path / "out" / "predict.md").read_text()
    (tmp_path / "t3.jsonl").write_text('{"id": "x0", "correct": true}\n{"id": "x1"}\n')
    with pytest.raises(DataError, match=r"t3.jsonl:2: not an eval row"):
        from_eval_dir(tmp_path, list(after), log=lambda *a: None)


def test_predict_report_with_splits_similarity_and_tests(tmp_path):
    T, E, signal = known_factors(m=8, n=120, r=2, seed=7)
    Z = signal + np.random.default_rng(8).normal(0, 0.05, signal.shape)
    mat = Matrix(z=Z, task_names=NAMES, example_ids=[f"e{j}" for j in range(120)], done=np.ones(8, bool), steps=10,
                 example_embeddings=E, task_embeddings=T)
    cfg = PredictConfig(revealed=20, seeds=[0, 1, 2], variants=["offline"],
                        methods=["additive", "mf", "random", "emb_cos", "rep_dot", "grad_sim"],
                        splits={"in_domain": ["flan_a", "flan_b"], "ood_dolly": ["dolly_*"]})
    res = predict_mod.predict(mat, cfg, tmp_path, log=lambda *a: None)
    off = res["variants"]["offline"]
    assert off["skipped_methods"] == ["grad_sim"]  # no features.npz
    assert set(off["splits"]) == {"in_domain", "ood_dolly"}
    assert off["split_tasks"]["ood_dolly"] == {"test": ["dolly_x", "dolly_y"], "train": ["flan_c", "flan_d", "flan_e", "tulu_z"]}
    tests = {(t["metric"], t["method"]): t for t in off["tests"]["in_domain"]}
    assert tests[("rmse", "random")]["n_pairs"] == 2 * 3  # 2 test tasks x 3 seeds
    assert off["splits"]["in_domain"]["rep_dot"]["mean"]["auroc"] > 0.95
    text = (tmp_path / "predict.md").read_text()
    assert "split `ood_dolly`: 2 test tasks, 4 training tasks" in text and "Holm-corrected" in text
    assert "| rmse | random | 6 |" in text
    saved = json.loads((tmp_path / "predict.json").read_text())
    assert saved["reveal"] == "shared" and saved["variants"]["offline"]["splits"]["in_domain"]["mf"]["pairs"][0]["seed"] == 0


def test_lm_head_gradient_features_match_autograd(tiny_model):
    from remix_ds.eval.config import EvalConfig
    from remix_ds.forgetting.similarity import lm_head_gradient_reference, lm_head_gradients

    rng = np.random.default_rng(9)
    pairs = [(rng.integers(3, 200, p).astype(np.int32), rng.integers(3, 200, a).astype(np.int32))
             for p, a in [(4, 6), (0, 9), (7, 3)]]
    feats = lm_head_gradients(tiny_model, pairs, EvalConfig(), pad_id=0, dims=(4, 3), seed=1, batch_size=2)
    assert feats.shape == (3, 12)
    for f, (p, a) in zip(feats, pairs):
        assert f == pytest.approx(lm_head_gradient_reference(tiny_model, p, a, (4, 3), seed=1), rel=1e-3, abs=1e-6)  # fp32 sums in another order (thread count)


def test_binary_matrix_from_em_stored_with_the_study(tmp_path):
    from remix_ds.forgetting.store import MatrixStore, load_matrix

    rng = np.random.default_rng(10)
    ids = [f"w{j}" for j in range(40)]
    store = MatrixStore(tmp_path)
    em0 = rng.random(40) < 0.5
    store.save_base(ids, rng.random(40), np.full(40, 5), rng.normal(size=(40, 4)), em_before=em0)
    em = {}
    for name in ("a", "b", "c"):
        em[name] = rng.random(40) < 0.5
        extra = {"em_after": em[name]} if name != "b" else {}  # b measured without EM
        store.save_row(name, {"v": 1}, rng.random(40), {}, rng.normal(size=4), **extra)
    store.assemble({n: {"v": 1} for n in ("a", "b", "c")}, {"steps": 3})
    mat = load_matrix(tmp_path)
    bm, source = predict_mod._binary(mat.finished(), PredictConfig(), log=lambda *a: None)
    assert source == "EM stored with the study" and bm.task_names == ["a", "c"]
    assert np.array_equal(bm.z, np.array([1.0 - em["a"][em0], 1.0 - em["c"][em0]]))
    assert bm.example_ids == [i for i, ok in zip(ids, em0) if ok]


def test_score_nll_em_equals_the_evaluators_rows(trained_tiny):
    from eval_tiny import kvr_examples

    from remix_ds.data.tokenize import pad_id
    from remix_ds.eval.config import EvalConfig
    from remix_ds.eval.items import make_items
    from remix_ds.eval.runner import evaluate
    from remix_ds.forgetting.nll import score_nll_em

    model, tok, _ = trained_tiny
    examples = kvr_examples()
    cfg = EvalConfig(mode="fused", max_seq_len=64, max_batch_tokens=256)
    rows = evaluate(model, tok, examples, cfg).rows
    nll, em = score_nll_em(model, make_items(examples, tok), cfg, pad_id(tok))
    assert em.tolist() == [r["fused_correct"] for r in rows] and 0 < em.sum() < len(em)
    assert nll == pytest.approx([r["answer_nll"] for r in rows], abs=1e-5)


def test_features_command_writes_task_and_example_gradients(tmp_path):
    import argparse

    from remix_ds import models
    from remix_ds.data import tokenize
    from remix_ds.forgetting.commands import add_forgetting_command, run_features
    from remix_ds.forgetting.config import load_forgetting_config
    from remix_ds.forgetting.measure import upstream_for
    from remix_ds.forgetting.similarity import lm_head_gradients, task_pairs
    from remix_ds.forgetting.store import load_features

    words = "apple river music table green light stone happy".split()
    rows = {"up": [{"id": f"u{i}", "prompt": f"Say {words[i % 8]}", "answer": f"{words[(3 * i) % 8]} {i}"} for i in range(9)],
            "a": [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(6)],
            "b": [{"prompt": f"Capitalize {w}", "answer": w.upper()} for w in words[:6]]}
    for name, rs in rows.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    overrides = [f"output_dir={tmp_path / 'study'}", "upstream.kind=examples",
                 f"upstream.source.dataset={tmp_path / 'up.jsonl'}", "upstream.num_examples=9",
                 f"tasks=[{{dataset: {tmp_path / 'a.jsonl'}}}, {{dataset: {tmp_path / 'b.jsonl'}}}]",
                 "measure.embed_task_examples=4", "measure.embed_batch_size=3"]
    parser = argparse.ArgumentParser()
    add_forgetting_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["forgetting", "features", "-", *overrides])
    assert args.func is run_features
    args.config = None
    assert run_features(args) == 0
    cfg = load_forgetting_config(None, overrides)
    upstream, tok = upstream_for(cfg)
    task_grad, example_grad = load_features(tmp_path / "study" / "features.npz", ["b", "a", "c"], upstream.ids)
    assert example_grad.shape == (9, 256) and np.isnan(task_grad[2]).all()
    model = models.load_for_inference("tiny", device="cpu")
    pad = tokenize.pad_id(tok)
    pairs = task_pairs(cfg, cfg.tasks[1], tok)
    assert len(pairs) == 4
    expected = lm_head_gradients(model, pairs, cfg.finetune.eval, pad).mean(0)
    assert task_grad[0] == pytest.approx(expected, rel=1e-5, abs=1e-9)  # features for b, asked for first
    with pytest.raises(ConfigError, match="another upstream set"):
        load_features(tmp_path / "study" / "features.npz", ["a"], upstream.ids[:-1])


def test_eval_inputs_and_config_errors_name_the_file_or_key(tmp_path):
    from remix_ds.data.records import DataError
    from remix_ds.forgetting.binary import from_eval_dir
    from remix_ds.forgetting.config import load_forgetting_config

    eval_file(tmp_path, "base", {"x0": True, "x1": False, "x2": True})
    eval_file(tmp_path, "t0", {"x0": False, "x2": True})
    with pytest.raises(DataError, match=r"t0.jsonl: 1 example\(s\) of base.jsonl not scored, e.g. id 'x1'"):
        from_eval_dir(tmp_path, ["t0"], log=lambda *a: None)
    with pytest.raises(ConfigError, match="predict.compare_to"):
        load_forgetting_config(None, ["predict.methods=[additive, knn]"])
    cfg = load_forgetting_config(None, ["predict.methods=[additive, knn]", "predict.compare_to=knn",
                                        "predict.splits={ood: ['dolly_*']}", "predict.reveal=per_task"])
    assert cfg.predict.splits == {"ood": ["dolly_*"]} and cfg.predict.seeds == list(range(10))


def test_analyze_reports_gradient_similarity_when_features_exist(tmp_path):
    from scipy import stats

    from remix_ds.forgetting.analyze import analyze, markdown
    from remix_ds.forgetting.config import AnalyzeConfig

    T, E, Z = known_factors(m=6, n=50, r=3, seed=11)
    mat = Matrix(z=Z, task_names=[f"t{i}" for i in range(6)], example_ids=[f"e{j}" for j in range(50)],
                 done=np.ones(6, bool), steps=5, task_grad=T, example_grad=E)
    res = analyze(mat, AnalyzeConfig(), None, log=lambda *a: None)
    S = (T / np.linalg.norm(T, axis=1, keepdims=True)) @ (E / np.linalg.norm(E, axis=1, keepdims=True)).T
    assert res["gradient_similarity"]["spearman"] == pytest.approx(stats.spearmanr(S.ravel(), Z.ravel()).statistic)
    assert "cos(task gradient, example gradient)" in markdown(res)


def test_complete_row_is_the_predictor_api_and_bad_inputs_fail_before_any_fit(tmp_path, monkeypatch):
    from remix_ds.data.records import DataError
    from remix_ds.forgetting.complete import make_predictor

    T, E, Z = known_factors(m=10, n=200, r=2, seed=12)
    cfg = PredictConfig(revealed=20)
    cols = revealed_columns(200, 20, 0, 9)
    row = predict_mod.complete_row(Z[:9], cols, Z[9, cols], cfg, "mf")
    assert row == pytest.approx(make_predictor("mf").fit(Z[:9]).fold_in(cols, Z[9, cols]))
    assert np.sqrt(np.mean((row - Z[9]) ** 2)) < 0.05  # exact rank 2: the fold-in recovers the row
    # A bad eval file is found before the continuous variants are fitted.
    eval_file(tmp_path, "base", {f"e{j}": True for j in range(200)})
    (tmp_path / "t0.jsonl").write_text("not json\n")
    fits = []
    monkeypatch.setattr(predict_mod, "evaluate_splits", lambda *a, **k: fits.append(1))
    mat = Matrix(z=Z, task_names=[f"t{i}" for i in range(10)], example_ids=[f"e{j}" for j in range(200)],
                 done=np.ones(10, bool), steps=5)
    with pytest.raises(DataError, match=r"t0.jsonl:1"):
        predict_mod.predict(mat, PredictConfig(binary_eval_dir=str(tmp_path)), None, log=lambda *a: None)
    assert fits == []
