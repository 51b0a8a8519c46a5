"""`remix-ds forgetting measure|analyze|predict|replay-experiment`.

    remix-ds forgetting measure CONFIG [key=value ...]             fine-tune per task, store the matrix (resumable)
    remix-ds forgetting analyze CONFIG|OUT_DIR [key=value ...]     spectrum, fits, heatmap, embedding similarity
    remix-ds forgetting predict CONFIG|OUT_DIR [key=value ...]     matrix completion for held-out tasks
    remix-ds forgetting features CONFIG|OUT_DIR [key=value ...]    projected LM-head gradients (grad_sim predictor)
    remix-ds forgetting replay-experiment CONFIG [key=value ...]   none / uniform / predicted / oracle replay
    remix-ds forgetting parity PACK [--out DIR] [--seed S]         published methods vs the reference's outputs

CONFIG is a ForgettingConfig YAML/JSON (remix_ds/forgetting/config.py); OUT_DIR is a study folder
(its saved config.json is used). Overrides are dotted keys, e.g. ``measure.steps=200``,
``finetune.train.global_batch_size=16``, ``predict.revealed=50``.
"""

from __future__ import annotations

import argparse


def _load(args):
    from remix_ds.forgetting.config import load_forgetting_config

    return load_forgetting_config(args.config, args.overrides)


def run_measure(args) -> int:
    from remix_ds.forgetting.measure import measure

    cfg = _load(args)
    mat = measure(cfg)
    print(f"[forgetting] matrix {mat.z.shape[0]} x {mat.z.shape[1]} ({int(mat.done.sum())} rows done) -> "
          f"{cfg.output_dir}/matrix.npz, matrix.json")
    return 0


def run_analyze(args) -> int:
    from remix_ds.forgetting.analyze import analyze
    from remix_ds.forgetting.store import load_matrix

    cfg = _load(args)
    analyze(load_matrix(cfg.output_dir), cfg.analyze, cfg.output_dir)
    print(f"[forgetting] written: {cfg.output_dir}/analysis.md, analysis.json, analysis.npz, heatmap.png")
    return 0


def run_predict(args) -> int:
    from remix_ds.forgetting.predict import predict
    from remix_ds.forgetting.store import load_matrix

    cfg = _load(args)
    predict(load_matrix(cfg.output_dir), cfg.predict, cfg.output_dir)
    print(f"[forgetting] written: {cfg.output_dir}/predict.md, predict.json")
    return 0


def run_features(args) -> int:
    from remix_ds.forgetting.similarity import compute_features

    cfg = _load(args)
    path = compute_features(cfg)
    print(f"[forgetting] written: {path} (predict reads it for grad_sim)")
    return 0


def run_replay(args) -> int:
    from remix_ds.forgetting.replay import replay_experiment

    cfg = _load(args)
    replay_experiment(cfg)
    print(f"[forgetting] written: {cfg.output_dir}/replay/report.md, results.json")
    return 0


def run_parity(args) -> int:
    from remix_ds.forgetting.parity import main

    main(args.pack, args.out, args.seed)
    print(f"[forgetting] written: {args.out}/parity.md, parity.json")
    return 0


def add_forgetting_command(subparsers) -> None:
    """Register ``remix-ds forgetting ...`` (each subcommand sets ``func=``)."""
    p = subparsers.add_parser("forgetting", help="forgetting matrices: measure, analyze, predict, replay experiment",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="forgetting_command", required=True)
    for name, func, target, help_ in [
        ("measure", run_measure, "CONFIG", "fine-tune the base model on each task alone; store z = NLL after - before"),
        ("analyze", run_analyze, "CONFIG|OUT_DIR", "SVD spectrum, rank-k R^2, rank-1 and additive fits, heatmap"),
        ("predict", run_predict, "CONFIG|OUT_DIR", "predict held-out task rows from k revealed entries"),
        ("replay-experiment", run_replay, "CONFIG", "no / uniform / predicted / oracle replay with paired tests"),
        ("features", run_features, "CONFIG|OUT_DIR", "projected LM-head gradients of tasks and upstream examples"),
    ]:
        q = sub.add_parser(name, help=help_)
        q.add_argument("config", metavar=target, help="forgetting config (YAML/JSON) or study folder")
        q.add_argument("overrides", nargs="*", help="dotted overrides, e.g. measure.steps=200")
        q.set_defaults(func=func)
    q = sub.add_parser("parity", help="the published methods and ours on the parity pack, against the reference's outputs")
    q.add_argument("pack", metavar="PACK", help="folder with synth_N1000.npz and the reference's ref_* outputs")
    q.add_argument("--out", default="runs/forgetting/parity", help="output folder (parity.json, parity.md)")
    q.add_argument("--seed", type=int, default=0, help="seed of the revealed columns and of svd / lgmf init")
    q.set_defaults(func=run_parity)
