"""Forgetting matrices: which upstream examples does fine-tuning on each task forget, can a few
measured entries predict the rest, and does replaying the predicted ones help?

    config.py    ForgettingConfig (finetune template, upstream set, tasks, measure/analyze/predict/replay)
    upstream.py  the N upstream examples as evaluator items (token windows or instruction examples)
    nll.py       fused-pass per-example NLL and base-model embeddings on all ranks
    store.py     OUT/base.npz, OUT/rows/TASK.npz, assembled OUT/matrix.npz + matrix.json
    measure.py   one Trainer run per task -> one row (resumable task by task)
    analyze.py   spectrum, rank-k R^2, rank-1 and additive fits, heatmap, embedding similarity
    complete.py  predictors: row/column means, additive, task-kNN, biased MF (ALS; fold-in or refit),
                 random, logistic MF / additive (binary), similarity baselines
    published.py the paper's completion methods in numpy (BaselineOnly, KNNBaseline, biased SVD with
                 surprise's SGD order; logistic W.H / additive), refit per test row; BaselineOnly ALS (R^2)
    parity.py    `forgetting parity`: published methods and ours on the parity pack vs the reference's outputs
    predict.py   held-out-task protocol (named splits or folds, shared revealed columns), offline,
                 online and binary, metrics over seeds, Holm-corrected paired tests
    splits.py    named test splits / task folds; the revealed columns per seed
    metrics.py   per-row RMSE, Pearson, AUROC (rank formula), F1 / precision / recall, top-k; the paper's pooled metrics
    stats.py     holm, paired Wilcoxon comparisons over (task, seed)
    binary.py    the binary matrix 1 - EM after on base-correct examples (eval files or stored EM)
    similarity.py  projected LM-head gradient features (grad_sim), forward passes only (ZeRO-3 safe)
    replay.py    none / uniform / predicted / oracle replay, paired tests, markdown report
    online.py    the in-run online variant: uniform replay, probe + completed row at the switch step, weighted replay
    tasks.py     task families (FLAN / Tulu-v2 / Dolly) from the hub or a local copy; the Tulu upstream sample
    commands.py  `remix-ds forgetting measure|analyze|predict|replay-experiment|features|parity`
"""
