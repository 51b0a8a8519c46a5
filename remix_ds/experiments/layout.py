"""A grid's cells and where their files live: what the analyses and the report read.

`Grid` (grid.py) plans the cells, materializes the datasets and finds stage 0's export, then builds
one frozen :class:`GridLayout`, handed to ``analysis.analyse_cell`` (by the job runner, jobs.py) and
``report.write_all``, so neither needs the grid or the runner itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from remix_ds import models
from remix_ds.config import ModelConfig
from remix_ds.data.config import DataConfig
from remix_ds.experiments.config import AnalysisConfig, DatasetSpec, Strategy


@dataclass
class Cell:
    d_a: DatasetSpec
    d_b: DatasetSpec
    strategy: Strategy
    loss_mode: str | None
    seed: int | None = None
    """The grid's seed axis (None: no axis; keys without a seed suffix)."""
    stage2: str | None = None
    """Name of the cell's stage2_sweep point (None: no sweep); stage 1 does not depend on it."""

    @property
    def key(self) -> str:
        lm = f"__{self.loss_mode}" if self.loss_mode else ""
        st = f"__{self.stage2}" if self.stage2 is not None else ""
        return f"{self.d_a.name}__{self.d_b.name}__{self.strategy.slug}{lm}{self._seed_suffix}{st}"

    @property
    def stage1_key(self) -> str:
        lm = f"__{self.loss_mode}" if self.loss_mode else ""
        return f"{self.d_a.name}__{self.strategy.stage1_tag()}{lm}{self._seed_suffix}"

    @property
    def _seed_suffix(self) -> str:
        return "" if self.seed is None else f"__s{self.seed}"


def cell_dir(out: Path, cell: Cell) -> Path:
    """`OUT/cells/<D_A>__<D_B>__<strategy>[__<loss mode>][__s<seed>][__<stage-2 setting>]/`: stage2/, done.json or error.json, analysis.json."""
    return out / "cells" / cell.key


@dataclass(frozen=True)
class GridLayout:
    """What a grid's analyses and report read, fixed once the datasets and stage 0 are ready."""

    out: Path
    """The experiment's output folder (`output_dir`)."""
    paths: Mapping[str, Path]
    """Dataset name -> its materialized `OUT/data/<name>.jsonl`."""
    cells: tuple[Cell, ...]
    """Every planned cell, in the grid's order."""
    tokenizer: Any
    """The run's tokenizer (a Hugging Face tokenizer with a pad token)."""
    data: DataConfig
    """The run's data config: prompt format, instruction, generic corpus, default loss mode."""
    model: ModelConfig
    """The run's model config (the base model when there is no stage 0)."""
    analysis: AnalysisConfig
    """Which analyses run, on which device."""
    base_model: str | None = None
    """The stage-0 export, when stage 0 ran."""

    def cell_dir(self, cell: Cell) -> Path:
        return cell_dir(self.out, cell)

    def stage1_dir(self, cell: Cell) -> Path:
        """The cell's (shared) stage-1 run folder, `OUT/stage1/<stage-1 key>`."""
        return self.out / "stage1" / cell.stage1_key

    def base_dir(self) -> Path:
        """The model stage 1 starts from: the stage-0 export, else `model.init_from`, else the model itself."""
        if self.base_model:
            return Path(self.base_model)
        return Path(self.model.init_from or models.resolve_path(self.model.name_or_path, self.model.tiny))
