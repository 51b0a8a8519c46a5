"""`remix-ds demo`: the embedded default, a tiny two-stage continual-memorization run on CPU.

Stage 1 trains the built-in tiny model on D_A (generated key-value pairs) and scores EM(D_A);
stage 2 continues from stage 1's exported weights on D_B (a second, disjoint key-value set) and
scores EM(D_A) again: the drop is forgetting. Everything runs in one process through the same
Trainer, DeepSpeed ZeRO-3 engine and evaluator as `remix-ds train`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from remix_ds.config import RunConfig, load_config


def _write_jsonl(path: Path, examples) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for ex in examples:
            f.write(json.dumps({"id": ex.id, "prompt": ex.prompt, "answer": ex.answer}) + "\n")
    return path


def stage_configs(base: RunConfig, out: Path) -> tuple[RunConfig, RunConfig]:
    """Stage-1 and stage-2 configs: D_A = kvr (data.kvr), D_B = a second kvr set as a local file."""
    from remix_ds.data.datasets import generate_kvr

    d_b = _write_jsonl(out / "data" / "d_b.jsonl",
                       generate_kvr(replace(base.data.kvr, seed=base.data.kvr.seed + 1)))
    s1 = load_config(None, [])
    s1.model, s1.optim, s1.deepspeed = base.model, base.optim, base.deepspeed
    s1.train = replace(base.train, output_dir=str(out / "stage1"))
    s1.data = replace(base.data, dataset="kvr")
    s1.eval = replace(base.eval, datasets=["kvr"], write_rows=True)

    s2 = load_config(None, [])
    s2.model = replace(base.model, init_from=str(out / "stage1" / "final"))
    s2.optim, s2.deepspeed = base.optim, base.deepspeed
    s2.train = replace(base.train, output_dir=str(out / "stage2"))
    s2.data = replace(base.data, dataset=str(d_b))
    s2.eval = replace(base.eval, datasets=["kvr", str(d_b)], write_rows=True)
    return s1, s2


def run_stage(cfg: RunConfig) -> dict:
    from remix_ds.engine.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        rows = trainer.fit()
    finally:
        trainer.close()
    final = {}
    for row in rows:
        final.update({k: v for k, v in row.items() if k.startswith("eval/")})
    return final


def _em(metrics: dict, name: str) -> float:
    return next(v for k, v in metrics.items() if k.startswith("eval/") and name in k and k.endswith("/em"))


def run(config: str | None, overrides: list[str]) -> dict:
    base = load_config(config or Path(__file__).with_name("demo.yaml"), overrides)
    out = Path(base.train.output_dir)
    s1, s2 = stage_configs(base, out)
    m1 = run_stage(s1)
    m2 = run_stage(s2)
    d_b_name = Path(s2.data.dataset).stem
    table = {
        "em_A_after_stage1": _em(m1, "kvr"),
        "em_A_after_stage2": _em(m2, "/kvr/"),
        "em_B_after_stage2": _em(m2, d_b_name),
    }
    table["forgetting_A"] = table["em_A_after_stage1"] - table["em_A_after_stage2"]
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    print("\n| EM(D_A) after stage 1 | EM(D_A) after stage 2 | EM(D_B) after stage 2 | forgetting |")
    print("|---|---|---|---|")
    print(f"| {table['em_A_after_stage1']:.3f} | {table['em_A_after_stage2']:.3f} | "
          f"{table['em_B_after_stage2']:.3f} | {table['forgetting_A']:.3f} |")
    print(f"\nwritten: {out / 'summary.json'}, per-example rows under {out}/stage*/eval/")
    return table


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="tiny two-stage train + eval on CPU (the embedded default)")
    p.add_argument("config", nargs="?", help="run config (default: the built-in demo.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=10")
    p.set_defaults(func=lambda args: run(args.config, args.overrides) and 0)
