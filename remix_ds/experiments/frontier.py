"""The retention-learning frontier: EM(D_A) kept against EM(D_B) learned, per strategy, along stage 2.

    remix-ds frontier GRID_DIR [GRID_DIR ...] [--out DIR]

A grid with a `stage2_sweep` runs stage 2 at several strengths from one shared stage-1 model; each
(strategy, sweep point) is then one point (EM(D_B) after stage 2, EM(D_A) after stage 2). Points are
read from every grid's `cells/*/done.json` and recomputed from the per-example eval files they name
(stage2/eval/step-N/<set>.jsonl; a mismatch with the row is an error, never a silent pick). The
seed of a row is its `seed` column when the grid has a seed axis, else the grid's `run.train.seed`,
so several one-seed grids with different seeds pool into one report.

Per (D_A, D_B, loss mode) panel, strategy and sweep point: mean and 95% CI of both EMs over seeds
(`stats.bootstrap_ci`: seeds, then factoids within a seed). Per strategy:

    area = integral over x in [0, 1] of f(x), where the frontier f runs through the strategy's points
    sorted by EM(D_B) = x (EM(D_A) = y), linear between neighbouring points, flat at the first
    point's y for x below it, and 0 above the last point's x

i.e. `x_1 * y_1 + trapezoid(y, x)`: the area a strategy keeps of D_A over the D_B it actually
reached (no credit for D_B it never learned; 1.0 = all of D_A kept while all of D_B learned). It is
computed per seed, with a bootstrap CI over seeds, and compared with `none` paired over seeds
(`stats.paired_comparison`), p-values Holm-corrected over all comparisons of the report
(`stats.holm`).

Writes frontier.json (every number), frontier.md (tables) and frontier.png (one panel per
D_A x D_B, one curve per strategy, error bars both ways) to the output folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from remix_ds.data.records import DataError
from remix_ds.eval.runner import eval_steps, rows_file, step_dir
from remix_ds.experiments import stats
from remix_ds.experiments.report import markdown_table

BASELINE = "none"


@dataclass
class Point:
    """One finished cell: a (strategy, sweep point, seed) measurement of one D_A x D_B panel."""

    grid: Path
    key: str
    panel: tuple[str, str, str]
    """(D_A, D_B, loss mode)."""
    strategy: str
    setting: str
    seed: int
    em_a: float
    em_b: float
    correct_a: np.ndarray | None = field(default=None, repr=False)
    """Per-factoid verdicts of D_A after stage 2, in id order (None: no per-example file, the row's EM alone)."""
    correct_b: np.ndarray | None = field(default=None, repr=False)
    ids_a: tuple = ()
    ids_b: tuple = ()


def _rows_file(stage2: Path, name: str, step: int | None) -> Path | None:
    """stage2/eval/step-<step>/<name>.jsonl, or the newest step's when `step` is None."""
    if step is not None:
        f = rows_file(step_dir(stage2 / "eval", step), name)
        return f if f.is_file() else None
    steps = eval_steps(stage2, name)
    return steps[-1][1] if steps else None


def _verdicts(path: Path) -> tuple[tuple, np.ndarray]:
    """(ids, 1/0 verdicts) of an eval rows file, sorted by id (so seeds and strategies line up)."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            out.append((str(r["id"]), float(bool(r["correct"]))))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{i}: not an eval row with `id` and `correct` ({type(e).__name__}: {e})") from None
    out.sort()
    return tuple(k for k, _ in out), np.array([v for _, v in out])


def _checked(path: Path | None, row_em, what: str, done: Path) -> tuple[tuple, np.ndarray | None]:
    if path is None:
        return (), None
    ids, v = _verdicts(path)
    em = float(v.mean()) if len(v) else math.nan
    if row_em is None or not math.isclose(em, float(row_em), abs_tol=1e-9):
        raise DataError(f"{done}: {what} = {row_em} in the row but {em:.6g} in {path} (rerun the cell or remove the stale file)")
    return ids, v


def read_points(grid_dirs: list[str | Path]) -> tuple[list[Point], dict]:
    """Every finished cell of the grids as a Point, and the sweep order / strategy order seen."""
    points: list[Point] = []
    order = {"settings": [], "strategies": []}
    for g in map(Path, grid_dirs):
        cfg_file = g / "experiment_config.json"
        if not cfg_file.is_file():
            raise DataError(f"{g}: not a grid folder (no experiment_config.json)")
        try:
            cfg = json.loads(cfg_file.read_text())
            default_seed = int(cfg["run"]["train"]["seed"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{cfg_file}: cannot read run.train.seed ({type(e).__name__}: {e})") from None
        for name in [st["name"] for st in cfg.get("stage2_sweep") or []]:
            order["settings"] += [name] if name not in order["settings"] else []
        for s in cfg.get("strategies") or []:
            order["strategies"] += [s] if s not in order["strategies"] else []
        for done in sorted((g / "cells").glob("*/done.json")):
            try:
                row = json.loads(done.read_text())["row"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{done}: unreadable ({type(e).__name__}: {e})") from None
            if row.get("status") != "done":
                continue
            stage2 = done.parent / "stage2"
            seed = row.get("seed")
            p = Point(grid=g, key=done.parent.name, panel=(row["d_a"], row["d_b"], row.get("loss_mode") or ""),
                      strategy=row["strategy"], setting=row.get("stage2_setting") or "default",
                      seed=default_seed if seed is None else int(seed),
                      em_a=float(row["em_a_stage2"]), em_b=float(row["em_b_stage2"]))
            p.ids_a, p.correct_a = _checked(_rows_file(stage2, row["d_a"], row.get("stage2_eval_step")),
                                            row["em_a_stage2"], "em_a_stage2", done)
            p.ids_b, p.correct_b = _checked(_rows_file(stage2, row["d_b"], None), row["em_b_stage2"], "em_b_stage2", done)
            points.append(p)
    seen: dict[tuple, Point] = {}
    for p in points:
        k = (p.panel, p.strategy, p.setting, p.seed)
        if k in seen:
            raise DataError(f"seed {p.seed} of {p.key} appears twice ({seen[k].grid} and {p.grid}); give each grid "
                            "its own run.train.seed or use the seed axis")
        seen[k] = p
    if "default" in {p.setting for p in points}:
        order["settings"].append("default")
    for p in points:
        order["strategies"] += [p.strategy] if p.strategy not in order["strategies"] else []
    return points, order


def frontier_area(points: list[tuple[float, float]]) -> float:
    """Area under a frontier of (EM(D_B), EM(D_A)) points in the unit square (see the module docstring)."""
    if not points:
        return math.nan
    pts = sorted((min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)) for x, y in points)
    xs = np.array([x for x, _ in pts])
    ys = np.array([y for _, y in pts])
    return float(xs[0] * ys[0] + np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def _ci(values: list[np.ndarray | float], n_boot: int, shared: bool = False) -> tuple[float, float, float]:
    per_seed = [np.atleast_1d(np.asarray(v, dtype=float)) for v in values]
    est, lo, hi = stats.bootstrap_ci(per_seed, n_boot=n_boot, shared_items=shared)
    return float(est), float(lo), float(hi)


def _shared(ids: list[tuple]) -> bool:
    """Every seed scored the same factoids (a crossed design: one draw of factoids serves all seeds)."""
    return len(set(ids)) == 1 and bool(ids[0])


def summarize(points: list[Point], order: dict, n_boot: int = 2000) -> dict:
    """Point table, areas per strategy and paired area comparisons against `none` (JSON-ready)."""
    panels = list(dict.fromkeys(p.panel for p in points))
    table, areas, comparisons, point_tests = [], [], [], []
    for panel in panels:
        mine = [p for p in points if p.panel == panel]
        strategies = [s for s in order["strategies"] if any(p.strategy == s for p in mine)]
        settings = [s for s in order["settings"] if any(p.setting == s for p in mine)]
        per_seed_area: dict[str, dict[int, float]] = {}
        for s in strategies:
            for st in settings:
                cell = sorted((p for p in mine if p.strategy == s and p.setting == st), key=lambda p: p.seed)
                if not cell:
                    continue
                per_example = all(p.correct_a is not None and p.correct_b is not None for p in cell)
                a = _ci([p.correct_a if per_example else p.em_a for p in cell], n_boot,
                        per_example and _shared([p.ids_a for p in cell]))
                b = _ci([p.correct_b if per_example else p.em_b for p in cell], n_boot,
                        per_example and _shared([p.ids_b for p in cell]))
                table.append({"d_a": panel[0], "d_b": panel[1], "loss_mode": panel[2], "strategy": s, "stage2_setting": st,
                              "n_seeds": len(cell), "seeds": [p.seed for p in cell],
                              "em_a": a[0], "em_a_lo": a[1], "em_a_hi": a[2], "em_b": b[0], "em_b_lo": b[1], "em_b_hi": b[2],
                              "bootstrap": "seeds+factoids" if per_example else "seeds",
                              "per_seed_em_a": [p.em_a for p in cell], "per_seed_em_b": [p.em_b for p in cell]})
            # A seed's area needs every sweep point of the panel (an incomplete seed is left out, and counted).
            seeds = sorted({p.seed for p in mine if p.strategy == s})
            full = {}
            for seed in seeds:
                pts = {p.setting: (p.em_b, p.em_a) for p in mine if p.strategy == s and p.seed == seed}
                if set(pts) == set(settings):
                    full[seed] = frontier_area(list(pts.values()))
            per_seed_area[s] = full
            if full:
                est, lo, hi = _ci(list(full.values()), n_boot)
                areas.append({"d_a": panel[0], "d_b": panel[1], "loss_mode": panel[2], "strategy": s, "area": est,
                              "area_lo": lo, "area_hi": hi, "n_seeds": len(full), "seeds_incomplete": len(seeds) - len(full),
                              "per_seed_area": [full[k] for k in sorted(full)]})
        point_tests += _point_comparisons(mine, panel, strategies, settings, n_boot)
        base = per_seed_area.get(BASELINE, {})
        for s in strategies:
            if s == BASELINE:
                continue
            common = sorted(set(base) & set(per_seed_area.get(s, {})))
            if not common:
                continue
            c = stats.paired_comparison([[per_seed_area[s][k]] for k in common], [[base[k]] for k in common], n_boot=n_boot)
            comparisons.append({"d_a": panel[0], "d_b": panel[1], "loss_mode": panel[2], "strategy": s, "vs": BASELINE,
                                "area_diff": float(c["diff"]), "diff_lo": float(c["lo"]), "diff_hi": float(c["hi"]),
                                "p": float(c["p"]), "n_seeds": int(c["n_seeds"])})
    for family in (comparisons, point_tests):
        for c, adj in zip(family, stats.holm([c["p"] for c in family])):
            c["p_holm"] = float(adj)
    return {"points": table, "areas": areas, "comparisons": comparisons, "point_tests": point_tests,
            "settings": order["settings"], "strategies": order["strategies"]}


def _point_comparisons(mine: list[Point], panel: tuple, strategies: list[str], settings: list[str], n_boot: int) -> list[dict]:
    """Per sweep point: EM(D_A) and EM(D_B) of each strategy minus `none`'s, paired over seeds and factoids."""
    out = []
    for st in settings:
        base = {p.seed: p for p in mine if p.strategy == BASELINE and p.setting == st and p.correct_a is not None}
        for s in strategies:
            if s == BASELINE:
                continue
            other = {p.seed: p for p in mine if p.strategy == s and p.setting == st and p.correct_a is not None}
            seeds = sorted(k for k in set(base) & set(other)
                           if base[k].ids_a == other[k].ids_a and base[k].ids_b == other[k].ids_b)
            if not seeds:
                continue
            row = {"d_a": panel[0], "d_b": panel[1], "loss_mode": panel[2], "strategy": s, "vs": BASELINE,
                   "stage2_setting": st, "n_seeds": len(seeds)}
            for m, ids in (("correct_a", "ids_a"), ("correct_b", "ids_b")):
                c = stats.paired_comparison([getattr(other[k], m) for k in seeds], [getattr(base[k], m) for k in seeds],
                                            n_boot=n_boot, shared_items=_shared([getattr(base[k], ids) for k in seeds]))
                tag = "em_a" if m == "correct_a" else "em_b"
                row.update({f"{tag}_diff": float(c["diff"]), f"{tag}_lo": float(c["lo"]), f"{tag}_hi": float(c["hi"]),
                            f"{tag}_p": float(c["p"])})
            row["p"] = row["em_a_p"]  # the family Holm corrects: EM(D_A) kept at the same stage-2 setting
            out.append(row)
    return out


def _ci_text(est: float, lo: float, hi: float) -> str:
    return f"{est:.3f} [{lo:.3f}, {hi:.3f}]"


AREA_DEFINITION = ("Area = the integral over EM(D_B) in [0, 1] of the strategy's frontier: its points sorted by "
                   "EM(D_B), linear between neighbours, flat at the first point's EM(D_A) below it and 0 beyond the "
                   "last point (no credit for D_B never learned); computed per seed, CI by bootstrap over seeds.")


def markdown(summary: dict, level: int = 1) -> str:
    """frontier.md: the point table, the areas and the paired comparisons, all with 95% CIs (`level`: heading depth)."""
    h = "#" * level
    pts = [{**r, "EM(D_A) [95% CI]": _ci_text(r["em_a"], r["em_a_lo"], r["em_a_hi"]),
            "EM(D_B) [95% CI]": _ci_text(r["em_b"], r["em_b_lo"], r["em_b_hi"])} for r in summary["points"]]
    parts = [f"{h} Retention-learning frontier", "",
             "EM(D_A) and EM(D_B) after stage 2 per strategy and stage-2 setting: mean over seeds and 95% CI "
             "(bootstrap over seeds, then factoids within a seed where the per-example files exist).", "",
             markdown_table(pts, ["d_a", "d_b", "strategy", "stage2_setting", "n_seeds", "EM(D_A) [95% CI]",
                                  "EM(D_B) [95% CI]", "bootstrap"]),
             "", f"{h}# Area under the frontier", "", AREA_DEFINITION, "",
             markdown_table([{**r, "area [95% CI]": _ci_text(r["area"], r["area_lo"], r["area_hi"])} for r in summary["areas"]],
                            ["d_a", "d_b", "strategy", "n_seeds", "area [95% CI]", "seeds_incomplete"])]
    if summary["point_tests"]:
        parts += ["", f"{h}# Per sweep point against `{BASELINE}` (paired over seeds and factoids)", "",
                  "EM(strategy) - EM(none) at the same stage-2 setting, 95% bootstrap CI; p: paired sign-flip test "
                  f"(stats.paired_comparison); p_holm: EM(D_A) p-values Holm-corrected over the "
                  f"{len(summary['point_tests'])} tests.", "",
                  markdown_table([{**c, "EM(D_A) diff [95% CI]": _ci_text(c["em_a_diff"], c["em_a_lo"], c["em_a_hi"]),
                                   "EM(D_B) diff [95% CI]": _ci_text(c["em_b_diff"], c["em_b_lo"], c["em_b_hi"])}
                                  for c in summary["point_tests"]],
                                 ["d_a", "d_b", "stage2_setting", "strategy", "n_seeds", "EM(D_A) diff [95% CI]", "em_a_p",
                                  "p_holm", "EM(D_B) diff [95% CI]", "em_b_p"])]
    if summary["comparisons"]:
        parts += ["", f"{h}# Area against `{BASELINE}` (paired over seeds, Holm-corrected over {len(summary['comparisons'])} "
                  "comparisons)", "",
                  markdown_table([{**c, "area - none [95% CI]": _ci_text(c["area_diff"], c["diff_lo"], c["diff_hi"])}
                                  for c in summary["comparisons"]],
                                 ["d_a", "d_b", "strategy", "n_seeds", "area - none [95% CI]", "p", "p_holm"])]
    return "\n".join(parts) + "\n"


def plot(summary: dict, path: Path) -> Path:
    """frontier.png: one panel per D_A x D_B (x loss mode), one curve per strategy in sweep order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["d_a"], r["d_b"], r["loss_mode"]) for r in summary["points"]))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.8 * max(1, len(panels)), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for s in summary["strategies"]:
            rows = [r for r in summary["points"] if (r["d_a"], r["d_b"], r["loss_mode"]) == panel and r["strategy"] == s]
            if not rows:
                continue
            x, y = np.array([r["em_b"] for r in rows]), np.array([r["em_a"] for r in rows])
            xerr = np.array([[r["em_b"] - r["em_b_lo"] for r in rows], [r["em_b_hi"] - r["em_b"] for r in rows]])
            yerr = np.array([[r["em_a"] - r["em_a_lo"] for r in rows], [r["em_a_hi"] - r["em_a"] for r in rows]])
            line = ax.errorbar(x, y, xerr=np.clip(xerr, 0, None), yerr=np.clip(yerr, 0, None), marker="o", ms=4,
                               capsize=2, lw=1.2, label=s)
            for r in rows:
                ax.annotate(r["stage2_setting"], (r["em_b"], r["em_a"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points", color=line[0].get_color())
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("EM(D_B) after stage 2 (learned)")
        ax.set_ylabel("EM(D_A) after stage 2 (kept)")
        ax.set_title(f"D_A={panel[0]}, D_B={panel[1]}" + (f" ({panel[2]})" if len({p[2] for p in panels}) > 1 else ""),
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_frontier(grid_dirs: list[str | Path], out: str | Path, n_boot: int = 2000) -> dict:
    """Read the grids, write frontier.json / frontier.md / frontier.png to `out`; returns the summary."""
    points, order = read_points(grid_dirs)
    if not points:
        raise DataError(f"no finished cells (cells/*/done.json) under {', '.join(map(str, grid_dirs))}")
    summary = summarize(points, order, n_boot)
    summary["grids"] = [str(g) for g in grid_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "frontier.md").write_text(markdown(summary))
    plot(summary, out / "frontier.png")
    return summary


def add_to_report(out: Path, log=print) -> None:
    """A grid with a stage2_sweep: its frontier beside report.md, and a section appended to it."""
    summary = write_frontier([out], out)
    section = markdown(summary, level=2)
    report_md = out / "report.md"
    report_md.write_text(report_md.read_text() + "\n" + section + "\n![frontier](frontier.png)\n")
    log(f"frontier: {out / 'frontier.md'}, frontier.png")
