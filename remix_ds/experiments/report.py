"""Results of a grid: results.csv / results.json (one row per cell), report.md, and PNG plots.

Plots (matplotlib, Agg backend, written beside the table):
- `forgetting.png`: forgetting (EM(D_A) after stage 1 - after stage 2) per strategy, one bar group per D_B;
- `forgetting_curves.png`: EM(D_A) over stage-2 steps from the in-training eval hook, one panel per (D_A, D_B);
- `logit_lens.png`: mean probability of the gold first answer token per layer (stage-1 models), per strategy.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable

from remix_ds.experiments.config import Stage1Config, Stage2Config
from remix_ds.experiments.layout import GridLayout

COLUMNS = ["d_a", "d_b", "strategy", "loss_mode", "mix_schedule", "mix_redraw", "status", "em_a_stage1", "em_a_stage2", "em_b_stage2", "forgetting",
           "stage1_reached_threshold", "stage1_steps", "stage1_epochs", "stage2_steps"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main_table(rows: list[dict]) -> str:
    """The printed table: EM after each stage and forgetting per cell."""
    cols = ["d_a", "d_b", "strategy", "em_a_stage1", "em_a_stage2", "em_b_stage2", "forgetting", "stage1_epochs"]
    if any(r.get("span_acc_a_stage1") is not None for r in rows):
        cols[cols.index("em_a_stage2") + 1:cols.index("em_a_stage2") + 1] = ["span_acc_a_stage1", "span_acc_a_stage2"]
    if any(r.get("stage2_setting") is not None for r in rows):  # a stage2_sweep grid
        cols.insert(3, "stage2_setting")
    for col in ("mix_redraw", "mix_schedule", "loss_mode"):  # shown when the grid varies them
        if len({r.get(col) for r in rows}) > 1:
            cols.insert(3, col)
    return markdown_table(rows, cols)


def write_tables(out: Path, rows: list[dict]) -> None:
    keys = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    (out / "results.json").write_text(json.dumps(clean, indent=2, default=str) + "\n")  # NaN -> null (strict JSON)


def _curves(layout: GridLayout) -> dict:
    out = {}
    for cell in layout.cells:
        f = layout.cell_dir(cell) / "done.json"
        if f.is_file():
            out[cell.key] = (cell, json.loads(f.read_text())["curve_a"])
    return out


def _lens(layout: GridLayout) -> dict:
    out = {}
    for cell in layout.cells:
        f = layout.cell_dir(cell) / "analysis.json"
        if f.is_file():
            d = json.loads(f.read_text())
            if "lens_s1" in d:
                out.setdefault((cell.d_a.name, cell.loss_mode), {})[cell.strategy.stage1_tag()] = d["lens_s1"]
    return out


def plot_all(layout: GridLayout, rows: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, written = layout.out, []
    done = [r for r in rows if r.get("status") == "done"]
    if not done:
        return written
    strategies = list(dict.fromkeys(r["strategy"] for r in done))
    groups = list(dict.fromkeys((r["d_a"], r["d_b"], r["loss_mode"]) for r in done))
    # forgetting per strategy and D_B
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(strategies) / 2), 4))
    width = 0.8 / len(strategies)
    for j, s in enumerate(strategies):
        vals = [next((r["forgetting"] for r in done if (r["d_a"], r["d_b"], r["loss_mode"]) == g and r["strategy"] == s), math.nan)
                for g in groups]
        ax.bar([i + j * width for i in range(len(groups))], vals, width, label=s)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{a} -> {b}" + (f"\n{m}" if len({g[2] for g in groups}) > 1 else "") for a, b, m in groups])
    ax.set_ylabel("forgetting = EM(D_A) stage 1 - stage 2")
    ax.set_title("Forgetting of D_A per strategy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "forgetting.png", dpi=120)
    plt.close(fig)
    written.append(out / "forgetting.png")
    # EM(D_A) over stage-2 steps
    curves = _curves(layout)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
    for ax, g in zip(axes[0], groups):
        for key, (cell, curve) in curves.items():
            if (cell.d_a.name, cell.d_b.name, cell.loss_mode or layout.data.loss_mode) == g:
                ax.plot([s for s, _ in curve], [e for _, e in curve], marker=".", label=cell.strategy.spec)
        ax.set_title(f"D_A={g[0]}, D_B={g[1]}", fontsize=9)
        ax.set_xlabel("stage-2 optimizer step")
        ax.set_ylabel("EM(D_A)")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "forgetting_curves.png", dpi=120)
    plt.close(fig)
    written.append(out / "forgetting_curves.png")
    # logit lens
    lens = _lens(layout)
    if lens:
        fig, axes = plt.subplots(1, len(lens), figsize=(4.5 * len(lens), 3.6), squeeze=False)
        for ax, ((a, mode), per) in zip(axes[0], lens.items()):
            for tag, s in per.items():
                ax.plot(range(len(s["mean_prob_per_layer"])), s["mean_prob_per_layer"], marker="o", label=f"{tag} (n={s['n']})")
            ax.set_title(f"D_A={a}" + (f" ({mode})" if mode else "") + ": stage-1 models", fontsize=9)
            ax.set_xlabel("layer (0 = embeddings)")
            ax.set_ylabel("p(gold first token)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "logit_lens.png", dpi=120)
        plt.close(fig)
        written.append(out / "logit_lens.png")
    return written


def report_markdown(layout: GridLayout, stage1: Stage1Config, stage2: Stage2Config, rows: list[dict],
                    plots: list[Path]) -> str:
    done = [r for r in rows if r.get("status") == "done"]
    failed = [r for r in rows if r.get("status") != "done"]
    parts = [f"# REMIX experiment: {layout.out}", "",
             f"{len(rows)} cells ({len(done)} done, {len(failed)} failed). Stage 1: until EM(D_A) >= "
             f"{stage1.em_threshold} (checked by the evaluator every eval) or {stage1.max_epochs:g} epochs; "
             f"stage 2: {stage2.epochs:g} epochs. Forgetting = EM(D_A) after stage 1 - after stage 2, "
             "both computed from the per-example eval files.", "", "## Exact match and forgetting", "", main_table(done)]
    missed = [r for r in done if not r.get("stage1_reached_threshold")]
    if missed:
        parts += ["", f"Note: stage 1 did not reach the EM threshold in {len(missed)} cell(s) "
                      f"({', '.join(sorted({r['d_a'] + '/' + r['strategy'] for r in missed}))}); their forgetting "
                      "starts from a lower EM."]
    if done:
        by = {}
        for r in done:
            by.setdefault(r["strategy"], []).append(r["forgetting"])
        parts += ["", "Mean forgetting per strategy (over D_A x D_B):", "",
                  markdown_table([{"strategy": s, "mean_forgetting": sum(v) / len(v), "cells": len(v)} for s, v in by.items()],
                                 ["strategy", "mean_forgetting", "cells"])]
    if any("lens_s1_recall_layer_mean" in r for r in done):
        parts += ["", "## Logit lens (layer where the gold first answer token becomes and stays top-1)", "",
                  "Over factoids recalled at the end of the stage; layer 0 = embeddings, L = last layer.", "",
                  markdown_table(done, ["d_a", "d_b", "strategy", "lens_s1_n", "lens_s1_recall_layer_mean",
                                        "lens_s1_recall_layer_std", "lens_s2_n", "lens_s2_recall_layer_mean",
                                        "lens_s2_recall_layer_std"])]
    if any("pres_s1_nll_change" in r for r in done):
        parts += ["", "## Preservation on held-out generic text", "",
                  "Per stage (s1: base -> stage 1; s2: stage 1 -> stage 2): change of mean per-token NLL, fraction of "
                  "greedy continuations that changed, rate of continuations ending with EOS within the budget, and "
                  "the EOS rate on D_A prompts (low = the model cannot stop).", "",
                  markdown_table(done, ["d_a", "d_b", "strategy", "loss_mode", "pres_base_nll", "pres_s1_nll_change",
                                        "pres_s1_changed_frac", "pres_s1_task_eos_rate", "pres_s2_nll_change",
                                        "pres_s2_changed_frac", "pres_s2_eos_rate", "pres_s2_task_eos_rate"])]
    if done:
        parts += ["", "## Time", "", markdown_table(done, ["d_a", "d_b", "strategy", "stage1_wall_s", "stage1_eval_s",
                                                         "stage2_wall_s", "stage2_eval_s", "analysis_s", "cell_wall_s"]),
                  "", "Stage-1 times repeat for cells sharing a stage-1 run (it ran once)."]
    if failed:
        parts += ["", "## Failed cells", ""] + [f"- {r['d_a']} x {r['d_b']} x {r['strategy']}: {r.get('error')}" for r in failed]
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts) + "\n"


def write_all(layout: GridLayout, stage1: Stage1Config, stage2: Stage2Config, rows: list[dict],
              log: Callable[[str], None] = print) -> None:
    """results.csv/json, the plots and report.md in `layout.out`; the table and failures go to `log`."""
    write_tables(layout.out, rows)
    plots = plot_all(layout, rows)
    (layout.out / "report.md").write_text(report_markdown(layout, stage1, stage2, rows, plots))
    log("\n" + main_table([r for r in rows if r.get("status") == "done"]))
    failed = [r for r in rows if r.get("status") != "done"]
    for r in failed:
        log(f"FAILED {r['d_a']} x {r['d_b']} x {r['strategy']}: {r.get('error')}")
    log(f"\nwritten: {layout.out / 'results.csv'}, results.json, report.md, " + ", ".join(p.name for p in plots))
