"""The in-run online variant (published `run_llm_partition.py`): one fine-tune that trains the first
``replay.switch_fraction`` of its steps with uniform replay, then

1. probes k = ``predict.revealed`` pool examples with the current weights and with the initial
   ones (teacher-forced mean NLL, `forgetting/nll.score_nll`; the initial NLLs are scored in
   ``setup``, before any resume, while the engine still holds the base weights),
2. completes the task's row from those k entries against the training tasks' matrix (the
   existing completion API: `replay.fit_replay_predictor` + the predictor's ``fold_in``),
3. draws the prediction-weighted replay (softmax(z_hat / T), without replacement) and switches
   the stage stream's replay slots to it from the current loader position on (`StageStream.set_switch`).
   With ``mask_replayed`` (``replay.online_mask``, the paper config's ``enable_mask``) the examples of
   phase A's replay draw get probability 0, so phase B replays other examples (`phase_b_probs`). The
   reference's code records phase B's draw only after building it, so in its one-task runs the mask it
   applies is empty; ``replay.online_mask=false`` is that behaviour.

Resumable across the switch: the switch state (step, loader position, probed columns and their
NLLs, the completed pool row, the weighted draw) is written atomically to
``RUN_DIR/online_switch.json`` beside the checkpoints before training continues. A run resumed
after the switch loads it in ``setup`` and sees the same weighted replay from the same position; a
run killed before it has no state file and redoes the switch at the same step.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from remix_ds.data.loader import BackgroundLoader
from remix_ds.data.mixing import StageStream
from remix_ds.data.replay_rows import draw_without_replacement, softmax
from remix_ds.engine import dist
from remix_ds.forgetting.nll import score_nll
from remix_ds.cachedir import write_text_atomic

STATE_FILE = "online_switch.json"
_ONLINE_TAG = 0x0711


def phase_b_probs(z_rows: np.ndarray, temperature: float, replayed: np.ndarray | None = None) -> np.ndarray:
    """Phase B's replay probabilities over the pool rows: softmax(z_hat / T), with the rows in
    ``replayed`` (phase A's draw) masked out (probability 0; the rest renormalized)."""
    z = np.asarray(z_rows, dtype=np.float64)
    if replayed is None or len(replayed) == 0:
        return softmax(z, temperature)
    keep = np.ones(len(z), dtype=bool)
    keep[np.asarray(replayed, dtype=np.int64)] = False
    if not keep.any():
        raise ValueError("online replay mask: phase A replayed every pool row; nothing left for phase B")
    probs = np.zeros(len(z))
    probs[keep] = softmax(z[keep], temperature)
    return probs


def switch_step(total_steps: int, fraction: float) -> int:
    """The optimizer step after which the switch happens (>= 1, < total_steps)."""
    return min(max(1, int(round(fraction * total_steps))), max(1, total_steps - 1))


class OnlineSwitch:
    """Eval hook of the online arm (module docstring); the run's data config asks for published replay.

    ``complete(cols, values) -> (P,)``: the predicted row over ``pool_ids`` from the probed
    columns ``cols`` (``items`` are their upstream examples) and their forgetting ``values``.
    """

    def __init__(self, *, step: int, items, cols: np.ndarray, pool_ids: list[str], complete, temperature: float,
                 eval_cfg, pad_id: int, rank: int, world: int, log=print, mask_replayed: bool = True):
        self.step, self.cols, self.complete, self.temperature = step, np.asarray(cols), complete, temperature
        self.mask_replayed = mask_replayed
        self.pool_ids = list(pool_ids)
        self.items = [dataclasses.replace(it, index=i) for i, it in enumerate(items)]
        self.eval_cfg, self.pad_id, self.rank, self.world, self.log = eval_cfg, pad_id, rank, world, log
        self.state: dict | None = None
        self.nll_init: np.ndarray | None = None
        self.trainer = None

    def _path(self) -> Path:
        return Path(self.trainer.cfg.train.output_dir) / STATE_FILE

    def _stream(self) -> StageStream:
        return self.trainer.loader.stream

    def setup(self, trainer) -> None:
        self.trainer = trainer
        path = self._path()
        if path.is_file():  # a resumed run: the switch already happened
            self.state = json.loads(path.read_text())
            if self.state["step"] != self.step or self.state["cols"] != self.cols.tolist():
                raise ValueError(f"{path}: switch state of another setup (step {self.state['step']}, not {self.step})")
            self._stream().set_switch(*self.state["position"], [np.array(self.state["draw"])])
            self.log(f"[forgetting] online: switch state from {path} (step {self.step})")
            return
        self.nll_init = score_nll(trainer.engine.module, self.items, self.eval_cfg, self.pad_id, self.rank, self.world)

    def __call__(self, model, step: int, out_dir=None) -> dict:
        if step != self.step or self.state is not None:
            return {}
        nll_now = score_nll(model, self.items, self.eval_cfg, self.pad_id, self.rank, self.world)
        values = nll_now - self.nll_init
        z_hat = np.asarray(self.complete(self.cols, values), dtype=np.float64)
        stream = self._stream()
        z_of = dict(zip(self.pool_ids, z_hat.tolist()))
        z_rows = np.array([z_of[ex.id] for ex in stream.replay_pools[0]])  # the stream's pool order (rows that fit)
        replayed = stream.replay_draw(0, 0) if self.mask_replayed else None  # phase A's draw (the run's fixed one)
        probs = phase_b_probs(z_rows, self.temperature, replayed)
        rng = np.random.default_rng([stream.seed, _ONLINE_TAG])
        draw = draw_without_replacement(len(z_rows), stream.replay_counts[0], probs, rng)
        loader = self.trainer.loader
        if isinstance(loader, BackgroundLoader):
            loader.close()  # drop the steps prefetched with the uniform replay
        pos = loader.state_dict()
        position = (pos["epoch"], pos["rows_consumed"])
        stream.set_switch(*position, [draw])
        self.state = {"step": step, "position": list(position), "cols": self.cols.tolist(),
                      "nll_init": self.nll_init.tolist(), "nll_probe": nll_now.tolist(), "probe_z": values.tolist(),
                      "z_hat": z_hat.tolist(), "draw": draw.tolist(),
                      "draw_ids": [stream.replay_pools[0][i].id for i in draw.tolist()]}
        if dist.is_main():
            write_text_atomic(self._path(), json.dumps(self.state) + "\n")
        dist.barrier()
        self.log(f"[forgetting] online: switched to predicted replay at step {step} (probe mean z {values.mean():+.4f})")
        return {"online/probe_mean_z": float(values.mean()), "online/switch_step": float(step)}
