"""The grid's stage configs, built purely from the experiment config, the output folder and the
materialized dataset paths: stage 0 (generic pretraining), each cell's stage 1 and stage 2."""

from __future__ import annotations

from pathlib import Path

from remix_ds import configtools
from remix_ds.baselines.strategies import strategy_patch
from remix_ds.config import RunConfig
from remix_ds.data.mixing import mix_count
from remix_ds.experiments import datasets
from remix_ds.experiments.config import ExperimentConfig
from remix_ds.experiments.layout import Cell, cell_dir

# Every stage trains its own dataset file (no subsampling, no held-out split) for whole epochs
# and resumes from its newest checkpoint after an interruption.
STAGE_COMMON = {
    "train.max_steps": 0, "train.resume": "auto",
    "data.data_files": None, "data.num_examples": 0, "data.heldout_size": 0,
}


def seed_patch(cell: Cell) -> dict:
    """A seeded cell's stages: train.seed (data order, any training randomness) and data.mix.seed (mixing draws)."""
    return {} if cell.seed is None else {"train.seed": cell.seed, "data.mix.seed": cell.seed}


class StageConfigs:
    """Stage configs of a grid (`ExperimentConfig`) writing under `out`, training on `paths` (dataset
    name -> file), stage 1 starting from `base_model` (stage 0's export; None: run.model.init_from)."""

    def __init__(self, cfg: ExperimentConfig, out: Path, paths: dict[str, Path], base_model: str | None = None):
        self.cfg, self.out, self.paths, self.base_model = cfg, Path(out), paths, base_model

    def wandb_group(self) -> str:
        """metrics.wandb.group, default: the name of the grid's output folder."""
        w = self.cfg.run.metrics.wandb
        return (w.group if w and w.group else None) or self.out.resolve().name

    def stage_config(self, patch: dict, overrides: list[str]) -> RunConfig:
        d = configtools.to_dict(self.cfg.run)
        if d["metrics"]["wandb"] is not None and not d["metrics"]["wandb"]["group"]:
            d["metrics"]["wandb"]["group"] = self.wandb_group()  # the grid's stages and cells: one W&B group
        for dotted, value in patch.items():
            node = d
            *head, last = dotted.split(".")
            for part in head:
                node = node[part]
            node[last] = value
        return configtools.from_dict(RunConfig, configtools.apply_overrides(d, list(overrides)),
                                     source=f"{self.cfg.output_dir} (derived stage config)")

    def _train_path(self, name: str, loss_mode: str | None) -> str:
        p = self.paths[name]
        if loss_mode == "key_spans":
            return str(p.with_name(f"{name}.spans.jsonl"))
        clean = datasets.clean_path(p)  # marked data: the other modes train on the text without markers
        return str(clean) if clean.is_file() else str(p)

    def _eval_every(self, n: int, ratios: tuple[float, ...], setting: int) -> int:
        """`setting`, or about one epoch of optimizer steps (dataset rows plus mixed/replayed rows)."""
        if setting:
            return setting
        rows = n + sum(mix_count(r, n) for r in ratios)
        return max(1, round(rows / self.cfg.run.train.global_batch_size))

    def _n(self, name: str) -> int:
        with self.paths[name].open() as f:
            return sum(1 for line in f if line.strip())

    def stage1(self, cell: Cell) -> RunConfig:
        s, a = cell.strategy, cell.d_a.name
        n = self._n(a)
        patch = {
            **STAGE_COMMON,
            "model.init_from": self.base_model or self.cfg.run.model.init_from,
            "train.output_dir": str(self.out / "stage1" / cell.stage1_key),
            "train.epochs": self.cfg.stage1.max_epochs,
            "train.eval_every": self._eval_every(n, (s.random[0], s.generic[0]), self.cfg.stage1.eval_every),
            "train.early_stop_metric": f"eval/{a}/em",
            "train.early_stop_value": self.cfg.stage1.em_threshold,
            "data.dataset": self._train_path(a, cell.loss_mode),
            "data.mix.random_ratio": s.random[0],
            "data.mix.generic_ratio": s.generic[0],
            "data.replay": [],
            "eval.datasets": [str(self.paths[a])],
            "eval.write_rows": True,
            **s.mix_patch(),
        }
        if cell.loss_mode:
            patch["data.loss_mode"] = cell.loss_mode
        patch.update(seed_patch(cell))
        return self.stage_config(patch, self.cfg.stage1.overrides)

    def stage2(self, cell: Cell) -> RunConfig:
        s, a, b = cell.strategy, cell.d_a.name, cell.d_b.name
        n = self._n(b)
        setting = self.cfg.stage2_setting(cell.stage2)
        epochs = setting.epochs if setting and setting.epochs is not None else self.cfg.stage2.epochs
        replay = [{"dataset": self._train_path(a, cell.loss_mode), "ratio": s.replay}] if s.replay else []
        patch = {
            **STAGE_COMMON,
            "model.init_from": str(self.out / "stage1" / cell.stage1_key / "final"),
            "train.output_dir": str(cell_dir(self.out, cell) / "stage2"),
            "train.epochs": epochs,
            "train.eval_every": self._eval_every(n, (s.random[1], s.generic[1], s.replay), self.cfg.stage2.eval_every),
            "train.early_stop_metric": None,
            "train.stop_loss_below": self.cfg.stage2.stop_loss if self.cfg.stage2.stop == "loss" else 0.0,
            "train.stop_loss_steps": self.cfg.stage2.stop_loss_steps,
            "data.dataset": self._train_path(b, cell.loss_mode),
            "data.mix.random_ratio": s.random[1],
            "data.mix.generic_ratio": s.generic[1],
            "data.replay": replay,
            "eval.datasets": [str(self.paths[a])] + ([str(self.paths[b])] if self.cfg.stage2.eval_b == "every_eval" else []),
            "eval.write_rows": True,
            **s.mix_patch(),
        }
        if s.regularize:
            # Cells sharing a stage-1 model share one Fisher/anchor estimate (the first computes it).
            patch.update(strategy_patch(s.regularize, stage1_dataset=str(self.paths[a]),
                                        ewc_state_dir=str(self.out / "stage1" / cell.stage1_key / "ewc-fisher")))
        if cell.loss_mode:
            patch["data.loss_mode"] = cell.loss_mode
        patch.update(seed_patch(cell))
        return self.stage_config(patch, list(self.cfg.stage2.overrides) + (list(setting.overrides) if setting else []))
