"""Per-cell analyses on exported models: logit lens and preservation, cached beside each run.

Each model is loaded once (base, every shared stage-1 export, every stage-2 export) on
`analysis.device`; results are cached as JSON in `RUN_DIR/analysis/`, so reruns and cells that
share a stage 1 do not redo them.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

from remix_ds import models
from remix_ds.data.records import generic_examples, read_rows
from remix_ds.experiments import lens as lens_lib
from remix_ds.eval.config import EvalConfig
from remix_ds.eval.data import load_eval_set
from remix_ds.eval.runner import evaluate
from remix_ds.experiments import preserve
from remix_ds.experiments.preserve_bench import compare_rows
from remix_ds.experiments.datasets import preservation_texts
from remix_ds.experiments.layout import Cell, GridLayout


def load_model(path: str | Path, device: str = "auto"):
    """An exported HF folder on one device, outside any ZeRO-3 context (fp32 on CPU, bf16 on GPU)."""
    return models.load_for_inference(path, device=device)


def _examples(path: Path, ids: set[str] | None = None, limit: int = 0):
    exs = generic_examples(read_rows(path), source=path.stem, where=str(path))
    if ids is not None:
        exs = [e for e in exs if e.id in ids]
    return exs[:limit] if limit else exs


class _Analyser:
    def __init__(self, layout: GridLayout):
        self.layout, self.cfg = layout, layout.analysis
        self.fmt = layout.data.prompt_format
        self._texts = None

    def texts(self):
        if self._texts is None:
            self._texts = preservation_texts(self.layout.tokenizer, self.layout.data, self.cfg.preservation_set,
                                             self.cfg.preservation_n, self.cfg.prompt_words + 1)
        return self._texts

    def probe(self, d_a: str) -> preserve.Probe:
        return preserve.Probe(self.texts(), self.cfg.prompt_words, self.cfg.preservation_tokens, self.cfg.max_new_tokens,
                              _examples(self.layout.paths[d_a], limit=self.cfg.preservation_n),
                              instruction=self.layout.data.mix.instruction)

    def bench_sets(self):
        """The `analysis.preserve_bench` question sets (loaded once)."""
        if not hasattr(self, "_bench"):
            ecfg = self._bench_cfg()
            self._bench = [load_eval_set(spec, ecfg, self.layout.data) for spec in self.cfg.preserve_bench]
        return self._bench

    def _bench_cfg(self) -> EvalConfig:
        return EvalConfig(mode="generate", max_new_tokens=self.cfg.preserve_max_new_tokens,
                          key_span_delimiters=tuple(self.layout.data.key_span_delimiters))

    def model_results(self, model_dir: Path, cache_dir: Path, d_a: str, memorized: set[str] | None) -> dict:
        """{'preserve': measurement, 'lens': summary, 'bench': rows per set} for one model, cached under cache_dir."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        files = {"preserve": cache_dir / f"preserve-{d_a}.json", "lens": cache_dir / f"lens-{d_a}.json",
                 "bench": cache_dir / "preserve-bench.json"}
        want = {"preserve": self.cfg.preservation, "lens": self.cfg.logit_lens and memorized is not None,
                "bench": bool(self.cfg.preserve_bench)}
        out = {k: json.loads(f.read_text()) for k, f in files.items() if want[k] and f.is_file()}
        if all(k in out for k, w in want.items() if w):
            return out
        model = load_model(model_dir, self.cfg.device)
        tokenizer = self.layout.tokenizer
        try:
            if want["preserve"] and "preserve" not in out:
                out["preserve"] = preserve.measure(model, tokenizer, self.probe(d_a), self.fmt)
                files["preserve"].write_text(json.dumps(out["preserve"]))
            if want["lens"] and "lens" not in out:
                exs = _examples(self.layout.paths[d_a], memorized, self.cfg.lens_max_examples)
                rows = lens_lib.logit_lens(model, tokenizer, exs, self.fmt) if exs else []
                out["lens"] = {"summary": lens_lib.summarize(rows), "rows": rows}
                files["lens"].write_text(json.dumps(out["lens"]))
            if want["bench"] and "bench" not in out:
                out["bench"] = {s.name: {"rows": evaluate(model, tokenizer, s.examples, self._bench_cfg(),
                                                          prompt_format=self.fmt).rows, "fingerprint": s.fingerprint}
                                for s in self.bench_sets()}
                files["bench"].write_text(json.dumps(out["bench"]))
        finally:
            del model
            gc.collect()
        return out


def analyse_cell(layout: GridLayout, cell: Cell, s1: Path, s2: Path, rows1: list[dict], rows2: list[dict]) -> dict:
    """Lens and preservation numbers of one cell (flat fields for the results table); details in
    the cell folder's analysis.json. `s1`, `s2`: the cell's stage-1 and stage-2 run folders."""
    c = layout.analysis
    if not (c.logit_lens or c.preservation or c.preserve_bench):
        return {}
    an = _Analyser(layout)
    a = cell.d_a.name
    s1, s2 = Path(s1), Path(s2)
    base_dir = layout.base_dir()
    base = (an.model_results(base_dir, layout.out / "analysis" / "base", a, None)
            if c.preservation or c.preserve_bench else {})
    r1 = an.model_results(s1 / "final", s1 / "analysis", a, {r["id"] for r in rows1 if r["correct"]})
    r2 = an.model_results(s2 / "final", s2 / "analysis", a, {r["id"] for r in rows2 if r["correct"]})
    fields, detail = {}, {}
    for tag, res in (("s1", r1), ("s2", r2)):
        if "lens" in res:
            s = res["lens"]["summary"]
            detail[f"lens_{tag}"] = s
            fields.update({f"lens_{tag}_n": s["n_recalled"], f"lens_{tag}_recall_layer_mean": s["recall_layer_mean"],
                           f"lens_{tag}_recall_layer_std": s["recall_layer_std"]})
    if c.preservation:
        for tag, before, after in (("s1", base, r1), ("s2", r1, r2)):
            d = preserve.compare(before["preserve"], after["preserve"])
            detail[f"preserve_{tag}"] = d
            fields.update({f"pres_{tag}_nll_change": d["nll_change"], f"pres_{tag}_changed_frac": d["changed_frac"],
                           f"pres_{tag}_eos_rate": d["eos_rate_after"], f"pres_{tag}_task_eos_rate": d["task_eos_rate_after"]})
        fields["pres_base_nll"] = detail["preserve_s1"]["nll_before"]
    if c.preserve_bench:  # answers on question sets, each stage's model against the base model
        for tag, res in (("s1", r1), ("s2", r2)):
            for name, b in base["bench"].items():
                d = compare_rows(b["rows"], res["bench"][name]["rows"], b["fingerprint"], res["bench"][name]["fingerprint"])
                detail[f"preserve_bench_{tag}_{name}"] = d
                fields.update({f"pq_{tag}_{name}_identical": d["identical_frac"], f"pq_{tag}_{name}_em_delta": d["em_delta"],
                               f"pq_{tag}_{name}_mcnemar_p": d["mcnemar_p"], f"pq_{tag}_{name}_nll_drift": d["nll_drift"]})
    (layout.cell_dir(cell) / "analysis.json").write_text(json.dumps(detail, indent=2) + "\n")
    return fields
