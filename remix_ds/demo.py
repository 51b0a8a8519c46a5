"""`remix-ds demo`: the embedded default, a toy-scale REMIX grid on CPU (see demo.yaml).

The same grid runner as `remix-ds experiment` (real Trainer, DeepSpeed ZeRO-3 engine and
evaluator, stages in this process): D_A = generated key-value pairs; D_B = a second key-value
set and passages of the built-in generic corpus; strategies none / random / generic / replay.
Prints the EM/forgetting table and writes results.csv/json, report.md and plots to
`output_dir` (default runs/demo). `--seeds N` runs every cell with seeds 0..N-1 (the grid's seed
axis) and adds means with 95% CIs and paired comparisons against `none` to the report.
"""

from __future__ import annotations

import json
from pathlib import Path

from remix_ds.configtools import ConfigError

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def seeds_override(n: int) -> list[str]:
    """`--seeds N`: the grid's seed axis 0..N-1 (N = 1: no axis, the demo as recorded in docs/demo_results.json)."""
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n}")
    return [] if n == 1 else [f"seeds=[{','.join(str(s) for s in range(n))}]"]


# docs/toy_study.md: on the toy scale no stage-2 strength lets random or generic mixing keep D_A
# beyond noise while `none` still learns D_B; the demo says whether its own run agrees.
TOY_SCALE_NOTE = ("At toy scale, random-word and generic mixing did not reduce forgetting beyond noise in any "
                  "cell where `none` learned D_B (EM(D_B) >= {learned}); {replay}. This demo shows the pipeline, "
                  "not REMIX's retention effect at 8B (docs/toy_study.md).")


def toy_scale_note(rows: list[dict], comparisons: list[dict], learned: float = 0.8) -> str | None:
    """The demo's closing line, from its rows and the report's paired comparisons against `none`
    (results_summary.json): None when a random/generic mixing strategy forgot significantly less
    than `none` on a D_B that `none` learned (EM(D_B) >= ``learned``)."""
    learned_b = {(r["d_a"], r["d_b"]) for r in rows
                 if r.get("status") == "done" and r.get("strategy") == "none" and r["em_b_stage2"] >= learned}
    better = [c for c in comparisons if (c["d_a"], c["d_b"]) in learned_b and c["significant"] == "yes" and c["diff"] < 0]
    if any("replay" not in c["strategy"] for c in better):
        return None
    replay = ("only replay did" if any("replay" in c["strategy"] for c in better)
              else "neither did any other strategy")
    return TOY_SCALE_NOTE.format(learned=learned, replay=replay)


def run(config: str | None, overrides: list[str]) -> list[dict]:
    import warnings

    from remix_ds.experiments.config import load_experiment

    # DeepSpeed 0.19's ZeRO-3 calls torch's deprecated collective names on every step; on the
    # demo's console that drowns the table (the calls themselves are fine).
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+`? is deprecated", category=FutureWarning)
    from remix_ds.experiments.grid import run_experiment

    cfg = load_experiment(config or DEMO_CONFIG, overrides)
    rows = run_experiment(cfg)
    summary = Path(cfg.output_dir) / "results_summary.json"
    note = toy_scale_note(rows, json.loads(summary.read_text()).get("comparisons", [])) if summary.is_file() else None
    if note:
        print("\n" + note)
    return rows


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="toy REMIX grid on CPU: 2 D_B x 4 strategies (the embedded default)")
    p.add_argument("config", nargs="?", help="experiment config (default: the built-in demo.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stage2.epochs=10 'strategies=[none,replay=0.5]'")
    p.add_argument("--seeds", type=int, default=1, help="run every cell with seeds 0..N-1 and report 95%% CIs "
                   "(default 1: about 7 minutes on 2 cores; each seed adds about as much)")
    p.set_defaults(func=lambda args: 0 if all(r.get("status") == "done" for r in
                                              run(args.config, seeds_override(args.seeds) + args.overrides)) else 1)
