"""`remix-ds demo`: the embedded default, a toy-scale REMIX grid on CPU (see demo.yaml).

The same grid runner as `remix-ds experiment` (real Trainer, DeepSpeed ZeRO-3 engine and
evaluator, stages in this process): D_A = generated key-value pairs; D_B = a second key-value
set and passages of the built-in generic corpus; strategies none / random / generic / replay.
Prints the EM/forgetting table and writes results.csv/json, report.md and plots to
`output_dir` (default runs/demo). `--seeds N` runs every cell with seeds 0..N-1 (the grid's seed
axis) and adds means with 95% CIs and paired comparisons against `none` to the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import date
from pathlib import Path

from remix_ds.cachedir import write_text_atomic
from remix_ds.configtools import ConfigError

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
LOCK_FILE = "constraints-cpu.txt"
README_BEGIN, README_END = "<!-- demo-results:begin -->", "<!-- demo-results:end -->"
ROW_KEYS = ("d_a", "d_b", "strategy", "status", "em_a_stage1", "em_a_stage2", "em_b_stage2", "forgetting",
            "stage1_epochs", "stage1_steps", "stage2_steps", "pres_s1_nll_change", "pres_s2_nll_change")


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
NOTHING_LEARNED_NOTE = ("In this run `none` learned no D_B to EM(D_B) >= {learned}, so it cannot say whether random-word "
                        "or generic mixing forgets less at equal learning; {replay}. This demo shows the pipeline, "
                        "not REMIX's retention effect at 8B (docs/toy_study.md).")


def toy_scale_note(rows: list[dict], comparisons: list[dict], learned: float = 0.8) -> str | None:
    """The demo's closing line, from its rows and the report's paired comparisons against `none`
    (results_summary.json): None when a random/generic mixing strategy forgot significantly less
    than `none` on a D_B that `none` learned (EM(D_B) >= ``learned``)."""
    learned_b = {(r["d_a"], r["d_b"]) for r in rows
                 if r.get("status") == "done" and r.get("strategy") == "none" and r["em_b_stage2"] >= learned}
    if not learned_b:
        kept = any("replay" in c["strategy"] and c["significant"] == "yes" and c["diff"] < 0 for c in comparisons)
        return NOTHING_LEARNED_NOTE.format(learned=learned, replay="replay kept D_A significantly better than `none`"
                                           if kept else "no strategy kept D_A significantly better than `none`")
    better = [c for c in comparisons if (c["d_a"], c["d_b"]) in learned_b and c["significant"] == "yes" and c["diff"] < 0]
    if any("replay" not in c["strategy"] for c in better):
        return None
    replay = ("only replay did" if any("replay" in c["strategy"] for c in better)
              else "neither did any other strategy")
    return TOY_SCALE_NOTE.format(learned=learned, replay=replay)


def _ci(row: dict, m: str) -> str:
    return f"{row[m]:.3f} [{row[m + '_lo']:.3f}, {row[m + '_hi']:.3f}]"


def readme_table(recorded: dict) -> str:
    """The README's demo table, rendered from a recorded run (docs/demo_results.json)."""
    ci = {(r["d_b"], r["strategy"]): r for r in recorded["summary"]}
    lines = ["| D_B | strategy | EM(D_A) stage 1 | EM(D_A) stage 2 [95% CI] | EM(D_B) [95% CI] | forgetting [95% CI] | "
             "stage-1 epochs | generic NLL change, stage 1 |", "|---|---|---|---|---|---|---|---|"]
    for r in recorded["rows"]:
        c = ci[(r["d_b"], r["strategy"])]
        lines.append(f"| {r['d_b']} | {r['strategy']} | {r['em_a_stage1']:.3f} | {_ci(c, 'em_a_stage2')} | "
                     f"{_ci(c, 'em_b_stage2')} | {_ci(c, 'forgetting')} | {r['stage1_epochs']:g} | "
                     f"{r['pres_s1_nll_change']:+.2f} |")
    return "\n".join(lines)


def provenance() -> dict:
    """What the demo's numbers depend on besides the code: the lock, the built-in corpus, Python, torch."""
    import torch

    from remix_ds.data import corpus

    lock = Path(LOCK_FILE)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None,
            "corpus_sha256": corpus.BUILTIN_SHA256, "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "commit": commit,
            "demo_yaml_sha256": hashlib.sha256(DEMO_CONFIG.read_bytes()).hexdigest()}


def record(output_dir: Path, path: Path, readme: Path | None) -> dict:
    """Write a finished default demo's rows, CIs and comparisons with their provenance to ``path`` and
    the README's table (between its markers) from them."""
    results = json.loads((output_dir / "results.json").read_text())
    summary = json.loads((output_dir / "results_summary.json").read_text())
    recorded = {"command": "remix-ds demo", "date": date.today().isoformat(), **provenance(),
                "rows": [{k: r[k] for k in ROW_KEYS if k in r} for r in results],
                "summary": summary["summary"], "comparisons": summary["comparisons"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(recorded, indent=1) + "\n")
    if readme is not None and readme.is_file():
        text = readme.read_text()
        if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
            raise ConfigError(f"{readme}: needs one {README_BEGIN} and one {README_END} line around the demo table")
        head, rest = text.split(README_BEGIN)
        write_text_atomic(readme, f"{head}{README_BEGIN}\n{readme_table(recorded)}\n{README_END}{rest.split(README_END)[1]}")
    print(f"recorded: {path}" + (f" and the table in {readme}" if readme is not None and readme.is_file() else ""))
    return recorded


def run(config: str | None, overrides: list[str], record_to: str | None = None) -> list[dict]:
    from remix_ds.experiments.config import load_experiment
    from remix_ds.experiments.grid import run_experiment

    if record_to and (config or [o for o in overrides if not o.startswith("output_dir=")]):
        raise ConfigError("--record records the default demo only (no config or overrides other than output_dir=)")

    cfg = load_experiment(config or DEMO_CONFIG, overrides)
    rows = run_experiment(cfg)
    summary = Path(cfg.output_dir) / "results_summary.json"
    note = toy_scale_note(rows, json.loads(summary.read_text()).get("comparisons", [])) if summary.is_file() else None
    if note:
        print("\n" + note)
    if record_to and all(r.get("status") == "done" for r in rows):
        record(Path(cfg.output_dir), Path(record_to), Path("README.md"))
    return rows


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="toy REMIX grid on CPU: 2 D_B x 4 strategies (the embedded default)")
    p.add_argument("config", nargs="?", help="experiment config (default: the built-in demo.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stage2.epochs=10 'strategies=[none,replay=0.5]'")
    p.add_argument("--seeds", type=int, default=1, help="run every cell with seeds 0..N-1 and report 95%% CIs "
                   "(default 1: about 7 minutes on 2 cores; each seed adds about as much)")
    p.add_argument("--record", nargs="?", const="docs/demo_results.json", metavar="PATH",
                   help="after a finished default run, write its rows and provenance to PATH (default "
                   "docs/demo_results.json) and the table in ./README.md (run from the repository root)")
    p.set_defaults(func=lambda args: 0 if all(r.get("status") == "done" for r in run(
        args.config, seeds_override(args.seeds) + args.overrides, record_to=args.record)) else 1)
