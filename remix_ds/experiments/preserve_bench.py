"""Preservation on question sets: did fine-tuning change a model's answers outside its data?

`compare_rows(base_rows, tuned_rows)` takes the evaluator's rows of the *same* examples scored by
two models in `generate` mode (greedy answers, the set's matcher, and the gold answer's per-token
NLL from the fused pass) and reports:

- `identical_frac`: fraction of examples whose greedy answer text is identical;
- `em_base`, `em_tuned` and a paired test of the difference: McNemar's exact test (two-sided
  binomial test on the discordant pairs, `scipy.stats.binomtest`; p = 1 with no discordant pair);
- `nll_drift`: mean over examples of tuned minus base per-token NLL of the gold answer (positive:
  the tuned model finds the reference answers less likely), and its mean absolute value;
- `changed`: every example whose greedy answer changed, both answers side by side.

`markdown(report)` renders the report (one section per set, changed examples listed).
The two row lists must come from the same examples in the same order (checked by id, and by the
sets' `data_fingerprint` where given).
"""

from __future__ import annotations

from typing import Sequence

from remix_ds.data.fingerprint import same_set, short
from remix_ds.data.records import DataError


def mcnemar_p(base_correct: Sequence[bool], tuned_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value of paired binary outcomes (1.0 with no discordant pair)."""
    from scipy.stats import binomtest

    b = sum(1 for x, y in zip(base_correct, tuned_correct) if x and not y)
    c = sum(1 for x, y in zip(base_correct, tuned_correct) if y and not x)
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def compare_rows(base_rows: Sequence[dict], tuned_rows: Sequence[dict], fingerprint: dict | None = None,
                 tuned_fingerprint: dict | None = None) -> dict:
    """The preservation report of one set (see the module docstring)."""
    if [r["id"] for r in base_rows] != [r["id"] for r in tuned_rows]:
        raise DataError("preserve: the two models were scored on different examples (ids differ)")
    if fingerprint and tuned_fingerprint and not same_set(fingerprint, tuned_fingerprint):
        raise DataError(f"preserve: different sets ({short(fingerprint)} vs {short(tuned_fingerprint)})")
    n = len(base_rows)
    if n == 0:
        raise DataError("preserve: the set is empty")
    same = [a["prediction"] == b["prediction"] for a, b in zip(base_rows, tuned_rows)]
    bc, tc = [bool(r["correct"]) for r in base_rows], [bool(r["correct"]) for r in tuned_rows]
    drift = [b["answer_nll"] - a["answer_nll"] for a, b in zip(base_rows, tuned_rows)]
    changed = [{"id": a["id"], "prompt": a["prompt"], "gold": a["gold"], "base": a["prediction"], "tuned": b["prediction"],
                "base_correct": a["correct"], "tuned_correct": b["correct"], "nll_drift": d}
               for a, b, s, d in zip(base_rows, tuned_rows, same, drift) if not s]
    return {
        "n": n,
        "identical_frac": sum(same) / n,
        "n_changed": len(changed),
        "em_base": sum(bc) / n,
        "em_tuned": sum(tc) / n,
        "em_delta": (sum(tc) - sum(bc)) / n,
        "lost": sum(1 for x, y in zip(bc, tc) if x and not y),
        "gained": sum(1 for x, y in zip(bc, tc) if y and not x),
        "mcnemar_p": mcnemar_p(bc, tc),
        "nll_base": sum(r["answer_nll"] for r in base_rows) / n,
        "nll_tuned": sum(r["answer_nll"] for r in tuned_rows) / n,
        "nll_drift": sum(drift) / n,
        "nll_abs_drift": sum(abs(d) for d in drift) / n,
        **({"data_fingerprint": fingerprint} if fingerprint else {}),
        "changed": changed,
    }


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict, base: str, tuned: str, max_changed: int = 200) -> str:
    """The report as markdown: a summary table over sets, then each set's changed examples side by side."""
    lines = [f"# Preservation: `{tuned}` against `{base}`", "",
             "| set | n | identical | EM base | EM tuned | lost | gained | McNemar p | NLL drift | data |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["sets"].items():
        fp = short(r["data_fingerprint"]) if r.get("data_fingerprint") else ""
        lines.append(f"| {name} | {r['n']} | {r['identical_frac']:.1%} | {r['em_base']:.3f} | {r['em_tuned']:.3f} | "
                     f"{r['lost']} | {r['gained']} | {r['mcnemar_p']:.3g} | {r['nll_drift']:+.4f} | {fp} |")
    for name, r in report["sets"].items():
        lines += ["", f"## {name}: {r['n_changed']} changed answers", ""]
        if not r["changed"]:
            lines.append("No greedy answer changed.")
            continue
        lines += ["| id | prompt | gold | base | tuned | NLL drift |", "|---|---|---|---|---|---|"]
        for c in r["changed"][:max_changed]:
            mark = {True: " ✓", False: " ✗"}
            lines.append(f"| {_cell(c['id'])} | {_cell(c['prompt'])} | {_cell(c['gold'])} | "
                         f"{_cell(c['base'])}{mark[bool(c['base_correct'])]} | {_cell(c['tuned'])}"
                         f"{mark[bool(c['tuned_correct'])]} | {c['nll_drift']:+.3f} |")
        if r["n_changed"] > max_changed:
            lines.append(f"\n({r['n_changed'] - max_changed} more in the JSON report)")
    return "\n".join(lines) + "\n"
