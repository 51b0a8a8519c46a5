"""Results of a grid: results.csv / results.json (one row per cell), report.md, and PNG plots.

Plots (matplotlib, Agg backend, written beside the table):
- `forgetting.png`: forgetting (EM(D_A) after stage 1 - after stage 2) per strategy, one bar group per D_B;
- `forgetting_curves.png`: EM(D_A) over stage-2 steps from the in-training eval hook, one panel per (D_A, D_B);
- `logit_lens.png`: mean probability of the gold first answer token per layer (stage-1 models), per strategy.

Statistics (`results_summary.json` and the report's "Mean and 95% CI" section; stats.py): per
(D_A, D_B, strategy, loss mode), mean and 95% CI of EM(D_A) after stage 1 and 2, EM(D_B) and
forgetting from the per-example eval files, bootstrapped over factoids and seeds; per strategy, a
paired comparison of forgetting against `none` (same factoids, same seeds), Holm-adjusted over the
strategies of one (D_A, D_B, loss mode). The grid's seeds share their factoids, so both use the
crossed bootstrap (`shared_items`) whenever every seed scored the same ids.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from remix_ds.cachedir import write_text_atomic
from remix_ds.eval.runner import latest_eval_rows
from remix_ds.experiments import stats
from remix_ds.experiments.config import Stage1Config, Stage2Config
from remix_ds.experiments.layout import Cell, GridLayout

COLUMNS = ["d_a", "d_b", "strategy", "loss_mode", "mix_schedule", "mix_redraw", "status", "em_a_stage1", "em_a_stage2", "em_b_stage2", "forgetting",
           "stage1_reached_threshold", "stage1_steps", "stage1_epochs", "stage1_stop", "stage2_steps", "stage2_stop"]


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
    if any(r.get("seed") is not None for r in rows):
        cols.insert(3, "seed")
    if any(r.get("span_acc_a_stage1") is not None for r in rows):
        cols[cols.index("em_a_stage2") + 1:cols.index("em_a_stage2") + 1] = ["span_acc_a_stage1", "span_acc_a_stage2"]
    if any(r.get("stage2_setting") is not None for r in rows):  # a stage2_sweep grid
        cols.insert(3, "stage2_setting")
    if any(r.get("stage1_reached_threshold") is False for r in rows):  # cells built on a stage 1 below threshold
        cols.insert(cols.index("em_a_stage1") + 1, "stage1_reached_threshold")
    for col in ("mix_redraw", "mix_schedule", "loss_mode"):  # shown when the grid varies them
        if len({r.get(col) for r in rows}) > 1:
            cols.insert(3, col)
    return markdown_table(rows, cols)


def below_threshold(rows: list[dict]) -> list[dict]:
    """The stage-1 runs that ended below the EM threshold, with the finished cells built on each:
    [{"d_a", "strategy_stage1", "em_a_stage1", "stage1_stop", "cells": [d_b x strategy, ...]}] (the grid summary's flag)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        if r.get("status") != "done" or r.get("stage1_reached_threshold", True):
            continue
        key = (r["d_a"], r.get("stage1_key") or r["strategy"], r.get("loss_mode"), r.get("seed"))
        e = out.setdefault(key, {"d_a": r["d_a"], "stage1": key[1], "em_a_stage1": r["em_a_stage1"],
                                 "stage1_stop": r.get("stage1_stop"), "stage1_epochs": r.get("stage1_epochs"), "cells": []})
        e["cells"].append(f"{r['d_b']} x {r['strategy']}")
    return list(out.values())


def below_threshold_line(name: str, em: float, threshold: float, epochs) -> str:
    """The console line for a stage 1 that ended below the EM threshold."""
    return (f"[experiment] WARNING: stage 1 {name} ended after {epochs} epochs with EM(D_A) = {em:.3f} < "
            f"stage1.em_threshold {threshold:g}; the cells built on it start from a lower EM "
            "(results.csv: stage1_reached_threshold = False)")


def write_tables(out: Path, rows: list[dict]) -> None:
    keys = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in keys})
    write_text_atomic(out / "results.csv", f.getvalue())  # atomic: concurrent grids and readers of one folder
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    write_text_atomic(out / "results.json", json.dumps(clean, indent=2, default=str) + "\n")  # NaN -> null (strict JSON)


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


METRICS = ("em_a_stage1", "em_a_stage2", "em_b_stage2", "forgetting")
"""Per-item metrics of the summary: 1/0 per factoid (EM) and EM_stage1 - EM_stage2 per D_A factoid (forgetting)."""
ALPHA = 0.05
"""Level of the paired comparisons (on Holm-adjusted p-values) and of the 95% intervals."""


def d_b_view(d_b: str, stage2_setting: str | None) -> str:
    """How a D_B is grouped: `D_B@SETTING` in a stage2_sweep grid (each sweep point its own group), else D_B."""
    return d_b if stage2_setting is None else f"{d_b}@{stage2_setting}"


def _group(r: dict) -> tuple:
    return (r["d_a"], d_b_view(r["d_b"], r.get("stage2_setting")), r["strategy"], r["loss_mode"])


def cell_items(layout: GridLayout, cell: Cell) -> dict:
    """Per-item values of one finished cell from its per-example eval files (the files its row came from).

    {"ids_a": D_A ids in stage-1 order, "ids_b": D_B ids, and one float array per METRICS entry}; the
    stage-2 D_A rows are aligned to stage 1 by id.
    """
    a, b = cell.d_a.name, cell.d_b.name
    s2 = layout.cell_dir(cell) / "stage2"
    _, rows1 = latest_eval_rows(layout.stage1_dir(cell), a)
    _, rows2 = latest_eval_rows(s2, a)
    _, rows_b = latest_eval_rows(s2, b)
    ids = [r["id"] for r in rows1]
    after = {r["id"]: float(bool(r["correct"])) for r in rows2}
    if set(after) != set(ids):
        raise ValueError(f"{cell.key}: stage-1 and stage-2 eval rows of {a} score different ids")
    em1 = np.array([float(bool(r["correct"])) for r in rows1])
    em2 = np.array([after[i] for i in ids])
    return {"ids_a": ids, "ids_b": [r["id"] for r in rows_b], "em_a_stage1": em1, "em_a_stage2": em2,
            "em_b_stage2": np.array([float(bool(r["correct"])) for r in rows_b]), "forgetting": em1 - em2}


def _items_by_group(layout: GridLayout, rows: list[dict], log: Callable[[str], None]) -> dict:
    """{(d_a, d_b, strategy, loss_mode): {seed: cell_items}} over the done rows."""
    cells = {(c.d_a.name, d_b_view(c.d_b.name, c.stage2), c.strategy.spec, c.loss_mode or layout.data.loss_mode, c.seed): c
             for c in layout.cells}
    out: dict = {}
    for r in rows:
        if r.get("status") != "done":
            continue
        cell = cells.get((*_group(r), r.get("seed")))
        if cell is None:
            continue
        try:
            out.setdefault(_group(r), {})[r.get("seed")] = cell_items(layout, cell)
        except (OSError, ValueError, KeyError) as e:  # a damaged cell folder: no CI for it, said once
            log(f"[report] {cell.key}: no per-example statistics ({type(e).__name__}: {e})")
    return out


def _shared(per_seed: list[dict], ids: str) -> bool:
    return len({tuple(x[ids]) for x in per_seed}) == 1


def seed_statistics(layout: GridLayout, rows: list[dict], n_boot: int = 2000,
                    log: Callable[[str], None] = print) -> dict:
    """{"summary": one row per (D_A, D_B, strategy, loss mode), "comparisons": each strategy vs `none`}.

    summary: n_seeds, n_a / n_b (items per seed), and for each of METRICS the mean over all factoids
    and seeds with its 95% bootstrap interval (`<metric>`, `<metric>_lo`, `<metric>_hi`).
    comparisons: forgetting(strategy) - forgetting(none), paired over the seeds both ran and the
    factoids (stats.paired_comparison): diff, lo, hi, p, p_holm (Holm over the strategies of one
    (D_A, D_B, loss mode)), n_seeds, n_pairs, significant (p_holm <= 0.05: "yes"/"no").
    """
    groups = _items_by_group(layout, rows, log)
    summary = []
    for (a, b, strategy, mode), by_seed in groups.items():
        per_seed = [by_seed[k] for k in sorted(by_seed, key=lambda k: (k is None, k))]
        row = {"d_a": a, "d_b": b, "strategy": strategy, "loss_mode": mode, "n_seeds": len(per_seed),
               "n_a": len(per_seed[0]["ids_a"]), "n_b": len(per_seed[0]["ids_b"])}
        for m in METRICS:
            ids = "ids_b" if m == "em_b_stage2" else "ids_a"
            est, lo, hi = stats.bootstrap_ci([x[m] for x in per_seed], n_boot=n_boot, shared_items=_shared(per_seed, ids))
            row.update({m: est, f"{m}_lo": lo, f"{m}_hi": hi})
        summary.append(row)
    comparisons = []
    for a, b, mode in dict.fromkeys((g[0], g[1], g[3]) for g in groups):
        base = groups.get((a, b, "none", mode))
        if base is None:
            continue
        family = []
        for (ga, gb, strategy, gm), by_seed in groups.items():
            if (ga, gb, gm) != (a, b, mode) or strategy == "none":
                continue
            seeds = sorted((k for k in by_seed if k in base and by_seed[k]["ids_a"] == base[k]["ids_a"]),
                           key=lambda k: (k is None, k))
            if not seeds:
                continue
            x, y = [by_seed[k]["forgetting"] for k in seeds], [base[k]["forgetting"] for k in seeds]
            shared = _shared([by_seed[k] for k in seeds], "ids_a")
            family.append({"d_a": a, "d_b": b, "loss_mode": mode, "strategy": strategy, "baseline": "none",
                           **stats.paired_comparison(x, y, n_boot=n_boot, shared_items=shared)})
        for c, adjusted in zip(family, stats.holm([c["p"] for c in family])):
            c["p_holm"] = adjusted
            c["significant"] = "yes" if adjusted <= ALPHA else "no"
        comparisons += family
    return {"summary": summary, "comparisons": comparisons}


def _ci(r: dict, m: str) -> str:
    return f"{r[m]:.3f} [{r[m + '_lo']:.3f}, {r[m + '_hi']:.3f}]"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def statistics_markdown(st: dict) -> list[str]:
    """The report's section: the CI table and the paired comparisons against `none`."""
    if not st["summary"]:
        return []
    varied = len({r["loss_mode"] for r in st["summary"]}) > 1
    cols = ["d_a", "d_b", "strategy"] + (["loss_mode"] if varied else []) + ["n_seeds", "n_a"] + list(METRICS)
    table = [{**{c: r[c] for c in cols if c not in METRICS}, **{m: _ci(r, m) for m in METRICS}} for r in st["summary"]]
    n_seeds = max(r["n_seeds"] for r in st["summary"])
    parts = ["", "## Mean and 95% CI over factoids and seeds", "",
             f"Bootstrap over {'seeds and ' if n_seeds > 1 else ''}factoids (percentile interval, 2000 resamples; "
             "every seed scores the same factoids, so one draw of factoids serves all drawn seeds). "
             "Values: mean [2.5%, 97.5%].", "", markdown_table(table, cols)]
    if st["comparisons"]:
        cols = ["d_a", "d_b", "strategy"] + (["loss_mode"] if varied else []) + [
            "diff", "lo", "hi", "p", "p_holm", "n_seeds", "n_pairs", "significant"]
        parts += ["", "### Forgetting against `none` (paired over seeds and factoids)", "",
                  "diff = forgetting(strategy) - forgetting(none) (negative: the strategy forgets less), its 95% "
                  "bootstrap CI; p: two-sided paired sign-flip permutation test (each factoid's differences over "
                  "the seeds flip together); p_holm: Holm-adjusted over the strategies of one D_A x D_B; "
                  f"significant: p_holm <= {ALPHA}.", "",
                  markdown_table([{**c, "p": _p(c["p"]), "p_holm": _p(c["p_holm"])} for c in st["comparisons"]], cols)]
    return parts


def plot_all(layout: GridLayout, rows: list[dict], summary: list[dict] | None = None) -> list[Path]:
    """The PNGs; with `summary` (seed_statistics) the forgetting bars are its means with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, written = layout.out, []
    done = [r for r in rows if r.get("status") == "done"]
    if not done:
        return written
    strategies = list(dict.fromkeys(r["strategy"] for r in done))
    groups = list(dict.fromkeys((r["d_a"], d_b_view(r["d_b"], r.get("stage2_setting")), r["loss_mode"]) for r in done))
    # forgetting per strategy and D_B
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(strategies) / 2), 4))
    width = 0.8 / len(strategies)
    ci = {(r["d_a"], r["d_b"], r["loss_mode"], r["strategy"]): r for r in summary or []}
    for j, s in enumerate(strategies):
        vals = [next((r["forgetting"] for r in done if (r["d_a"], d_b_view(r["d_b"], r.get("stage2_setting")), r["loss_mode"]) == g
                      and r["strategy"] == s), math.nan)
                for g in groups]
        err = None
        if ci:
            got = [ci.get((*g, s)) for g in groups]
            vals = [c["forgetting"] if c else math.nan for c in got]
            err = [[c["forgetting"] - c["forgetting_lo"] if c else 0.0 for c in got],
                   [c["forgetting_hi"] - c["forgetting"] if c else 0.0 for c in got]]
        ax.bar([i + j * width for i in range(len(groups))], vals, width, label=s, yerr=err, capsize=3 if err else 0)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{a} -> {b}" + (f"\n{m}" if len({g[2] for g in groups}) > 1 else "") for a, b, m in groups])
    ax.set_ylabel("forgetting = EM(D_A) stage 1 - stage 2")
    ax.set_title("Forgetting of D_A per strategy" + (" (mean, 95% CI)" if ci else ""))
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
            if (cell.d_a.name, d_b_view(cell.d_b.name, cell.stage2), cell.loss_mode or layout.data.loss_mode) == g:
                label = cell.strategy.spec + ("" if cell.seed is None else f" s{cell.seed}")
                ax.plot([s for s, _ in curve], [e for _, e in curve], marker=".", label=label)
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
                    plots: list[Path], statistics: dict | None = None) -> str:
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
    if statistics:
        parts += statistics_markdown(statistics)
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
    """results.csv/json, results_summary.json, the plots and report.md in `layout.out`; the table and
    failures go to `log`."""
    write_tables(layout.out, rows)
    st = seed_statistics(layout, rows, log=log)
    st["stage1_below_threshold"] = below_threshold(rows)
    write_text_atomic(layout.out / "results_summary.json", json.dumps(st, indent=2) + "\n")
    plots = plot_all(layout, rows, st["summary"])
    write_text_atomic(layout.out / "report.md", report_markdown(layout, stage1, stage2, rows, plots, st))
    log("\n" + main_table([r for r in rows if r.get("status") == "done"]))
    failed = [r for r in rows if r.get("status") != "done"]
    for r in failed:
        log(f"FAILED {r['d_a']} x {r['d_b']} x {r['strategy']}: {r.get('error')}")
    for b in st["stage1_below_threshold"]:
        log(f"BELOW THRESHOLD stage 1 {b['d_a']}/{b['stage1']}: EM(D_A) {b['em_a_stage1']:.3f} after "
            f"{b['stage1_epochs']} epochs; cells built on it: {', '.join(b['cells'])}")
    if any(r["n_seeds"] > 1 for r in st["summary"]):
        log("\n" + "\n".join(statistics_markdown(st)[4:]))
    log(f"\nwritten: {layout.out / 'results.csv'}, results.json, results_summary.json, report.md, "
        + ", ".join(p.name for p in plots))
